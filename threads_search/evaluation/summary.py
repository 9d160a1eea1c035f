"""Turn per-query metric values into a MetricTable: means, bootstrap CIs, per class, per group."""

from __future__ import annotations

import numpy as np

from threads_search.evaluation.bootstrap import patient_bootstrap_ci
from threads_search.evaluation.report import Interval, MetricTable


def summarise(
    per_query: dict[str, np.ndarray],
    precision: np.ndarray,
    query_classes: np.ndarray,
    query_patients: np.ndarray,
    classes: list[str],
    n_bootstrap: int,
    seed: int,
    groups: dict[str, np.ndarray] | None = None,
) -> MetricTable:
    """Summarise one ranking.

    per_query: metric key -> (q,) float64 values. precision: (q, k_max) P@j values.
    query_classes / query_patients: (q,) str. classes: every class to report, in order (a
    class without queries gets NaN metrics and n_queries 0). groups: column -> (q,) values.
    """
    keys = list(per_query)
    values = np.column_stack([per_query[key] for key in keys])
    overall_ci = patient_bootstrap_ci(values, query_patients, n_bootstrap, seed)
    per_class: dict[str, dict[str, float]] = {}
    per_class_ci: dict[str, dict[str, Interval]] = {}
    for label in classes:
        members = query_classes == label
        per_class[label] = _means(keys, values[members])
        class_ci = patient_bootstrap_ci(values[members], query_patients[members], n_bootstrap, seed)
        per_class_ci[label] = _intervals(keys, class_ci)
    per_group = {
        column: {
            str(value): _means(keys, values[column_values == value])
            for value in np.unique(column_values)
        }
        for column, column_values in (groups or {}).items()
    }
    return MetricTable(
        metrics={key: float(mean) for key, mean in zip(keys, values.mean(axis=0))},
        ci95=_intervals(keys, overall_ci),
        per_class=per_class,
        per_class_ci95=per_class_ci,
        precision_curve=tuple(float(p) for p in precision.mean(axis=0)),
        per_group=per_group,
    )


def _means(keys: list[str], rows: np.ndarray) -> dict[str, float]:
    """Column means of (n, m) `rows` keyed by metric, plus 'n_queries'; NaN when n = 0."""
    means = rows.mean(axis=0) if len(rows) else np.full(len(keys), np.nan)
    figures: dict[str, float] = {key: float(mean) for key, mean in zip(keys, means)}
    figures["n_queries"] = len(rows)
    return figures


def _intervals(keys: list[str], bounds: np.ndarray) -> dict[str, Interval]:
    """(m, 2) bounds keyed by metric."""
    return {key: (float(low), float(high)) for key, (low, high) in zip(keys, bounds)}
