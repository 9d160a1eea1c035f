"""Precomputed slide embeddings users already have: one (D,) vector per slide.

- TRIDENT `slide_features_<encoder>/<slide_id>.h5` and Patho-Bench pooled `<slide_id>.h5`:
  dataset `features` of shape (D,) or (1, D); slide id = file stem.
- `.npy` (n, D) float array (read with `allow_pickle=False`) + an ids file, one id per line.
- Parquet: an id column (`slide_id`, else `id`, else the one text column) and either one list
  column of length D or D float columns.
- `.pkl` / `.pickle` (TITAN / TANGLE dumps): refused, never unpickled; the message says how to
  convert them with trusted code.

Every file is checked (shape, dtype, NaN/Inf, zero vectors, duplicate ids) before anything is
written; a defect is one InputError naming the file and, where it has one, the row or column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.readers.patch_features import MAX_FEATURE_DIM, fingerprint_file
from threads_search.readers.paths import Canonical, FileKind, expand_paths

EMBEDDING_SUFFIXES = (".h5", ".hdf5", ".npy", ".parquet", ".pq")
PICKLE_SUFFIXES = (".pkl", ".pickle")
MAX_ROWS = 10_000_000
_ID_COLUMNS = ("slide_id", "id")


@dataclass
class SlideEmbeddingSet:
    """Slide ids, their `(n, dim) float32` vectors and where each came from."""

    slide_ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # one (rows, dim) block per file
    origins: list[tuple[Path, int | None]] = field(default_factory=list)  # (file, row or None) per id
    files: list[dict] = field(default_factory=list)  # provenance: name, fingerprint, rows

    @property
    def dim(self) -> int:
        return int(self.vectors[0].shape[1]) if self.vectors else 0

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.vectors).astype(np.float32) if self.vectors else np.zeros((0, 0), np.float32)

    def where(self, position: int) -> str:
        path, row = self.origins[position]
        return f"{path}" + (f" row {row}" if row is not None else "")


def _pickle_refusal(path: Path) -> InputError:
    return InputError(f"{path}: pickle files are never unpickled here (they can run code); convert it with code you "
                      f"trust, e.g. np.save('slides.npy', np.stack(d['embeddings'])) and the ids one per line "
                      f"(d['filenames'] stems) for --ids, then ingest slides.npy --ids ids.txt")


EMBEDDING_FILES = FileKind("slide-embedding file", EMBEDDING_SUFFIXES, trident_prefix="slide_features_",
                           contents="slide embeddings", refused=PICKLE_SUFFIXES, refusal=_pickle_refusal,
                           skip_other_matches=False, folder_alone_names_encoder=True)


def expand_embedding_paths(arguments: list[str | os.PathLike], encoder: str | None = None,
                           canonical: Canonical | None = None) -> list[Path]:
    """Files, folders (their embedding files, sorted), globs and TRIDENT job folders (their
    `slide_features_<encoder>` folder, the one `encoder` names where there are several) ->
    embedding files; pickles refused."""
    return expand_paths(arguments, EMBEDDING_FILES, encoder, canonical)


def _checked(path: Path, array: np.ndarray, first_row: int | None = 0) -> np.ndarray:
    """`array` as `(rows, dim) float32` after the checks every source shares."""
    if array.dtype.kind not in "fiu":
        raise InputError(f"{path}: embeddings have dtype {array.dtype}; expected numbers")
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[1] > MAX_FEATURE_DIM:
        raise InputError(f"{path}: embeddings have shape {tuple(array.shape)}; expected (n_slides, dim) with "
                         f"0 < dim <= {MAX_FEATURE_DIM}")
    vectors = np.asarray(array, dtype=np.float32)
    bad = ~np.isfinite(vectors).all(axis=1)
    zero = ~bad & ~vectors.any(axis=1)
    for mask, what in ((bad, "holds NaN or Inf"), (zero, "is all zeros (no direction to compare)")):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            where = f" row {row + first_row}" if first_row is not None else ""
            raise InputError(f"{path}:{where} embedding {what}")
    return vectors


INGEST_SLIDES_HINT = "patch features go in with `threads-search ingest slides`"


def _read_h5(path: Path, bag_hint: str = INGEST_SLIDES_HINT) -> np.ndarray:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: not a readable HDF5 file ({str(error).splitlines()[0]})") from None
    with handle:
        if "features" not in handle or not hasattr(handle["features"], "shape"):
            raise InputError(f"{path}: no dataset 'features' (keys: {', '.join(handle.keys()) or 'none'})")
        dataset = handle["features"]
        shape = tuple(int(s) for s in dataset.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
            hint = f"; {bag_hint}" if len(shape) == 2 else ""
            raise InputError(f"{path}: dataset 'features' has shape {shape}; a slide embedding is (dim,) or (1, dim){hint}")
        if shape[-1] > MAX_FEATURE_DIM:
            raise InputError(f"{path}: dataset 'features' declares {shape[-1]} dimensions; at most {MAX_FEATURE_DIM}")
        try:
            values = np.asarray(dataset[()])
        except OSError as error:
            raise InputError(f"{path}: truncated or corrupt HDF5 ({str(error).splitlines()[0]})") from None
    return _checked(path, values.reshape(1, -1), None)


def read_slide_embedding_file(path: Path, bag_hint: str = INGEST_SLIDES_HINT) -> np.ndarray:
    """One TRIDENT / Patho-Bench slide-embedding `.h5` as a `(dim,) float32` vector (checked);
    `bag_hint` ends the refusal of a file of patch features."""
    if path.suffix not in (".h5", ".hdf5") or not path.is_file():
        raise InputError(f"{path}: expected one slide's embedding as an .h5 file (`features` (dim,) or (1, dim))")
    return _read_h5(path, bag_hint)[0]


def _read_ids(ids_file: Path) -> list[str]:
    try:
        lines = ids_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{ids_file}: unreadable ids file ({error})") from None
    ids = [line.strip() for line in lines]
    while ids and not ids[-1]:
        ids.pop()
    for row, slide_id in enumerate(ids):
        if not slide_id:
            raise InputError(f"{ids_file}: line {row + 1} is empty; one slide id per line")
    return ids


def _read_npy(path: Path, ids_file: Path | None) -> tuple[list[str], np.ndarray]:
    if ids_file is None:
        raise InputError(f"{path}: a .npy file holds no slide ids; give them with --ids FILE (one id per line, in row order)")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as error:
        raise InputError(f"{path}: not a plain numeric .npy array ({str(error).splitlines()[0]}); object arrays "
                         f"need pickle and are refused") from None
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: unreadable .npy file ({str(error).splitlines()[0]})") from None
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim == 2 and array.shape[0] > MAX_ROWS:
        raise InputError(f"{path}: {array.shape[0]} rows; at most {MAX_ROWS} are read at once")
    vectors = _checked(path, np.asarray(array))
    ids = _read_ids(ids_file)
    if len(ids) != len(vectors):
        raise InputError(f"{ids_file}: {len(ids)} ids for the {len(vectors)} rows of {path.name}; one id per row")
    return ids, vectors


def _read_parquet(path: Path) -> tuple[list[str], np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise InputError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0]})") from None
    names = table.column_names
    text = [n for n in names if pa.types.is_string(table.schema.field(n).type) or pa.types.is_large_string(table.schema.field(n).type)]
    id_column = next((n for n in _ID_COLUMNS if n in names), None) or (text[0] if len(text) == 1 else None)
    if id_column is None:
        raise InputError(f"{path}: no id column (name one 'slide_id'; text columns: {', '.join(text) or 'none'})")
    ids = table.column(id_column).to_pylist()
    for row, slide_id in enumerate(ids):
        if slide_id is None or not str(slide_id).strip():
            raise InputError(f"{path}: row {row} has no {id_column}")
    rest = [n for n in names if n != id_column]
    lists = [n for n in rest if pa.types.is_list(table.schema.field(n).type)
             or pa.types.is_fixed_size_list(table.schema.field(n).type) or pa.types.is_large_list(table.schema.field(n).type)]
    if len(lists) == 1 and len(rest) == 1:
        values = table.column(lists[0]).to_pylist()
        lengths = {len(v) if v is not None else 0 for v in values}
        if len(lengths) != 1:
            row = next(i for i, v in enumerate(values) if (len(v) if v is not None else 0) != len(values[0] or []))
            raise InputError(f"{path}: row {row} of column '{lists[0]}' has another length than row 0")
        array = np.array(values, dtype=np.float64)
    else:
        for name in rest:
            kind = table.schema.field(name).type
            if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
                raise InputError(f"{path}: column '{name}' is {kind}; expected one list column or numeric columns only")
            if table.column(name).null_count:
                raise InputError(f"{path}: column '{name}' has empty values")
        array = np.stack([table.column(n).to_numpy() for n in rest], axis=1) if rest else np.zeros((len(ids), 0))
    return [str(i).strip() for i in ids], _checked(path, array)


def read_slide_embeddings(paths: list[Path], ids_file: Path | None = None) -> SlideEmbeddingSet:
    """Read and check every file; ids unique across files, one dimension for all."""
    npy = [p for p in paths if p.suffix == ".npy"]
    if len(npy) > 1:
        raise InputError(f"{npy[1]}: one .npy file per command (its --ids name its rows); ingest {npy[0].name} first")
    if ids_file is not None and not npy:
        raise InputError(f"--ids {ids_file}: only for a .npy file")
    result = SlideEmbeddingSet()
    first_of: dict[str, int] = {}
    for path in paths:
        if path.suffix in (".h5", ".hdf5"):
            ids, vectors, rows = [path.stem], _read_h5(path), [None]
        elif path.suffix == ".npy":
            ids, vectors = _read_npy(path, ids_file)
            rows = list(range(len(ids)))
        else:
            ids, vectors = _read_parquet(path)
            rows = list(range(len(ids)))
        if result.vectors and vectors.shape[1] != result.dim:
            raise InputError(f"{path}: {vectors.shape[1]}-d embeddings, but {result.origins[0][0]} has {result.dim}-d; "
                             f"one --encoder holds one dimension")
        for slide_id, row in zip(ids, rows):
            if slide_id in first_of:
                raise InputError(f"{path}{f' row {row}' if row is not None else ''}: duplicate slide id '{slide_id}' "
                                 f"(also {result.where(first_of[slide_id])})")
            first_of[slide_id] = len(result.slide_ids)
            result.slide_ids.append(slide_id)
            result.origins.append((path, row))
        result.vectors.append(vectors)
        result.files.append({"file": path.name, "fingerprint": fingerprint_file(path), "rows": len(ids)})
    return result
