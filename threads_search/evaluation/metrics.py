"""Retrieval metrics of SPEC §7, per query, and the registry that names them.

Notation: for query q the database items are ranked; rel_j = 1 when the item at rank j has the
query's label, P@j = (relevant items in the top j) / j, R_q = relevant items the query may
retrieve (its own patient's items are excluded). Positions past the end of a short ranking
(padding, label code -1) are never relevant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from threads_search.evaluation import chance

# Queries per block in the majority vote, whose (block, K, K) comparison table is the largest
# temporary here.
_VOTE_BLOCK = 1024


@dataclass(frozen=True)
class RankedQueries:
    """Everything the metrics need about one ranking of the database for q queries.

    query_labels: (q,) int64 label codes.
    ranked_labels: (q, k_max) int64 label codes of the ranked database items, -1 = padding.
    eligible_counts: (q, n_classes) int64 database items per label the query may retrieve
        (same-patient items removed); row sums are the eligible database sizes.
    """

    query_labels: np.ndarray
    ranked_labels: np.ndarray
    eligible_counts: np.ndarray

    @property
    def n_relevant(self) -> np.ndarray:
        """R_q: (q,) int64 relevant eligible database items per query."""
        return np.take_along_axis(self.eligible_counts, self.query_labels[:, None], axis=1)[:, 0]

    def relevance(self, k: int) -> np.ndarray:
        """rel_j for j = 1..k: (q, k) bool."""
        top = self.ranked_labels[:, :k]
        return (top == self.query_labels[:, None]) & (top >= 0)


def precision_at_ranks(ranked: RankedQueries, k: int) -> np.ndarray:
    """P@j for j = 1..k: (q, k) float64."""
    hits = np.cumsum(ranked.relevance(k), axis=1)
    return hits / np.arange(1, k + 1)


def _precision_sum(ranked: RankedQueries, k: int) -> np.ndarray:
    """sum_{j<=k} P@j * rel_j: (q,) float64."""
    return (precision_at_ranks(ranked, k) * ranked.relevance(k)).sum(axis=1)


def map_at_k(ranked: RankedQueries, k: int) -> np.ndarray:
    """Patho-Bench / THREADS mAP@K per query: sum_{j<=K} P@j rel_j / K, (q,) float64."""
    return _precision_sum(ranked, k) / k


def map_trec_at_k(ranked: RankedQueries, k: int) -> np.ndarray:
    """trec_eval map_cut_K per query: sum_{j<=K} P@j rel_j / R_q (0 when R_q = 0), (q,)."""
    n_relevant = ranked.n_relevant
    return np.divide(
        _precision_sum(ranked, k),
        n_relevant,
        out=np.zeros(len(n_relevant), dtype=np.float64),
        where=n_relevant > 0,
    )


def accuracy_at_k(ranked: RankedQueries, k: int) -> np.ndarray:
    """Acc@K per query: 1.0 when at least one of the top K is relevant, (q,) float64."""
    return ranked.relevance(k).any(axis=1).astype(np.float64)


def majority_vote_at_k(ranked: RankedQueries, k: int) -> np.ndarray:
    """MV@K per query: 1.0 when the query's label is a mode of the top-K labels, (q,).

    Ties count: with top-3 labels (a, b, c) every one of a, b, c is a mode. Padding does not
    vote; a query with no retrieved item scores 0.
    """
    votes = np.zeros(len(ranked.query_labels), dtype=np.float64)
    for start in range(0, len(votes), _VOTE_BLOCK):
        top = ranked.ranked_labels[start : start + _VOTE_BLOCK, :k]
        # Count, for each position, how many of the top K share its label: the mode count is
        # the largest such count over real (non-padding) positions.
        same = (top[:, :, None] == top[:, None, :]).sum(axis=2)
        mode_count = np.where(top >= 0, same, 0).max(axis=1)
        query_labels = ranked.query_labels[start : start + _VOTE_BLOCK, None]
        query_votes = ((top == query_labels) & (top >= 0)).sum(axis=1)
        votes[start : start + _VOTE_BLOCK] = (query_votes > 0) & (query_votes == mode_count)
    return votes


@dataclass(frozen=True)
class RetrievalMetric:
    """One metric: its report name, a one-line definition, and how to compute it.

    per_query(ranked, k) -> (q,) values of the ranking; chance(query_labels, eligible_counts, k)
    -> (q,) expected values under a uniformly random ranking of the same eligible database.
    """

    name: str
    definition: str
    per_query: Callable[[RankedQueries, int], np.ndarray]
    chance: Callable[[np.ndarray, np.ndarray, int], np.ndarray]

    def key(self, k: int) -> str:
        """Report key for cutoff k, e.g. 'mAP@5'."""
        return f"{self.name}@{k}"


METRICS: dict[str, RetrievalMetric] = {
    metric.name: metric
    for metric in (
        RetrievalMetric(
            "mAP",
            "mean over queries of sum_{j<=K} P@j*rel_j / K (Patho-Bench/THREADS definition)",
            map_at_k,
            chance.expected_map_at_k,
        ),
        RetrievalMetric(
            "Acc",
            "fraction of queries with at least one item of their label in the top K",
            accuracy_at_k,
            chance.expected_accuracy_at_k,
        ),
        RetrievalMetric(
            "MV",
            "fraction of queries whose label is a mode of the top-K labels (ties count)",
            majority_vote_at_k,
            chance.expected_majority_vote_at_k,
        ),
        RetrievalMetric(
            "mAP_trec",
            "mean over queries of sum_{j<=K} P@j*rel_j / R_q, R_q = relevant items the query "
            "may retrieve; 0 when R_q = 0 (trec_eval map_cut_K)",
            map_trec_at_k,
            chance.expected_map_trec_at_k,
        ),
    )
}
