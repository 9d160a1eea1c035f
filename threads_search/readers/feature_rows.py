"""Single rows of patch-feature files, read directly: the exact vectors a patch index re-ranks with.

A patch index keeps compressed codes in memory; its top candidates are re-scored with the
exact features, read from the users' own files. h5py takes ~45 us per row read; the bytes of
a row of an unfiltered dataset sit at a fixed offset, so one `os.pread` reads it in ~5 us.
`feature_layout` records where the rows are once (at index build), `FeatureRowReader` reads
them at query time:

- "contiguous": an HDF5 dataset stored in one block (what h5py writes without `chunks`): row
  r is at `offset + r * row_bytes`;
- "chunked": chunks that span every column and carry no filter (TRIDENT/CLAM write
  resizable, chunked, uncompressed datasets): the chunk offsets are listed, a row is inside
  one chunk;
- "h5py": anything else (compressed, shuffled, column-split chunks): read through h5py;
- "torch": `.pt` tensors, loaded whole (a few at a time are cached).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.readers.patch_features import fingerprint_file, read_bag

LAYOUT_KINDS = ("contiguous", "chunked", "h5py", "torch")
# Open files kept by one reader; candidates of a query usually come from a few dozen slides.
OPEN_FILES = 256
# Whole bags kept for the layouts that cannot read a row alone ("h5py", "torch").
CACHED_BAGS = 4


@dataclass(frozen=True)
class FeatureLayout:
    """Where the rows of one file's `features` dataset are.

    kind: one of LAYOUT_KINDS. dtype: numpy dtype string of the stored values (byte order
    included). offset: byte offset of row 0 ("contiguous"). chunk_rows: rows per chunk and
    chunk_offsets: byte offset of each chunk in row order ("chunked"). file_size and
    file_mtime_ns identify the file version the offsets belong to; fingerprint as ingest
    records it (size + first and last 256 KiB).
    """

    path: Path
    kind: str
    n_rows: int
    dim: int
    dtype: str
    file_size: int
    file_mtime_ns: int
    fingerprint: str
    offset: int = -1
    chunk_rows: int = 0
    chunk_offsets: tuple[int, ...] = field(default_factory=tuple)

    @property
    def row_bytes(self) -> int:
        return self.dim * np.dtype(self.dtype).itemsize


def feature_layout(path: str | os.PathLike) -> FeatureLayout:
    """The row layout of one feature file (`.h5` or `.pt`); raises InputError if unreadable."""
    path = Path(path)
    stat = path.stat()
    identity = {"file_size": stat.st_size, "file_mtime_ns": stat.st_mtime_ns, "fingerprint": fingerprint_file(path)}
    if path.suffix == ".pt":
        bag = read_bag(path)
        return FeatureLayout(path, "torch", bag.shape[0], bag.shape[1], "float32", **identity)
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            features = handle["features"]
            shape = features.shape[1:] if features.ndim == 3 and features.shape[0] == 1 else features.shape
            n_rows, dim = int(shape[0]), int(shape[1])
            dtype = features.dtype.str
            base = {"path": path, "n_rows": n_rows, "dim": dim, "dtype": dtype, **identity}
            plist = features.id.get_create_plist()
            unfiltered = plist.get_nfilters() == 0
            if features.chunks is None:
                offset = features.id.get_offset()
                if offset is not None and unfiltered:
                    return FeatureLayout(kind="contiguous", offset=int(offset), **base)
                return FeatureLayout(kind="h5py", **base)
            chunk_shape = features.chunks[-2:]
            if not unfiltered or chunk_shape[1] != dim:
                return FeatureLayout(kind="h5py", **base)
            return FeatureLayout(kind="chunked", chunk_rows=int(chunk_shape[0]),
                                 chunk_offsets=_chunk_offsets(features, int(chunk_shape[0]), n_rows), **base)
    except (OSError, KeyError) as error:
        raise InputError(f"{path}: cannot read features ({str(error).splitlines()[0]})") from None


def _chunk_offsets(features, chunk_rows: int, n_rows: int) -> tuple[int, ...]:
    """Byte offset of every row chunk, in row order (-1 for a chunk never written)."""
    offsets = [-1] * (-(-n_rows // chunk_rows))
    row_axis = features.ndim - 2
    for index in range(features.id.get_num_chunks()):
        info = features.id.get_chunk_info(index)
        offsets[info.chunk_offset[row_axis] // chunk_rows] = int(info.byte_offset)
    return tuple(offsets)


class StaleFeatureFile(Exception):
    """A feature file differs from the version its layout was recorded from."""


class FeatureRowReader:
    """Reads rows of many feature files by their layouts; keeps up to OPEN_FILES files open.

    A file is checked once, when first opened: if its size or mtime differ from the layout's
    and its fingerprint too, it changed since the layout was recorded and `read` raises
    StaleFeatureFile for it (the caller drops those rows). Use as a context manager, or call
    `close`.
    """

    def __init__(self) -> None:
        self._files: OrderedDict[Path, int] = OrderedDict()
        self._checked: dict[Path, bool] = {}
        self._bags: OrderedDict[Path, np.ndarray] = OrderedDict()

    def read(self, layout: FeatureLayout, rows: np.ndarray) -> np.ndarray:
        """`(len(rows), dim) float32` rows of one file, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= layout.n_rows):
            raise InputError(f"{layout.path}: row {int(rows.max())} is outside its {layout.n_rows} patches")
        self._check(layout)
        if layout.kind in ("h5py", "torch"):
            return self._bag(layout)[rows]
        descriptor = self._open(layout.path)
        out = np.empty((rows.size, layout.dim), dtype=np.float32)
        row_bytes = layout.row_bytes
        dtype = np.dtype(layout.dtype)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        # One read per run of consecutive rows (a region's patches are often neighbours); a run
        # never crosses a chunk boundary.
        breaks = np.diff(sorted_rows) != 1
        if layout.kind == "chunked":
            breaks |= np.diff(sorted_rows // layout.chunk_rows) != 0
        starts = np.concatenate([[0], np.flatnonzero(breaks) + 1]) if rows.size else np.empty(0, np.int64)
        stops = np.append(starts[1:], rows.size)
        firsts = sorted_rows[starts]
        if layout.kind == "contiguous":
            offsets = layout.offset + firsts * row_bytes
        else:
            chunk_offsets = np.asarray(layout.chunk_offsets, dtype=np.int64)[firsts // layout.chunk_rows]
            if (chunk_offsets < 0).any():
                raise StaleFeatureFile(f"{layout.path}: a chunk of the requested rows was never written")
            offsets = chunk_offsets + (firsts % layout.chunk_rows) * row_bytes
        sizes = (stops - starts) * row_bytes
        payload = b"".join([os.pread(descriptor, size, offset)
                            for size, offset in zip(sizes.tolist(), offsets.tolist())])
        if len(payload) != int(sizes.sum()):
            raise StaleFeatureFile(f"{layout.path}: shorter than its recorded layout")
        out[order] = np.frombuffer(payload, dtype=dtype).reshape(rows.size, layout.dim)
        return out

    def _check(self, layout: FeatureLayout) -> None:
        known = self._checked.get(layout.path)
        if known is None:
            known = _unchanged(layout)
            self._checked[layout.path] = known
        if not known:
            raise StaleFeatureFile(f"{layout.path}: changed or vanished since the patch index was built")

    def _open(self, path: Path) -> int:
        descriptor = self._files.pop(path, None)
        if descriptor is None:
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise StaleFeatureFile(f"{path}: {error.strerror}") from None
            if len(self._files) >= OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        self._files[path] = descriptor
        return descriptor

    def _bag(self, layout: FeatureLayout) -> np.ndarray:
        bag = self._bags.pop(layout.path, None)
        if bag is None:
            bag = read_bag(layout.path)
            if len(self._bags) >= CACHED_BAGS:
                self._bags.popitem(last=False)
        self._bags[layout.path] = bag
        return bag

    def close(self) -> None:
        while self._files:
            os.close(self._files.popitem()[1])
        self._bags.clear()

    def __enter__(self) -> "FeatureRowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unchanged(layout: FeatureLayout) -> bool:
    try:
        stat = layout.path.stat()
    except OSError:
        return False
    if (stat.st_size, stat.st_mtime_ns) == (layout.file_size, layout.file_mtime_ns):
        return True
    return stat.st_size == layout.file_size and fingerprint_file(layout.path) == layout.fingerprint
