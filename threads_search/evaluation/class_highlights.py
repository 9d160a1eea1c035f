"""The classes a mean hides: the worst-retrieved classes and the rare ones, beside the mean.

A class is rare when at most RARE_PATIENT_SHARE of the patients of a reference population
carry it (`Prevalence`: the atlas's patients for `eval`, else the distinct patients with an
item on either side of the evaluation). The worst classes are those with queries and the
lowest per-class metric (ties by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RARE_PATIENT_SHARE = 0.05
N_WORST = 3


@dataclass(frozen=True)
class Prevalence:
    """Patients per class in a reference population: counts (class -> distinct patients with
    it), n_patients (distinct patients in it), scope (what it is, e.g. 'atlas patients')."""

    counts: dict[str, int]
    n_patients: int
    scope: str

    def share(self, label: str) -> float | None:
        return self.counts.get(label, 0) / self.n_patients if self.n_patients else None

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "n_patients": self.n_patients, "scope": self.scope}


def class_highlights(per_class: dict[str, dict[str, Any]], metric: str, prevalence: Prevalence,
                     n_worst: int = N_WORST, rare_share: float = RARE_PATIENT_SHARE) -> dict[str, Any]:
    """{"metric", "rare_share", "prevalence": {n_patients, scope}, "worst": [...], "rare": [...]}.

    per_class: class -> {metric: value or None, "n_queries", "attainable": {metric: ...}, ...} (the
    JSON form of a report's per-class table). Each listed class is {"class", metric, "n_queries",
    "prevalence_patients" (patients with it in the reference population), "prevalence_share",
    "attainable" (the figure a perfect ranking reaches, None when unknown)};
    worst classes come lowest first, rare ones rarest first (a rare class without queries is
    listed with metric None).
    """
    def entry(label: str) -> dict[str, Any]:
        figures = per_class[label]
        return {"class": label, metric: figures.get(metric), "n_queries": int(figures.get("n_queries") or 0),
                "prevalence_patients": prevalence.counts.get(label, 0), "prevalence_share": prevalence.share(label),
                "attainable": (figures.get("attainable") or {}).get(metric)}

    scored = [label for label, figures in per_class.items() if figures.get(metric) is not None]
    worst = sorted(scored, key=lambda label: (per_class[label][metric], label))[:n_worst]
    rare = [label for label in per_class
            if prevalence.n_patients and 0 < prevalence.counts.get(label, 0) <= rare_share * prevalence.n_patients]
    rare.sort(key=lambda label: (prevalence.counts.get(label, 0), label))
    return {"metric": metric, "rare_share": rare_share,
            "prevalence": {"n_patients": prevalence.n_patients, "scope": prevalence.scope},
            "worst": [entry(label) for label in worst], "rare": [entry(label) for label in rare]}


def describe_highlights(highlights: dict[str, Any]) -> list[str]:
    """Two lines for a terminal summary: the worst classes, and the rare ones (or that none is)."""
    metric = highlights["metric"]
    population = highlights["prevalence"]

    def listed(entries: list[dict[str, Any]]) -> str:
        return ", ".join(f"{e['class']} {_figure(e[metric])} ({e['n_queries']} queries, "
                         f"{e['prevalence_patients']} patients{_ceiling(e.get('attainable'))})" for e in entries)

    lines = [f"worst classes by {metric}: {listed(highlights['worst']) or 'none'}"]
    share = f"<= {highlights['rare_share']:.0%} of {population['n_patients']} {population['scope']}"
    lines.append(f"rare classes ({share}): {listed(highlights['rare']) or 'none'}")
    return lines


def _ceiling(attainable: float | None) -> str:
    """', at most 0.600' when too few relevant items keep even a perfect ranking below 1."""
    return "" if attainable is None or attainable >= 1 - 1e-9 else f", at most {attainable:.3f}"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
