"""Retrieval evaluation of held-out queries against a database (SPEC §7).

`evaluate_retrieval` ranks exactly (numpy, same-patient items excluded) and hands the ranking
to `evaluate_ranking`, which the atlas can also call with a ranking it computed itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from threads_search.errors import InputError
from threads_search.evaluation import chance
from threads_search.evaluation._inputs import (
    as_cutoffs,
    as_keys,
    as_vectors,
    check_unique,
    encode_shared,
    l2_normalised,
)
from threads_search.evaluation.class_highlights import RARE_PATIENT_SHARE, Prevalence
from threads_search.evaluation.metrics import METRICS, RankedQueries, precision_at_ranks
from threads_search.evaluation.ranking import rank_database
from threads_search.evaluation.report import RetrievalReport
from threads_search.evaluation.site_mixing import DEFINITION as SITE_MIXING_DEFINITION
from threads_search.evaluation.site_mixing import summarise_site_mixing
from threads_search.evaluation.summary import summarise

DEFINITIONS: dict[str, str] = {
    **{f"{metric.name}@K": metric.definition for metric in METRICS.values()},
    "P@j": "fraction of the top j ranked database items that carry the query's label",
    "exclusion": "database items of the query's own patient are never ranked for it",
    "chance": "exact expectation (closed form, no sampling) under a uniformly random ranking "
    "of the same eligible database for the same queries",
    "ci95": "percentile bootstrap 95% interval resampling query patients with replacement "
    "(widened, if needed, to contain the point estimate)",
    "per_class": "metrics averaged over the queries of each label; n_database = items with it; "
    "n_patients = distinct patients with it on either side; attainable = the highest mAP@K its queries "
    "could reach, mean of min(R_q, K) / K (a class whose queries have fewer than K relevant items cannot reach 1)",
    "class_highlights": "per mAP@K: the worst classes (lowest per-class figure) and the rare ones "
    f"(carried by <= {RARE_PATIENT_SHARE:.0%} of the patients in `prevalence`: the atlas's patients "
    "for `eval`, else the distinct patients on either side)",
    "site_mixing@K": SITE_MIXING_DEFINITION,
}


def evaluate_retrieval(
    query_vectors: Any,
    query_labels: Sequence[Any],
    query_patients: Sequence[Any],
    db_vectors: Any,
    db_labels: Sequence[Any],
    db_patients: Sequence[Any],
    ks: Sequence[int] = (1, 5, 10),
    n_bootstrap: int = 1000,
    seed: int = 0,
    extra_query_columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    query_ids: Sequence[Any] | None = None,
    db_ids: Sequence[Any] | None = None,
    name: str = "model",
    normalize: bool = True,
    query_sites: Sequence[Any] | None = None,
    db_sites: Sequence[Any] | None = None,
    site_column: str = "site",
    prevalence: Prevalence | None = None,
) -> RetrievalReport:
    """Rank the database for every query by cosine (or inner product) and report metrics.

    query_vectors: (q, d); db_vectors: (n, d). Labels and patients: (q,) and (n,) values of
    any printable type. ks: cutoffs K (each at most n). n_bootstrap: replicates for the 95%
    CIs (0 = none). extra_query_columns: name -> (q,) values (site, cohort ...) to break the
    metrics down by. query_ids / db_ids: item ids, used to count items present on both
    sides. normalize: L2-normalise both sides first (cosine); False ranks by raw inner product.
    query_sites (q,) / db_sites (n,): site of each item (None = unknown), for the site-mixing
    figure (`evaluation.site_mixing`); site_column names it in the report. prevalence: the
    population rare classes are measured in (default: the patients on either side).
    """
    queries = as_vectors(query_vectors, "query_vectors")
    database = as_vectors(db_vectors, "db_vectors")
    if normalize:
        queries = l2_normalised(queries, "query_vectors")
        database = l2_normalised(database, "db_vectors")
    cutoffs = as_cutoffs(ks, len(database))
    ranked_indices, _ = rank_database(queries, database, max(cutoffs), query_patients, db_patients)
    return evaluate_ranking(
        ranked_indices,
        query_labels,
        query_patients,
        db_labels,
        db_patients,
        ks=cutoffs,
        n_bootstrap=n_bootstrap,
        seed=seed,
        extra_query_columns=extra_query_columns,
        query_ids=query_ids,
        db_ids=db_ids,
        name=name,
        query_sites=query_sites,
        db_sites=db_sites,
        site_column=site_column,
        prevalence=prevalence,
    )


def evaluate_ranking(
    ranked_indices: Any,
    query_labels: Sequence[Any],
    query_patients: Sequence[Any],
    db_labels: Sequence[Any],
    db_patients: Sequence[Any],
    ks: Sequence[int] = (1, 5, 10),
    n_bootstrap: int = 1000,
    seed: int = 0,
    extra_query_columns: Mapping[str, Sequence[Any]] | None = None,
    *,
    query_ids: Sequence[Any] | None = None,
    db_ids: Sequence[Any] | None = None,
    name: str = "model",
    query_sites: Sequence[Any] | None = None,
    db_sites: Sequence[Any] | None = None,
    site_column: str = "site",
    prevalence: Prevalence | None = None,
) -> RetrievalReport:
    """Report metrics for a given ranking: ranked_indices (q, >= max K) database rows, best
    first, -1 for padding, with no item of the query's own patient (checked). With
    query_sites and db_sites (None = unknown site) the report carries site mixing too."""
    ranking = np.asarray(ranked_indices)
    if ranking.ndim != 2 or ranking.shape[0] == 0 or not np.issubdtype(ranking.dtype, np.integer):
        raise InputError(
            f"ranked_indices: expected a non-empty (q, k) int array, got {ranking.shape}"
        )
    sides = _Sides.encode(len(ranking), query_labels, query_patients, db_labels, db_patients)
    cutoffs = as_cutoffs(ks, sides.n_database)
    ranking = _checked_ranking(ranking, max(cutoffs), sides)
    ranked = sides.ranked_queries(ranking)
    model_values = {m.key(k): m.per_query(ranked, k) for k in cutoffs for m in METRICS.values()}
    chance_values = {
        m.key(k): m.chance(ranked.query_labels, ranked.eligible_counts, k)
        for k in cutoffs
        for m in METRICS.values()
    }
    groups = {
        column: as_keys(values, sides.n_queries, f"extra_query_columns[{column!r}]")
        for column, values in (extra_query_columns or {}).items()
    }
    n_overlap = _count_overlap(query_ids, db_ids, sides.n_queries, sides.n_database)
    summary = partial(
        summarise,
        query_classes=sides.query_classes,
        query_patients=sides.query_patients,
        classes=sides.classes,
        n_bootstrap=n_bootstrap,
        seed=seed,
        groups=groups,
    )
    chance_precision = chance.expected_precision_at_ranks(
        ranked.query_labels, ranked.eligible_counts, max(cutoffs)
    )
    mixing = None
    if query_sites is not None or db_sites is not None:
        if query_sites is None or db_sites is None:
            raise InputError("query_sites and db_sites: give both site arrays or neither")
        mixing = summarise_site_mixing(ranking, query_sites, db_sites, sides.query_patient_codes,
                                       sides.db_patient_codes, sides.query_patients, cutoffs, n_bootstrap, seed,
                                       site_column)
    return RetrievalReport(
        name=name,
        ks=cutoffs,
        model=summary(model_values, precision_at_ranks(ranked, max(cutoffs))),
        chance=summary(chance_values, chance_precision),
        n_queries=sides.n_queries,
        n_database=sides.n_database,
        class_database_counts=sides.class_database_counts(),
        n_overlap=n_overlap,
        n_bootstrap=n_bootstrap,
        seed=seed,
        warnings=tuple(_warnings(ranked, sides, max(cutoffs), n_overlap)),
        definitions=dict(DEFINITIONS),
        per_query={**_per_query_table(query_ids, sides, groups, model_values, chance_values),
                   **(mixing.per_query if mixing is not None else {})},
        class_patient_counts=sides.class_patient_counts(),
        class_attainable=_attainable_map(ranked, sides, cutoffs),
        prevalence=prevalence or Prevalence(sides.class_patient_counts(), sides.n_patients(), "evaluated patients"),
        site_mixing=mixing,
    )


@dataclass(frozen=True)
class _Sides:
    """Labels and patients of both sides, checked, as str and as shared integer codes."""

    query_classes: np.ndarray  # (q,) str
    query_patients: np.ndarray  # (q,) str
    classes: list[str]  # sorted vocabulary of both sides
    query_codes: np.ndarray  # (q,) int64 codes into classes
    db_codes: np.ndarray  # (n,) int64 codes into classes
    query_patient_codes: np.ndarray  # (q,) int64, codes shared with the database side
    db_patient_codes: np.ndarray  # (n,) int64

    @classmethod
    def encode(
        cls,
        n_queries: int,
        query_labels: Any,
        query_patients: Any,
        db_labels: Any,
        db_patients: Any,
    ) -> _Sides:
        """Check lengths and missing values of the four key arrays and encode them."""
        n_database = len(db_labels)
        if n_database == 0:
            raise InputError("db_labels: the database is empty (0 items)")
        query_label_keys = as_keys(query_labels, n_queries, "query_labels")
        query_patient_keys = as_keys(query_patients, n_queries, "query_patients")
        db_label_keys = as_keys(db_labels, n_database, "db_labels")
        db_patient_keys = as_keys(db_patients, n_database, "db_patients")
        query_codes, db_codes, classes = encode_shared(query_label_keys, db_label_keys)
        query_patient_codes, db_patient_codes, _ = encode_shared(
            query_patient_keys, db_patient_keys
        )
        return cls(
            query_classes=query_label_keys,
            query_patients=query_patient_keys,
            classes=classes,
            query_codes=query_codes,
            db_codes=db_codes,
            query_patient_codes=query_patient_codes,
            db_patient_codes=db_patient_codes,
        )

    @property
    def n_queries(self) -> int:
        return len(self.query_codes)

    @property
    def n_database(self) -> int:
        return len(self.db_codes)

    def class_database_counts(self) -> dict[str, int]:
        """Database items per class (every class of either side)."""
        counts = np.bincount(self.db_codes, minlength=len(self.classes))
        return {label: int(count) for label, count in zip(self.classes, counts)}

    def class_patient_counts(self) -> dict[str, int]:
        """Distinct patients per class over both sides (every class of either side)."""
        pairs = np.unique(np.column_stack([
            np.concatenate([self.query_patient_codes, self.db_patient_codes]),
            np.concatenate([self.query_codes, self.db_codes]),
        ]), axis=0)
        counts = np.bincount(pairs[:, 1], minlength=len(self.classes))
        return {label: int(count) for label, count in zip(self.classes, counts)}

    def n_patients(self) -> int:
        """Distinct patients over both sides."""
        return int(np.unique(np.concatenate([self.query_patient_codes, self.db_patient_codes])).size)

    def eligible_counts(self) -> np.ndarray:
        """(q, n_classes) int64: database items per class minus those of the query's patient."""
        n_patients = int(max(self.query_patient_codes.max(), self.db_patient_codes.max())) + 1
        patient_class_counts = np.zeros((n_patients, len(self.classes)), dtype=np.int64)
        np.add.at(patient_class_counts, (self.db_patient_codes, self.db_codes), 1)
        class_counts = patient_class_counts.sum(axis=0)
        return class_counts[None, :] - patient_class_counts[self.query_patient_codes]

    def ranked_queries(self, ranking: np.ndarray) -> RankedQueries:
        """Label codes of a (q, K) ranking (-1 kept as padding) and the eligible counts."""
        return RankedQueries(
            query_labels=self.query_codes,
            ranked_labels=np.where(ranking >= 0, self.db_codes[np.maximum(ranking, 0)], -1),
            eligible_counts=self.eligible_counts(),
        )


def _checked_ranking(ranking: np.ndarray, k_max: int, sides: _Sides) -> np.ndarray:
    """The first k_max columns as int64, refusing short rankings, rows out of range and
    rankings that return the query's own patient."""
    if ranking.shape[1] < k_max:
        raise InputError(f"ranked_indices: has {ranking.shape[1]} columns, fewer than K={k_max}")
    ranking = ranking[:, :k_max].astype(np.int64)
    bad = (ranking < -1) | (ranking >= sides.n_database)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputError(
            f"ranked_indices: row {row} holds a database row outside 0..{sides.n_database - 1}"
        )
    ranked_patients = sides.db_patient_codes[np.maximum(ranking, 0)]
    same_patient = (ranking >= 0) & (ranked_patients == sides.query_patient_codes[:, None])
    if same_patient.any():
        row = int(np.flatnonzero(same_patient.any(axis=1))[0])
        raise InputError(f"ranked_indices: row {row} ranks an item of the query's own patient")
    return ranking


def _count_overlap(query_ids: Any, db_ids: Any, n_queries: int, n_database: int) -> int | None:
    """Number of query ids that are also database ids; None when ids were not given."""
    if query_ids is None and db_ids is None:
        return None
    if query_ids is None or db_ids is None:
        raise InputError("query_ids and db_ids: give both id arrays or neither")
    query_keys = as_keys(query_ids, n_queries, "query_ids")
    db_keys = as_keys(db_ids, n_database, "db_ids")
    check_unique(query_keys, "query_ids")
    check_unique(db_keys, "db_ids")
    return int(np.isin(query_keys.astype(str), db_keys.astype(str)).sum())


def _warnings(ranked: RankedQueries, sides: _Sides, k_max: int, n_overlap: int | None) -> list[str]:
    """One-line notes: classes no query can retrieve, query/database overlap, short rankings."""
    notes = []
    unmatched = ranked.n_relevant == 0
    for label in sides.classes:
        members = sides.query_classes == label
        if members.any() and unmatched[members].all():
            notes.append(
                f"class {label!r}: none of its {int(members.sum())} queries has an item of its "
                "label in the database outside its own patient; its metrics are 0 by construction"
            )
    if n_overlap:
        notes.append(
            f"{n_overlap} query items are also database items; they are never retrieved for "
            "themselves (same-patient exclusion) but database statistics include them"
        )
    short = int((ranked.eligible_counts.sum(axis=1) < k_max).sum())
    if short:
        notes.append(
            f"{short} queries have fewer than K={k_max} eligible database items; "
            "their rankings are padded"
        )
    return notes


def _attainable_map(ranked: RankedQueries, sides: _Sides, cutoffs) -> dict[str, dict[str, float]]:
    """class -> {"mAP@K": the figure a perfect ranking reaches for its queries}: mean of min(R_q, K) / K."""
    relevant = ranked.n_relevant
    attainable = {}
    for label in sides.classes:
        members = sides.query_classes == label
        if members.any():
            attainable[str(label)] = {f"mAP@{k}": float(np.minimum(relevant[members], k).mean() / k) for k in cutoffs}
    return attainable


def _per_query_table(
    query_ids: Any,
    sides: _Sides,
    groups: dict[str, np.ndarray],
    model_values: dict[str, np.ndarray],
    chance_values: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Columns of the per-query table: id, label, patient, extra columns, metrics, chance."""
    table: dict[str, np.ndarray] = {}
    if query_ids is not None:
        table["query_id"] = np.asarray([str(i) for i in query_ids], dtype=object)
    table.update({"label": sides.query_classes, "patient_id": sides.query_patients})
    table.update(groups)
    table.update(model_values)
    table.update({f"chance_{key}": values for key, values in chance_values.items()})
    return table
