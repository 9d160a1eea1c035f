"""The retrieval report: summary tables of one evaluated ranking and their JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Interval = tuple[float, float]


@dataclass(frozen=True)
class MetricTable:
    """Means and 95% CIs of the per-query metrics of one ranking (a model's, or chance's).

    metrics / ci95: keyed 'mAP@5', 'Acc@5', ...; CIs are NaN when no bootstrap was run.
    per_class: class -> {metric key: mean, 'n_queries': n}; metrics are NaN for a class that
        has database items but no queries.
    per_class_ci95: class -> {metric key: (lo, hi)}, resampling that class's patients.
    precision_curve: mean P@j for j = 1..max(K).
    per_group: column -> value -> {metric key: mean, 'n_queries': n}, for the extra query
        columns (site, cohort ...) the caller passed.
    """

    metrics: dict[str, float]
    ci95: dict[str, Interval]
    per_class: dict[str, dict[str, float]]
    per_class_ci95: dict[str, dict[str, Interval]]
    precision_curve: tuple[float, ...]
    per_group: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN -> null, intervals -> [lo, hi])."""
        table = {
            "metrics": clean(self.metrics),
            "ci95": clean(self.ci95),
            "per_class": clean(self.per_class),
            "per_class_ci95": clean(self.per_class_ci95),
            "precision_at": clean(list(self.precision_curve)),
        }
        if self.per_group:
            table["per_group"] = clean(self.per_group)
        return table


@dataclass(frozen=True)
class RetrievalReport:
    """Retrieval of held-out queries against a database, with the chance baseline beside it.

    name: what was evaluated (e.g. 'THREADS', 'mean-pooling'), used in plots.
    ks: the cutoffs K. model / chance: MetricTable of the ranking and of a random ranking.
    class_database_counts: class -> database items with that label.
    n_overlap: query items whose id is also a database id (None when ids were not given).
    warnings: one-line notes a reader must see (classes that cannot be retrieved, overlap,
        short rankings). per_query: column -> (q,) array, one row per query, for tables.
    definitions: metric name -> one-line definition, copied into the JSON.
    class_patient_counts: class -> distinct patients carrying it on either side.
    prevalence: the population rare classes are measured in (`class_highlights.Prevalence`);
        None = the patients on either side.
    site_mixing: SiteMixing of the ranking, None when no sites were given.
    """

    name: str
    ks: tuple[int, ...]
    model: MetricTable
    chance: MetricTable
    n_queries: int
    n_database: int
    class_database_counts: dict[str, int]
    n_overlap: int | None
    n_bootstrap: int
    seed: int
    warnings: tuple[str, ...]
    definitions: dict[str, str]
    per_query: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    class_patient_counts: dict[str, int] = field(default_factory=dict)
    class_attainable: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> {"mAP@K": perfect-ranking figure}
    prevalence: Any = None
    site_mixing: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The `eval --json` object of SPEC §5 plus chance, per-group tables, warnings, the
        worst and rare classes per mAP@K (`class_highlights`) and `site_mixing` (null when no
        site column was given)."""
        from threads_search.evaluation.class_highlights import class_highlights

        model = self.model.to_dict()
        per_class = {
            label: {**figures, "n_database": self.class_database_counts.get(label, 0),
                    "n_patients": self.class_patient_counts.get(label, 0),
                    "attainable": self.class_attainable.get(str(label), {})}
            for label, figures in model["per_class"].items()
        }
        result: dict[str, Any] = {
            "metrics": model["metrics"],
            "ci95": model["ci95"],
            "per_class": per_class,
            "n_queries": self.n_queries,
            "n_database": self.n_database,
            "definitions": dict(self.definitions),
            "name": self.name,
            "ks": list(self.ks),
            "per_class_ci95": model["per_class_ci95"],
            "precision_at": model["precision_at"],
            "chance": self.chance.to_dict(),
            "n_overlap": self.n_overlap,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "warnings": list(self.warnings),
            "class_highlights": {
                f"mAP@{k}": class_highlights(per_class, f"mAP@{k}", self.prevalence) for k in self.ks
            },
            "prevalence": self.prevalence.to_dict() if self.prevalence is not None else None,
            "site_mixing": None if self.site_mixing is None else self.site_mixing.to_dict(),
        }
        if "per_group" in model:
            result["per_group"] = model["per_group"]
        return result

    def to_json(self, indent: int | None = 2) -> str:
        """`to_dict()` as a JSON string (strict JSON: no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | Path) -> Path:
        """Write `to_json()` to `path` atomically (temp file + rename); returns the path."""
        from threads_search.atomic import write_bytes_atomic

        return write_bytes_atomic(path, (self.to_json() + "\n").encode("utf-8"))


def clean(value: Any) -> Any:
    """Recursively turn numpy scalars into Python numbers, tuples into lists, NaN into None."""
    if isinstance(value, dict):
        return {str(key): clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(item) for item in value]
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    return value
