"""Checks and normalisation of the arrays handed to the indexer (numpy only).

Every failure is a one-line typed error naming the argument and the offending row.
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError, ModelMismatchError

# Rows checked at a time: float64 copies of 8192 x 1024 rows stay at 64 MiB, so validating
# 10^6 vectors needs no (n, dim) temporaries.
CHECK_CHUNK_ROWS = 8192
# Rows whose norm is this close to 1 count as already L2-normalised (float32 rounding of a
# normalised 1024-d vector is ~1e-7).
NORM_TOLERANCE = 1e-4
_INT64_MAX = np.iinfo(np.int64).max


def prepare_vectors(
    vectors: np.ndarray, what: str = "vectors", dim: int | None = None
) -> np.ndarray:
    """`vectors` as a C-contiguous (n, dim) float32 array with L2-normalised rows.

    The input is returned unchanged when it already is one (no copy of a large matrix).
    Raises InputError for a non-numeric, non-2-D or empty array, a NaN/Inf or all-zero row;
    ModelMismatchError when `dim` is given and the columns differ.
    """
    array = np.asarray(vectors)
    if array.dtype == bool or array.dtype.kind not in "fiu":
        raise InputError(f"{what} must be numeric; got dtype {array.dtype}")
    if array.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (n, dim); got shape {array.shape}")
    n_rows, n_cols = array.shape
    if n_rows == 0:
        raise InputError(f"{what} is empty: there are no vectors")
    if n_cols == 0:
        raise InputError(f"{what} have 0 columns")
    if dim is not None and n_cols != dim:
        raise ModelMismatchError(
            f"{what} have dimension {n_cols} but the index holds {dim}-d vectors"
        )
    norms = _row_norms(array, what)
    zero_rows = np.flatnonzero(norms == 0)
    if zero_rows.size:
        raise InputError(f"{what} row {zero_rows[0]} is all zeros: it has no direction to compare")
    already_unit = bool(np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE))
    if already_unit and array.dtype == np.float32 and array.flags.c_contiguous:
        return array
    normalised = np.empty((n_rows, n_cols), dtype=np.float32)
    for start in range(0, n_rows, CHECK_CHUNK_ROWS):
        stop = start + CHECK_CHUNK_ROWS
        chunk = array[start:stop].astype(np.float64, copy=False)
        normalised[start:stop] = chunk / norms[start:stop, None]
    return normalised


def _row_norms(array: np.ndarray, what: str) -> np.ndarray:
    """(n,) float64 Euclidean row norms; raises InputError naming the first non-finite row."""
    norms = np.empty(array.shape[0], dtype=np.float64)
    for start in range(0, array.shape[0], CHECK_CHUNK_ROWS):
        chunk = array[start : start + CHECK_CHUNK_ROWS].astype(np.float64, copy=False)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise InputError(f"{what} row {row} contains NaN or Inf")
        norms[start : start + chunk.shape[0]] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    return norms


def prepare_ids(ids: np.ndarray, n_rows: int, what: str = "ids") -> np.ndarray:
    """`ids` as a (n_rows,) int64 array of distinct non-negative ids (-1 is the empty slot)."""
    array = _as_int64(ids, what)
    if array.shape[0] != n_rows:
        raise InputError(f"{what} has {array.shape[0]} entries but there are {n_rows} vectors")
    negative = np.flatnonzero(array < 0)
    if negative.size:
        row = int(negative[0])
        raise InputError(
            f"{what} row {row} is {array[row]}: ids must be >= 0 (-1 marks an empty result slot)"
        )
    order = np.argsort(array, kind="stable")
    repeats = np.flatnonzero(array[order][1:] == array[order][:-1])
    if repeats.size:
        first, second = order[repeats[0]], order[repeats[0] + 1]
        raise InputError(f"{what} contain duplicate id {array[first]} (rows {first} and {second})")
    return array


def prepare_id_set(ids: np.ndarray, what: str) -> np.ndarray:
    """Sorted distinct int64 ids of a filter argument (may be empty)."""
    return np.unique(_as_int64(ids, what))


def _as_int64(ids: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise InputError(f"{what} must be a 1-D array of ids; got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype == bool or array.dtype.kind not in "iu":
        raise InputError(f"{what} must be integers; got dtype {array.dtype}")
    if array.dtype.kind == "u" and int(array.max()) > _INT64_MAX:
        raise InputError(f"{what} contain {int(array.max())}, larger than the int64 maximum")
    return array.astype(np.int64, copy=False)


def prepare_k(k: int) -> int:
    """`k` as a positive Python int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer; got {k!r}")
    return int(k)
