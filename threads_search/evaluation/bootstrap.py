"""Percentile bootstrap confidence intervals that resample patients, not queries.

Queries from one patient are correlated (several slides of one tumour look alike), so the
unit of resampling is the patient: each replicate draws as many patients as there are, with
replacement, and takes the mean over all queries of the drawn patients.
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError

# Replicates per block: each block holds a (block, n_patients) weight matrix.
_REPLICATE_BLOCK = 256


def patient_bootstrap_ci(
    per_query_values: np.ndarray,
    query_patients: np.ndarray,
    n_bootstrap: int,
    seed: int = 0,
    level: float = 0.95,
) -> np.ndarray:
    """Percentile interval of the query mean of each column, resampling patients.

    per_query_values: (q, m) float64, one column per metric; query_patients: (q,) patient ids.
    Returns (m, 2) float64 [lower, upper], always containing the mean of the column; NaN
    when n_bootstrap is 0 or there are no queries.
    """
    values = np.asarray(per_query_values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)):
        raise InputError(f"n_bootstrap: {n_bootstrap!r} is not a non-negative integer")
    if n_bootstrap < 0:
        raise InputError(f"n_bootstrap: {n_bootstrap!r} is not a non-negative integer")
    if not 0.0 < level < 1.0:
        raise InputError(f"level: {level!r} is not between 0 and 1")
    if n_bootstrap == 0 or len(values) == 0:
        return np.full((values.shape[1], 2), np.nan)
    _, patient_codes = np.unique(np.asarray(query_patients).astype(str), return_inverse=True)
    n_patients = int(patient_codes.max()) + 1
    # Per patient: sum of each metric over its queries, and its number of queries.
    patient_sums = np.zeros((n_patients, values.shape[1]))
    np.add.at(patient_sums, patient_codes, values)
    patient_sizes = np.bincount(patient_codes, minlength=n_patients).astype(np.float64)

    rng = np.random.default_rng(seed)
    replicates = np.empty((n_bootstrap, values.shape[1]))
    uniform = np.full(n_patients, 1.0 / n_patients)
    for start in range(0, n_bootstrap, _REPLICATE_BLOCK):
        stop = min(start + _REPLICATE_BLOCK, n_bootstrap)
        # How often each patient is drawn in each replicate (a multinomial draw is the same
        # as drawing n_patients patients with replacement, without materialising the draws).
        times_drawn = rng.multinomial(n_patients, uniform, size=stop - start).astype(np.float64)
        drawn_queries = times_drawn @ patient_sizes
        replicates[start:stop] = (times_drawn @ patient_sums) / drawn_queries[:, None]
    tail = 100.0 * (1.0 - level) / 2.0
    bounds = np.percentile(replicates, [tail, 100.0 - tail], axis=0).T
    # A metric that is constant over queries gives replicates that differ from the plain mean
    # in the last bit, and a very skewed small sample can put the percentiles beside it: the
    # interval is widened to contain the point estimate, which it is reported with.
    point = values.mean(axis=0)
    return np.column_stack([np.minimum(bounds[:, 0], point), np.maximum(bounds[:, 1], point)])
