"""Chance baseline: metrics expected when the eligible database is ranked uniformly at random.

Closed forms, not Monte Carlo. For a query with N eligible database items of which R are
relevant, a random ranking places a relevant item at any rank with probability R/N and two
given ranks are both relevant with probability R(R-1)/(N(N-1)); the top-K label counts follow
a multivariate hypergeometric law. When N < K only N items are ranked (the rest is padding,
never relevant), exactly as the evaluated rankings are padded.

All functions take query_labels (q,) int64 codes and eligible_counts (q, n_classes) int64
(database items per label that each query may retrieve) and return (q,) float64.
"""

from __future__ import annotations

import math

import numpy as np


def _sizes(query_labels: np.ndarray, eligible_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, R): eligible database size and relevant count per query, both (q,) float64."""
    n_eligible = eligible_counts.sum(axis=1).astype(np.float64)
    n_relevant = np.take_along_axis(eligible_counts, query_labels[:, None], axis=1)[:, 0]
    return n_eligible, n_relevant.astype(np.float64)


def _expected_precision_sum(
    query_labels: np.ndarray, eligible_counts: np.ndarray, k: int
) -> np.ndarray:
    """E[sum_{j<=K} P@j rel_j] = sum_{j<=min(K,N)} (R/N + (j-1) R(R-1)/(N(N-1))) / j, (q,)."""
    n_eligible, n_relevant = _sizes(query_labels, eligible_counts)
    ranks = np.arange(1, k + 1, dtype=np.float64)[None, :]
    relevant_at_j = np.divide(
        n_relevant, n_eligible, out=np.zeros_like(n_relevant), where=n_eligible > 0
    )
    pair_denominator = n_eligible * (n_eligible - 1)
    both_relevant = np.divide(
        n_relevant * (n_relevant - 1),
        pair_denominator,
        out=np.zeros_like(n_relevant),
        where=pair_denominator > 0,
    )
    terms = (relevant_at_j[:, None] + (ranks - 1) * both_relevant[:, None]) / ranks
    return np.where(ranks <= n_eligible[:, None], terms, 0.0).sum(axis=1)


def expected_map_at_k(
    query_labels: np.ndarray, eligible_counts: np.ndarray, k: int
) -> np.ndarray:
    """Expected mAP@K (divide by K) under a random ranking, (q,)."""
    return _expected_precision_sum(query_labels, eligible_counts, k) / k


def expected_map_trec_at_k(
    query_labels: np.ndarray, eligible_counts: np.ndarray, k: int
) -> np.ndarray:
    """Expected mAP_trec@K (divide by R_q, 0 when R_q = 0) under a random ranking, (q,)."""
    _, n_relevant = _sizes(query_labels, eligible_counts)
    total = _expected_precision_sum(query_labels, eligible_counts, k)
    return np.divide(total, n_relevant, out=np.zeros_like(total), where=n_relevant > 0)


def expected_accuracy_at_k(
    query_labels: np.ndarray, eligible_counts: np.ndarray, k: int
) -> np.ndarray:
    """Expected Acc@K = 1 - C(N-R, K')/C(N, K') with K' = min(K, N), (q,)."""
    n_eligible, n_relevant = _sizes(query_labels, eligible_counts)
    steps = np.arange(k, dtype=np.float64)[None, :]
    # C(N-R, K')/C(N, K') = prod_{i<K'} (N-R-i)/(N-i); a factor reaches 0 once i = N-R.
    factors = np.divide(
        np.clip(n_eligible[:, None] - n_relevant[:, None] - steps, 0.0, None),
        n_eligible[:, None] - steps,
        out=np.ones((len(n_eligible), k)),
        where=steps < n_eligible[:, None],
    )
    none_relevant = np.prod(factors, axis=1)
    return np.where(n_relevant > 0, 1.0 - none_relevant, 0.0)


def expected_precision_at_ranks(
    query_labels: np.ndarray, eligible_counts: np.ndarray, k: int
) -> np.ndarray:
    """E[P@j] = R min(j, N) / (N j) for j = 1..k, (q, k) float64."""
    n_eligible, n_relevant = _sizes(query_labels, eligible_counts)
    ranks = np.arange(1, k + 1, dtype=np.float64)[None, :]
    share = np.divide(n_relevant, n_eligible, out=np.zeros_like(n_relevant), where=n_eligible > 0)
    return share[:, None] * np.minimum(ranks, n_eligible[:, None]) / ranks


def expected_majority_vote_at_k(
    query_labels: np.ndarray, eligible_counts: np.ndarray, k: int
) -> np.ndarray:
    """Expected MV@K: P(the query's label is a mode of the top-K labels), (q,).

    Exact, by dynamic programming over the multivariate hypergeometric law, vectorised over
    the distinct (label, eligible counts) configurations. Cost ~ configurations x classes x
    K^3 / 3: about 0.1 s for a thousand queries at K = 10, tens of seconds at K = 100.
    """
    configurations = np.column_stack([query_labels, eligible_counts])
    distinct, inverse = np.unique(configurations, axis=0, return_inverse=True)
    log_factorials = _log_factorials(int(eligible_counts.sum(axis=1).max()))
    # Bound the (block, K, K + 1) state tables to about 2**22 values.
    block = max(1, 2**22 // (k * (k + 1)))
    probabilities = np.concatenate(
        [
            _mode_probabilities(chunk[:, 1:], chunk[:, 0], k, log_factorials)
            for chunk in np.array_split(distinct, range(block, len(distinct), block))
        ]
    )
    return probabilities[inverse.reshape(-1)]


def _log_factorials(n_max: int) -> np.ndarray:
    """log(i!) for i = 0..n_max, (n_max + 1,) float64."""
    return np.array([math.lgamma(i + 1.0) for i in range(n_max + 1)])


def _log_binomial(n: np.ndarray, r: np.ndarray, log_factorials: np.ndarray) -> np.ndarray:
    """log C(n, r) for 0 <= r <= n, element-wise."""
    return log_factorials[n] - log_factorials[r] - log_factorials[n - r]


def _hypergeometric_pmf(
    population: np.ndarray,
    successes: np.ndarray,
    draws: np.ndarray,
    hits: np.ndarray,
    log_factorials: np.ndarray,
) -> np.ndarray:
    """P(`hits` successes among `draws` draws without replacement from `population` items of
    which `successes` are successes); all four broadcast, impossible cases give 0."""
    population, successes, draws, hits = np.broadcast_arrays(population, successes, draws, hits)
    failures = population - successes
    misses = draws - hits
    possible = (hits >= 0) & (hits <= successes) & (misses >= 0) & (misses <= failures)
    hits = np.where(possible, hits, 0)
    misses = np.where(possible, misses, 0)
    log_pmf = (
        _log_binomial(successes, hits, log_factorials)
        + _log_binomial(failures, misses, log_factorials)
        - _log_binomial(population, hits + misses, log_factorials)
    )
    return np.where(possible, np.exp(log_pmf), 0.0)


def _mode_probabilities(
    counts: np.ndarray, labels: np.ndarray, k: int, log_factorials: np.ndarray
) -> np.ndarray:
    """P(the label's count in a random top-K is maximal), for m configurations at once.

    counts: (m, n_classes) eligible items per class; labels: (m,) the query's class.
    Draws are placed class by class, the query's class first. The state (m, c, r) is the
    probability that the query's class took c + 1 of the top K and r draws are still to be
    placed; every other class may take at most c + 1 of them, and at the end none is left.
    """
    n_configurations = len(labels)
    population = counts.sum(axis=1)
    n_draws = np.minimum(k, population)
    n_relevant = counts[np.arange(n_configurations), labels]
    query_counts = np.arange(1, k + 1)  # c + 1 for c = 0..k-1

    state = np.zeros((n_configurations, k, k + 1))
    start = n_draws[:, None] - query_counts[None, :]  # draws left after the query's class
    first = _hypergeometric_pmf(
        population[:, None],
        n_relevant[:, None],
        n_draws[:, None],
        query_counts[None, :],
        log_factorials,
    )
    rows, columns = np.nonzero(start >= 0)
    state[rows, columns, start[rows, columns]] = first[rows, columns]

    remaining = population - n_relevant
    draws_left = np.arange(k + 1)
    for other in range(counts.shape[1]):
        # The query's own class was placed first: give it size 0 here (an identity step).
        size = np.where(labels == other, 0, counts[:, other])
        if not size.any():
            continue
        next_state = np.zeros_like(state)
        for taken in range(min(int(size.max()), k) + 1):
            pmf = _hypergeometric_pmf(
                remaining[:, None], size[:, None], draws_left[None, taken:], taken, log_factorials
            )
            # Only states where the query's class took at least `taken` (rows c + 1 >= taken)
            # allow this class to take `taken`: the cap of the majority vote.
            capped = max(taken - 1, 0)
            next_state[:, capped:, : k + 1 - taken] += state[:, capped:, taken:] * pmf[:, None, :]
        state = next_state
        remaining = remaining - size
    return state[:, :, 0].sum(axis=1)
