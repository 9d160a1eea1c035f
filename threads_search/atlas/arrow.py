"""Arrow columns as numpy arrays without pyarrow's pandas bridge.

`Array.to_numpy()` imports pandas (a quarter of a second) on first use; reading the value buffer
of a null-free primitive column is what it does in the end, so the atlas does that directly.
"""

from __future__ import annotations

import numpy as np


def _values(array, dtype) -> np.ndarray:
    if array.null_count:
        raise ValueError("column holds nulls")
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * np.dtype(dtype).itemsize)


def int64_column(table, name: str) -> np.ndarray:
    """(n,) int64 copy of a null-free integer column of a pyarrow Table."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    if column.type != pa.int64():
        column = column.cast(pa.int64())
    return _values(column, np.int64).copy()


def float32_matrix(column) -> np.ndarray:
    """(n, width) float32 copy of a fixed-size-list column (chunked or not) of float32."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    values = array.flatten()
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    return _values(values, np.float32).reshape(len(array), width).copy()
