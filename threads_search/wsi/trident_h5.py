"""Patch-feature files in TRIDENT's HDF5 layout.

`<slide_id>.h5` holds dataset `features` (n, dim) float32 and dataset `coords` (n, 2) int64
(level-0 x, y). TRIDENT puts the patching attributes (`patch_size`, `patch_size_level0`,
`level0_magnification`, `target_magnification`, `overlap`, `name`, `savetodir`,
`level0_width`, `level0_height`) on the `coords` dataset and `name` / `savetodir` on `features`. We write those in the same places,
add `encoder` to both datasets, and repeat everything on the file root, so readers that look
in either place (TRIDENT's own, CLAM-style, ours) find them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.atomic import atomic_path

COORDS_ATTRIBUTES = (
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "savetodir",
    "level0_width",
    "level0_height",
    "encoder",
)
FEATURES_ATTRIBUTES = ("name", "savetodir", "encoder")


@dataclass
class PatchFeatures:
    """Features (n, dim) float32, coords (n, 2) int64 level-0 (x, y), and the file's attributes."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict


def _attribute_value(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_trident_h5(path: Path, features: np.ndarray, coords: np.ndarray, attrs: Mapping[str, object]) -> Path:
    """Write features + coords + attributes to `path` atomically (temp file, then rename).

    `attrs` should hold the TRIDENT names above plus any provenance (mpp, package version);
    None values are skipped (HDF5 has no null).
    """
    import h5py

    features = np.ascontiguousarray(features, dtype=np.float32)
    coords = np.ascontiguousarray(coords, dtype=np.int64)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ValueError(f"features {features.shape} and coords {coords.shape} do not pair up as (n, dim), (n, 2)")
    values = {key: _attribute_value(value) for key, value in attrs.items() if value is not None}
    with atomic_path(Path(path)) as temporary:
        with h5py.File(temporary, "w") as handle:
            features_set = handle.create_dataset("features", data=features)
            coords_set = handle.create_dataset("coords", data=coords)
            for key, value in values.items():
                handle.attrs[key] = value
                if key in COORDS_ATTRIBUTES:
                    coords_set.attrs[key] = value
                if key in FEATURES_ATTRIBUTES:
                    features_set.attrs[key] = value
    return Path(path)


def _merged_attributes(handle) -> dict:
    attrs = {key: _plain(value) for key, value in handle.attrs.items()}
    for name in ("coords", "features"):
        attrs.update({key: _plain(value) for key, value in handle[name].attrs.items()})
    return attrs


def _open_checked(path: Path):
    """Open `path` and check both datasets exist and pair up as (n, dim) / (n, 2)."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: cannot read HDF5 ({error})") from None
    for name in ("features", "coords"):
        if name not in handle:
            handle.close()
            raise InputError(f"{path}: no '{name}' dataset (not a TRIDENT patch-feature file)")
    features_shape, coords_shape = handle["features"].shape, handle["coords"].shape
    if len(features_shape) != 2 or coords_shape != (features_shape[0], 2):
        handle.close()
        raise InputError(f"{path}: features {features_shape} and coords {coords_shape} do not pair up")
    return handle


def read_trident_h5(path: Path) -> PatchFeatures:
    """Read a TRIDENT-layout file; attributes merged from the root, `coords` and `features`.

    Raises InputError naming the file when it is unreadable or lacks either dataset.
    """
    path = Path(path)
    with _open_checked(path) as handle:
        return PatchFeatures(
            features=np.asarray(handle["features"][()], dtype=np.float32),
            coords=np.asarray(handle["coords"][()], dtype=np.int64),
            attrs=_merged_attributes(handle),
        )


def read_trident_summary(path: Path) -> tuple[int, dict]:
    """(number of patches, merged attributes) without reading the feature matrix."""
    path = Path(path)
    with _open_checked(path) as handle:
        return int(handle["features"].shape[0]), _merged_attributes(handle)


def is_complete_trident_h5(path: Path, encoder: str | None = None) -> bool:
    """True when `path` opens as a non-empty TRIDENT file (written by `encoder`, if given).

    Used to resume a batch: such a slide is skipped, anything else is extracted again.
    Only shapes and attributes are read: files are renamed into place once fully written,
    so a file under its final name is complete.
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        n_patches, attrs = read_trident_summary(path)
    except InputError:
        return False
    return n_patches > 0 and (encoder is None or attrs.get("encoder") == encoder)
