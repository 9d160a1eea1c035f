"""Patch-feature files users already have: TRIDENT `.h5`, CLAM `.h5`, and `.pt` tensors (SPEC §3).

`inspect_feature_file` validates a file without holding its features in memory (they are
streamed in chunks for the NaN/Inf check); `read_bag` loads one bag for encoding.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.readers.h5_claims import check_storage_claim
from threads_search.readers.paths import Canonical, FileKind, expand_paths

FEATURE_SUFFIXES = (".h5", ".hdf5", ".pt")
FEATURE_FILES = FileKind("feature file", FEATURE_SUFFIXES, trident_prefix="features_", contents="patch features")
# Bounds on what a feature file may declare, checked before anything is read.
MAX_PATCHES = 5_000_000
MAX_FEATURE_DIM = 65_536

_CHUNK_ROWS = 32768
_FINGERPRINT_BYTES = 1 << 18
# A float is NaN/Inf exactly when its magnitude bits reach the all-ones exponent: one integer
# max over the bits is ~40x faster than np.isfinite on float16, the dtype TRIDENT writes.
_MAGNITUDE_BITS = {2: (np.uint16, 0x7FFF, 0x7C00), 4: (np.uint32, 0x7FFFFFFF, 0x7F800000),
                   8: (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


class EmptyBagError(InputError):
    """A feature file of 0 patches (TRIDENT writes one for a slide where no tissue was found)."""


@dataclass(frozen=True)
class FeatureFileInfo:
    """What ingestion records about one feature file."""

    path: Path
    slide_id: str
    file_format: str  # trident | clam | pt
    n_patches: int
    feature_dim: int
    dtype: str
    file_size: int
    file_mtime_ns: int
    fingerprint: str
    patch_encoder: str | None = None
    patch_size_level0: int | None = None
    magnification: float | None = None
    attrs: dict = field(default_factory=dict)


def fingerprint_file(path: Path) -> str:
    """blake2b of the size and the first and last 256 KiB: cheap on 10k files, catches rewrites."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            handle.seek(max(size - _FINGERPRINT_BYTES, _FINGERPRINT_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()


def _plain(value):
    """HDF5 attribute values as JSON-friendly Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    return value


def _all_finite(chunk: np.ndarray) -> bool:
    if chunk.size and chunk.dtype.itemsize in _MAGNITUDE_BITS and chunk.flags.c_contiguous:
        unsigned, magnitude, infinity = _MAGNITUDE_BITS[chunk.dtype.itemsize]
        return bool((chunk.view(unsigned) & unsigned(magnitude)).max() < infinity)
    return bool(np.isfinite(chunk).all())


def _check_finite(path: Path, features, n_rows: int) -> None:
    for start in range(0, n_rows, _CHUNK_ROWS):
        chunk = np.ascontiguousarray(features[start:start + _CHUNK_ROWS])
        if not _all_finite(chunk):
            bad_row = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
            raise InputError(f"{path}: dataset 'features' row {bad_row} holds NaN or Inf")


def _validate_shape(path: Path, shape: tuple, dtype) -> tuple[int, int]:
    if len(shape) != 2:
        raise InputError(f"{path}: dataset 'features' has shape {tuple(shape)}; expected (n_patches, dim)")
    if np.dtype(dtype).kind != "f":
        raise InputError(f"{path}: dataset 'features' has dtype {dtype}; expected a float type")
    n_patches, dim = int(shape[0]), int(shape[1])
    if n_patches == 0:
        raise EmptyBagError(f"{path}: empty bag (0 patches)")
    if dim == 0:
        raise InputError(f"{path}: dataset 'features' has 0 columns")
    return n_patches, dim


def _refuse_slide_embedding(path: Path, shape: tuple, has_coords: bool) -> None:
    """A (D,) or coordinate-less (1, D) `features` is one slide's pooled embedding (TRIDENT
    `slide_features_*`, Patho-Bench), not a bag of patches: mixing it with bags would be wrong."""
    if len(shape) == 1 or (len(shape) == 2 and shape[0] == 1 and not has_coords):
        raise InputError(f"{path}: dataset 'features' has shape {tuple(shape)}, a slide embedding rather than patch "
                         f"features; use `threads-search ingest slide-embeddings ATLAS FILES --encoder NAME`")


def _check_size_claim(path: Path, dataset) -> None:
    """Refuse a dataset whose declared shape its file cannot hold (a 6 KB file claiming 10^6 patches)."""
    shape = tuple(int(s) for s in dataset.shape)
    if len(shape) >= 2 and (shape[-2] > MAX_PATCHES or shape[-1] > MAX_FEATURE_DIM):
        raise InputError(f"{path}: dataset 'features' declares shape {shape}; at most {MAX_PATCHES} patches of "
                         f"{MAX_FEATURE_DIM} dimensions are read")
    check_storage_claim(path, dataset, "features")


def _inspect_h5(path: Path) -> dict:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: not a readable HDF5 file ({str(error).splitlines()[0]})") from None
    with handle:
        if "features" not in handle:
            raise InputError(f"{path}: no dataset 'features' (keys: {', '.join(handle.keys()) or 'none'})")
        features = handle["features"]
        if not hasattr(features, "shape"):
            raise InputError(f"{path}: 'features' is a group, not a dataset")
        _check_size_claim(path, features)
        if features.ndim == 3 and features.shape[0] == 1:  # some CLAM forks store (1, N, D)
            features = features[0]
        _refuse_slide_embedding(path, features.shape, "coords" in handle)
        try:
            n_patches, dim = _validate_shape(path, features.shape, features.dtype)
            _check_finite(path, features, n_patches)
        except OSError as error:
            raise InputError(f"{path}: truncated or corrupt HDF5 ({str(error).splitlines()[0]})") from None
        attrs = {key: _plain(value) for key, value in handle.attrs.items()}
        for name in ("features", "coords"):
            if name in handle:
                attrs.update({key: _plain(value) for key, value in handle[name].attrs.items()})
        if "coords" in handle and handle["coords"].shape[0] != n_patches:
            raise InputError(f"{path}: 'coords' has {handle['coords'].shape[0]} rows but 'features' has {n_patches}")
        dtype = str(features.dtype)
    file_format = "trident" if "patch_size_level0" in attrs else "clam"
    return {"n_patches": n_patches, "dim": dim, "dtype": dtype, "attrs": attrs, "file_format": file_format}


def _numpy_allow_list() -> list:
    """What a pickled numeric numpy array needs (TRIDENT `saveas='pt'` saves one) and nothing
    more: the array reconstructor (numpy 2 and numpy 1 spellings), ndarray and float dtypes.
    Object arrays need further globals and stay refused."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    float_dtypes = [type(np.dtype(kind)) for kind in (np.float16, np.float32, np.float64)]
    return [multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype, *float_dtypes]


def _load_pt(path: Path):
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_allow_list()):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise InputError(f"{path}: holds objects other than tensors or numeric numpy arrays; not loaded "
                             f"(.pt files are read with torch's weights_only allow-list, never fully unpickled)") from None
        raise InputError(f"{path}: not a readable tensor file ({text.strip().splitlines()[0] if text.strip() else type(error).__name__})") from None
    if isinstance(payload, dict):
        if "features" not in payload:
            raise InputError(f"{path}: dict without a 'features' tensor (keys: {', '.join(map(str, payload))})")
        payload = payload["features"]
    if isinstance(payload, np.ndarray):  # TRIDENT saveas='pt'
        if payload.dtype.kind != "f":
            raise InputError(f"{path}: holds a numpy array of dtype {payload.dtype}, expected floats")
        return payload
    if not hasattr(payload, "numpy"):
        raise InputError(f"{path}: holds {type(payload).__name__}, expected a (n_patches, dim) tensor")
    return payload.detach().float().numpy() if payload.dtype.is_floating_point else payload.numpy()


def _inspect_pt(path: Path) -> dict:
    features = _load_pt(path)
    _refuse_slide_embedding(path, features.shape, False)
    n_patches, dim = _validate_shape(path, features.shape, features.dtype)
    _check_finite(path, features, n_patches)
    return {"n_patches": n_patches, "dim": dim, "dtype": str(features.dtype), "attrs": {}, "file_format": "pt"}


def inspect_feature_file(path: str | os.PathLike) -> FeatureFileInfo:
    """Validate one feature file and describe it; raises InputError naming the file on any defect."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    stat = path.stat()
    details = _inspect_pt(path) if path.suffix == ".pt" else _inspect_h5(path)
    attrs = details["attrs"]
    patch_size_level0 = attrs.get("patch_size_level0")
    if patch_size_level0 is None and "patch_size" in attrs and "patch_level" in attrs:
        patch_size_level0 = None  # CLAM: level downsample unknown without the slide
    magnification = attrs.get("target_magnification") or attrs.get("magnification")
    encoder = attrs.get("encoder") or attrs.get("patch_encoder")
    return FeatureFileInfo(
        path=path.resolve(),
        slide_id=str(attrs.get("slide_id") or path.stem),
        file_format=details["file_format"],
        n_patches=details["n_patches"],
        feature_dim=details["dim"],
        dtype=details["dtype"],
        file_size=stat.st_size,
        file_mtime_ns=stat.st_mtime_ns,
        fingerprint=fingerprint_file(path),
        patch_encoder=str(encoder) if encoder else None,
        patch_size_level0=int(patch_size_level0) if patch_size_level0 is not None else None,
        magnification=float(magnification) if magnification is not None else None,
        attrs=json.loads(json.dumps(attrs, default=str)),
    )


def read_bag(path: str | os.PathLike) -> np.ndarray:
    """All patch features of one file as `(n_patches, dim) float32`."""
    path = Path(path)
    if path.suffix == ".pt":
        return np.ascontiguousarray(_load_pt(path), dtype=np.float32)
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            features = handle["features"]
            array = features[0] if features.ndim == 3 and features.shape[0] == 1 else features[:]
    except (OSError, KeyError) as error:
        raise InputError(f"{path}: cannot read features ({str(error).splitlines()[0]})") from None
    return np.ascontiguousarray(array, dtype=np.float32)


def read_coords(path: str | os.PathLike) -> np.ndarray | None:
    """Level-0 (x, y) patch coordinates `(n_patches, 2) int64`, or None for files without them."""
    path = Path(path)
    if path.suffix == ".pt":
        return None
    import h5py

    with h5py.File(path, "r") as handle:
        return np.asarray(handle["coords"][:], dtype=np.int64) if "coords" in handle else None


def expand_feature_paths(arguments: list[str | os.PathLike], encoder: str | None = None,
                         canonical: Canonical | None = None) -> list[Path]:
    """Folders, globs, explicit files and TRIDENT job folders (their `features_<encoder>` folder,
    the one `encoder` names where there are several) -> a sorted list of feature files."""
    return expand_paths(arguments, FEATURE_FILES, encoder, canonical)
