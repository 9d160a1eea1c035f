"""What an HDF5 dataset declares against what its file holds, checked before reading it.

A shape is only a header field: a 6 KB file can claim 10^6 x 10^6 values, and reading it would
allocate terabytes. Readers call `check_storage_claim` on a dataset before they read or
allocate anything of its size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from threads_search.errors import InputError

# Compressed HDF5 chunks may hold this many times their stored bytes, no more (float features compress ~1.1-3x).
MAX_COMPRESSION = 64


def check_storage_claim(path: Path, dataset, name: str) -> None:
    """Refuse `dataset` (called `name` in the message) when its declared bytes exceed what
    the file stores for it by more than MAX_COMPRESSION."""
    shape = tuple(int(s) for s in dataset.shape)
    declared = int(np.prod(shape, dtype=np.int64)) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if declared and stored * MAX_COMPRESSION < declared:
        raise InputError(f"{path}: dataset '{name}' declares shape {shape} ({declared:,} bytes) but the file stores "
                         f"{stored:,} bytes of it; truncated, or its header claims more than it holds")
