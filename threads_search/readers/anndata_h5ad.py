"""AnnData `.h5ad` expression files, read with h5py (the anndata package is not needed).

The on-disk layout (root attrs encoding-type 'anndata', encoding-version '0.1.0'):
- `obs` / `var`: dataframe groups; attribute `_index` names the index dataset (sample ids,
  gene names), `column-order` the columns. A column is a 1-D dataset (numbers, booleans,
  strings) or a group: 'categorical' (`codes`, `categories`; code -1 is missing) or
  'nullable-integer' / 'nullable-boolean' / 'nullable-string-array' (`values`, `mask`).
- `X` and `layers/<name>`: (n_obs, n_vars) matrices, each a 2-D dataset or a group with
  encoding-type 'csr_matrix' / 'csc_matrix', attribute `shape` and datasets `data`,
  `indices`, `indptr`.

Every declared shape is checked against obs / var and against the bytes the file stores
before anything of that size is read or allocated. The `obs` columns come back as per-sample
metadata (`ProfileMatrix.sample_metadata`), used by ingest like a `--metadata` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.readers.h5_claims import check_storage_claim
from threads_search.readers.metadata_csv import KEY_COLUMNS, RESERVED_COLUMNS
from threads_search.readers.profiles import MAX_COLUMNS, ProfileMatrix, check_orientation, refuse_duplicates

# samples x genes values densified at most (4 GiB as float32): bulk cohorts, not single-cell atlases.
MAX_DENSE_VALUES = 1 << 30
SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")
_NULLABLE_ENCODINGS = ("nullable-integer", "nullable-boolean", "nullable-string-array")
# obs columns that would name the item a second time; `patient_id` is kept (it pairs samples with slides).
_ID_COLUMNS = tuple(c for c in KEY_COLUMNS if c != "patient_id")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encoding(node) -> str:
    return _text(node.attrs.get("encoding-type", ""))


def _strings(path: Path, dataset, name: str) -> list[str]:
    check_storage_claim(path, dataset, name)
    return [_text(v) for v in dataset[()]]


def _index(path: Path, handle, group_name: str) -> list[str]:
    import h5py

    if group_name not in handle:
        raise InputError(f"{path}: no '{group_name}' group (not an AnnData file)")
    group = handle[group_name]
    if not isinstance(group, h5py.Group):
        raise InputError(f"{path}: '{group_name}' is a table dataset (anndata < 0.7 layout); save it again with "
                         f"a current anndata")
    name = _text(group.attrs.get("_index", "_index"))
    if name not in group:
        raise InputError(f"{path}: '{group_name}' has no index dataset '{name}'")
    return _strings(path, group[name], f"{group_name}/{name}")


def _layer_names(handle) -> list[str]:
    return sorted(handle["layers"].keys()) if "layers" in handle else []


def _matrix_node(path: Path, handle, layer: str | None):
    """The node holding the matrix to read: `layers/<layer>`, else `X` (one-line errors naming the layers)."""
    names = _layer_names(handle)
    available = f"layers: {', '.join(names)}" if names else "it has no layers"
    if layer is not None:
        if layer not in names:
            raise InputError(f"{path}: no layer '{layer}' ({available})")
        return f"layers/{layer}", handle["layers"][layer]
    if "X" not in handle:
        hint = "; pick one with --layer" if names else ""
        raise InputError(f"{path}: no X matrix ({available}){hint}")
    return "X", handle["X"]


def _check_dense_size(path: Path, name: str, shape: tuple[int, int]) -> None:
    if shape[0] * shape[1] > MAX_DENSE_VALUES:
        raise InputError(f"{path}: {name} is {shape[0]:,} x {shape[1]:,} values; at most {MAX_DENSE_VALUES:,} "
                         f"(samples x genes) are read")


def _check_shape(path: Path, name: str, shape: tuple, expected: tuple[int, int]) -> None:
    if tuple(shape) != expected:
        raise InputError(f"{path}: {name} has shape {tuple(shape)} but obs has {expected[0]} samples and var "
                         f"{expected[1]} genes")


def _read_dense(path: Path, name: str, dataset, expected: tuple[int, int]) -> np.ndarray:
    _check_shape(path, name, tuple(int(s) for s in dataset.shape), expected)
    if dataset.dtype.kind not in "fiub":
        raise InputError(f"{path}: {name} has dtype {dataset.dtype}; expected numbers")
    check_storage_claim(path, dataset, name)
    _check_dense_size(path, name, expected)
    values = np.empty(expected, dtype=np.float32)
    if values.size:
        dataset.read_direct(values)
    return values


def _sparse_part(path: Path, group, name: str, part: str, length: int | None = None):
    if part not in group:
        raise InputError(f"{path}: {name} is sparse but has no '{part}' dataset")
    dataset = group[part]
    if dataset.ndim != 1 or (length is not None and dataset.shape[0] != length):
        expected = f"({length},)" if length is not None else "1-D"
        raise InputError(f"{path}: {name}/{part} has shape {dataset.shape}; expected {expected}")
    check_storage_claim(path, dataset, f"{name}/{part}")
    return dataset


def _read_sparse(path: Path, name: str, group, expected: tuple[int, int]) -> np.ndarray:
    """A CSR / CSC group as a dense (n_obs, n_vars) float32 array, its index arrays checked first."""
    from scipy import sparse

    encoding = _encoding(group)
    if encoding not in SPARSE_ENCODINGS:
        raise InputError(f"{path}: {name} is a group of encoding '{encoding or 'none'}'; expected a 2-D dataset "
                         f"or {' / '.join(SPARSE_ENCODINGS)}")
    if "shape" not in group.attrs:
        raise InputError(f"{path}: {name} ({encoding}) has no 'shape' attribute")
    _check_shape(path, name, tuple(int(v) for v in group.attrs["shape"]), expected)
    _check_dense_size(path, name, expected)
    major, minor = expected if encoding == "csr_matrix" else expected[::-1]
    indptr = _sparse_part(path, group, name, "indptr", major + 1)[()].astype(np.int64)
    nnz = int(indptr[-1])
    if indptr[0] != 0 or (np.diff(indptr) < 0).any() or nnz > major * minor:
        raise InputError(f"{path}: {name}/indptr does not start at 0 and rise to at most {major * minor} stored values")
    indices = _sparse_part(path, group, name, "indices", nnz)[()].astype(np.int64)
    if nnz and (indices.min() < 0 or indices.max() >= minor):
        raise InputError(f"{path}: {name}/indices run outside 0..{minor - 1}")
    data = np.empty(nnz, dtype=np.float32)
    dataset = _sparse_part(path, group, name, "data", nnz)
    if dataset.dtype.kind not in "fiub":
        raise InputError(f"{path}: {name}/data has dtype {dataset.dtype}; expected numbers")
    if nnz:
        dataset.read_direct(data)
    build = sparse.csr_matrix if encoding == "csr_matrix" else sparse.csc_matrix
    return build((data, indices, indptr), shape=expected).toarray()


def _read_matrix(path: Path, name: str, node, expected: tuple[int, int]) -> np.ndarray:
    import h5py

    if isinstance(node, h5py.Dataset):
        return _read_dense(path, name, node, expected)
    return _read_sparse(path, name, node, expected)


def _numbers_with_nulls(values: np.ndarray, missing: np.ndarray | None = None):
    """A pyarrow array of `values` with `missing` (bool mask) and float NaN as nulls."""
    import pyarrow as pa

    if values.dtype.kind in "SOU":
        values = np.array([_text(v) for v in values], dtype=object)
    mask = np.zeros(values.shape, dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    if values.dtype.kind == "f":
        mask = mask | np.isnan(values)
    return pa.array(values, mask=mask)


def _categorical(path: Path, group, name: str, n_obs: int):
    for part in ("codes", "categories"):
        if part not in group:
            raise InputError(f"{path}: obs column '{name}' is categorical but has no '{part}'")
    codes_set, categories_set = group["codes"], group["categories"]
    if codes_set.shape != (n_obs,):
        raise InputError(f"{path}: obs column '{name}' has {codes_set.shape} codes for {n_obs} samples")
    check_storage_claim(path, codes_set, f"obs/{name}/codes")
    check_storage_claim(path, categories_set, f"obs/{name}/categories")
    codes, categories = codes_set[()].astype(np.int64), categories_set[()]
    if ((codes < -1) | (codes >= len(categories))).any():
        raise InputError(f"{path}: obs column '{name}' has codes outside -1..{len(categories) - 1}")
    if len(categories) == 0:  # every code is -1: a column of missing values
        import pyarrow as pa

        return pa.nulls(n_obs, pa.string())
    return _numbers_with_nulls(categories[np.maximum(codes, 0)], codes < 0)


def _obs_column(path: Path, node, name: str, n_obs: int):
    """One obs column as a pyarrow array, or None when it is of a kind not read (with the reason)."""
    import h5py

    if isinstance(node, h5py.Dataset):
        if node.shape != (n_obs,):
            return None, f"shape {node.shape}"
        check_storage_claim(path, node, f"obs/{name}")
        return _numbers_with_nulls(node[()]), None
    encoding = _encoding(node)
    if encoding == "categorical":
        return _categorical(path, node, name, n_obs), None
    if encoding in _NULLABLE_ENCODINGS and "values" in node and "mask" in node and node["values"].shape == (n_obs,):
        check_storage_claim(path, node["values"], f"obs/{name}/values")
        return _numbers_with_nulls(node["values"][()], node["mask"][()]), None
    return None, f"encoding '{encoding or 'none'}'"


def _obs_metadata(path: Path, handle, samples: list[str]):
    """(pyarrow Table keyed by 'sample_id' or None, notes on obs columns left out)."""
    import pyarrow as pa

    group = handle["obs"]
    index_name = _text(group.attrs.get("_index", "_index"))
    order = [_text(c) for c in group.attrs.get("column-order", [])] or \
            [c for c in group.keys() if c != index_name and not c.startswith("__")]
    columns, notes = {}, []
    for name in order:
        if name not in group:
            continue
        if name in RESERVED_COLUMNS or name in _ID_COLUMNS:
            reason = "reserved by the atlas" if name in RESERVED_COLUMNS else "the sample id is obs's index"
            notes.append(f"{path}: obs column '{name}' is not read as metadata ({reason})")
            continue
        array, reason = _obs_column(path, group[name], name, len(samples))
        if array is None:
            notes.append(f"{path}: obs column '{name}' is not read as metadata ({reason})")
        else:
            columns[name] = array
    if not columns:
        return None, notes
    return pa.table({"sample_id": pa.array(samples, pa.string()), **columns}), notes


def read_h5ad(path: Path, layer: str | None = None) -> ProfileMatrix:
    """Samples x genes from `X` (or `layers/<layer>`), dense or sparse, plus obs as sample metadata.

    Raises InputError with one line naming the file: no such layer or no X (listing the layers),
    shapes that disagree with obs / var, declared sizes the file does not hold, NaN / Inf values.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: not a readable AnnData file ({str(error).splitlines()[0]})") from None
    try:
        with handle:
            samples, genes = _index(path, handle, "obs"), _index(path, handle, "var")
            if len(genes) > MAX_COLUMNS:
                raise InputError(f"{path}: var has {len(genes):,} genes; at most {MAX_COLUMNS:,} are read")
            refuse_duplicates(path, genes, "gene name")
            refuse_duplicates(path, samples, "sample id")
            name, node = _matrix_node(path, handle, layer)
            matrix = _read_matrix(path, name, node, (len(samples), len(genes)))
            metadata, notes = _obs_metadata(path, handle, samples)
    except OSError as error:  # h5py's error for a damaged chunk or a file cut short
        raise InputError(f"{path}: truncated or corrupt HDF5 ({str(error).splitlines()[0]})") from None
    if matrix.size == 0:
        raise InputError(f"{path}: {name} is empty ({matrix.shape[0]} samples x {matrix.shape[1]} genes)")
    if not np.isfinite(matrix).all():
        row, column = (int(v) for v in np.argwhere(~np.isfinite(matrix))[0])
        raise InputError(f"{path}: {name}: sample {samples[row]}, gene {genes[column]}: NaN or infinite value")
    check_orientation(path, samples, genes, False)
    return ProfileMatrix(path=path, sample_ids=samples, genes=genes, values=matrix, sample_metadata=metadata,
                         notes=notes)
