"""Checks and encodings shared by the evaluation functions.

User arrays arrive as whatever the caller had (lists, pandas columns, numpy arrays of str or
int). They are checked once here and turned into the small integer codes the metric code
works on, so every error message names the argument and the row at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from threads_search.errors import InputError


def as_vectors(values: Any, name: str) -> np.ndarray:
    """Return `values` as a finite `(n, d)` float64 array; `name` is used in errors."""
    try:
        vectors = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: not a numeric matrix ({exc})") from None
    if vectors.ndim != 2:
        raise InputError(f"{name}: expected a 2-D (n, dim) array, got shape {vectors.shape}")
    if vectors.shape[0] == 0:
        raise InputError(f"{name}: is empty (0 rows)")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{name}: row {row} contains NaN or Inf")
    return vectors


def l2_normalised(vectors: np.ndarray, name: str) -> np.ndarray:
    """Scale each row of `(n, d)` `vectors` to unit length; a zero row is an error."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise InputError(f"{name}: row {row} is the zero vector and has no direction")
    return vectors / norms


def as_keys(values: Any, n_rows: int, name: str) -> np.ndarray:
    """Return labels / patient ids / item ids as an `(n_rows,)` array of str.

    Strings make keys comparable across the query and database sides even when one side
    was read as int and the other as str, and they serialise to JSON as they print.
    """
    items = list(values) if not isinstance(values, np.ndarray) else values.tolist()
    if len(items) != n_rows:
        raise InputError(f"{name}: has {len(items)} entries but there are {n_rows} vectors")
    for row, item in enumerate(items):
        if item is None or (isinstance(item, float) and np.isnan(item)):
            raise InputError(f"{name}: row {row} is missing")
    return np.asarray([str(item) for item in items], dtype=object)


def encode_shared(
    first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Encode two str arrays with one vocabulary: `(codes_first, codes_second, vocabulary)`.

    The vocabulary is sorted, so class order in reports does not depend on input order.
    """
    vocabulary, codes = np.unique(np.concatenate([first, second]).astype(str), return_inverse=True)
    codes = codes.astype(np.int64)
    return codes[: len(first)], codes[len(first) :], [str(v) for v in vocabulary]


def check_unique(ids: np.ndarray, name: str) -> None:
    """Refuse duplicate ids within one side (query set or database)."""
    _, first_rows, counts = np.unique(ids.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
        duplicate = ids[first_rows[np.flatnonzero(counts > 1)[0]]]
        raise InputError(f"{name}: id {duplicate!r} appears more than once")


def as_cutoffs(ks: Sequence[int] | int, n_database: int) -> tuple[int, ...]:
    """Validate the cutoffs K: positive ints, at most the database size; sorted, unique."""
    raw = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not raw:
        raise InputError("ks: give at least one cutoff K")
    cutoffs = []
    for k in raw:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"ks: cutoff {k!r} is not a positive integer")
        if k > n_database:
            raise InputError(f"ks: K={k} is larger than the database ({n_database} items)")
        cutoffs.append(int(k))
    return tuple(sorted(set(cutoffs)))
