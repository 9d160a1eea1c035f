"""Open a whole-slide image with OpenSlide and find its resolution.

Any format OpenSlide reads (Aperio .svs, generic tiled TIFF, Hamamatsu .ndpi, MIRAX .mrxs,
DICOM, ...) through the openslide-python + openslide-bin wheels. The resolution is the
level-0 pixel size in microns (mpp); magnification follows the usual convention
`magnification = 10 / mpp` (0.25 um/px -> 40x, 0.5 um/px -> 20x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threads_search.errors import InputError

# A TIFF resolution tag outside this range is a scanner default (72 dpi = 353 um/px), not a
# measured pixel size, so it is not trusted. Objective-power based values need no such check.
PLAUSIBLE_TIFF_MPP = (0.05, 20.0)

_TIFF_UNIT_MICRONS = {"centimeter": 1e4, "inch": 25_400.0}


def magnification_from_mpp(mpp: float) -> float:
    """Objective magnification of a pixel size in um/px (10 / mpp)."""
    return 10.0 / mpp


def _positive_float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    return value


def _mpp_from_tiff_resolution(properties: Mapping[str, str]) -> float | None:
    """Pixel size from the TIFF XResolution / ResolutionUnit tags, when plausible."""
    pixels_per_unit = _positive_float(properties.get("tiff.XResolution"))
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    if pixels_per_unit is None or unit not in _TIFF_UNIT_MICRONS:
        return None
    mpp = _TIFF_UNIT_MICRONS[unit] / pixels_per_unit
    low, high = PLAUSIBLE_TIFF_MPP
    return mpp if low <= mpp <= high else None


def resolve_mpp(properties: Mapping[str, str], path: Path | str, override: float | None = None) -> tuple[float, str]:
    """Level-0 microns per pixel of a slide and the property it came from.

    Order: the user's `override` (`--mpp`), `openslide.mpp-x`/`-y` (mean when both),
    `aperio.MPP`, the TIFF resolution tags, then a nominal value from the objective power
    (`openslide.objective-power`, `aperio.AppMag`: mpp = 10 / power).
    Raises InputError naming `path` when none is usable.
    """
    if override is not None:
        value = _positive_float(str(override))
        if value is None:
            raise InputError(f"{path}: --mpp must be a positive number of microns per pixel, got {override}")
        return value, "--mpp"
    mpp_x = _positive_float(properties.get("openslide.mpp-x"))
    mpp_y = _positive_float(properties.get("openslide.mpp-y"))
    if mpp_x is not None and mpp_y is not None:
        return (mpp_x + mpp_y) / 2.0, "openslide.mpp-x/y"
    if mpp_x is not None or mpp_y is not None:
        return float(mpp_x or mpp_y), "openslide.mpp-x/y"
    aperio = _positive_float(properties.get("aperio.MPP"))
    if aperio is not None:
        return aperio, "aperio.MPP"
    tiff = _mpp_from_tiff_resolution(properties)
    if tiff is not None:
        return tiff, "tiff.XResolution"
    for key in ("openslide.objective-power", "aperio.AppMag"):
        power = _positive_float(properties.get(key))
        if power is not None:
            return 10.0 / power, key
    raise InputError(f"{path}: no microns-per-pixel in the slide's properties; pass --mpp")


@dataclass
class Slide:
    """An open slide: the OpenSlide handle plus its resolved resolution.

    `mpp` is the level-0 pixel size in um/px; `mpp_source` names where it came from.
    Use as a context manager (or call `close()`) to release the file.
    """

    path: Path
    handle: object  # openslide.OpenSlide; typed loosely so this module imports without it
    mpp: float
    mpp_source: str

    @property
    def slide_id(self) -> str:
        return self.path.stem

    @property
    def magnification(self) -> float:
        """Level-0 magnification, 10 / mpp."""
        return magnification_from_mpp(self.mpp)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return tuple(self.handle.dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self.handle.level_downsamples)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(tuple(d) for d in self.handle.level_dimensions)

    def read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Region as (height, width, 3) uint8 RGB; `location` is level-0 (x, y), `size` is at `level`.

        Transparent pixels (outside the scanned area) become white, i.e. background.
        """
        rgba = np.asarray(self.handle.read_region(location, level, size))
        return composite_on_white(rgba)

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) uint8 RGBA -> (h, w, 3) uint8 RGB over a white background."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:4].astype(np.uint16)
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    blended = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def open_slide(path: Path | str, mpp: float | None = None) -> Slide:
    """Open `path` with OpenSlide and resolve its level-0 resolution.

    `mpp` (um/px) overrides the slide's properties. Raises InputError when the file is
    missing, OpenSlide cannot read it, or it has no resolution and no override.
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such slide file")
    try:
        handle = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as error:
        raise InputError(
            f"{path}: OpenSlide cannot read this file ({error}); it needs a tiled, pyramidal slide format"
        ) from None
    try:
        resolved_mpp, source = resolve_mpp(handle.properties, path, mpp)
    except InputError:
        handle.close()
        raise
    return Slide(path=path, handle=handle, mpp=resolved_mpp, mpp_source=source)
