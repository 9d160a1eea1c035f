"""Tissue segmentation on a slide thumbnail.

Stained tissue is coloured, glass is white and grey: Otsu's threshold on the HSV saturation
channel separates them. Near-white and near-black pixels (glass, pen, scan borders) are
excluded, the mask is smoothed by a closing then an opening, and fragments below a minimum
area are dropped. Holes that survive the closing (lumina, fat, tears) stay background:
patches there would be mostly glass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from threads_search.errors import InputError

# Saturation below this is never tissue, even if Otsu puts its threshold lower (on a blank
# slide Otsu would split sensor noise).
MIN_SATURATION = 0.05
NEAR_WHITE = 220  # all channels above -> glass
NEAR_BLACK = 30  # all channels below -> pen, scan border, debris


@dataclass
class TissueMask:
    """Boolean tissue mask `(height, width)` and its scale (level-0 px per mask px)."""

    mask: np.ndarray
    downsample: float

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> (h, w) float32 HSV saturation in [0, 1]."""
    channels = rgb.astype(np.float32)
    high = channels.max(axis=-1)
    low = channels.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Threshold that maximises the between-class variance of a 256-bin histogram of `values`.

    Returns the upper edge of the last bin of the lower class, so `values > t` is the upper class.
    """
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    counts = counts.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1e-12)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _smoothing_radius(pixel_size_um: float | None, microns: float, fallback_px: int) -> int:
    """Radius in mask pixels of a physical length, kept between 1 and 8 px."""
    if pixel_size_um is None:
        return fallback_px
    return int(np.clip(round(microns / pixel_size_um), 1, 8))


def segment_tissue(
    rgb: np.ndarray,
    pixel_size_um: float | None = None,
    min_object_area_um2: float = 10_000.0,
    smoothing_um: float = 20.0,
) -> np.ndarray:
    """Tissue mask of a thumbnail.

    Args:
        rgb: (h, w, 3) uint8 thumbnail.
        pixel_size_um: microns per thumbnail pixel (scales the morphology and the minimum
            area); None uses 2 px smoothing and a 64 px minimum area.
        min_object_area_um2: tissue fragments smaller than this are dropped (0.01 mm^2).
        smoothing_um: radius of the closing / opening.

    Returns:
        (h, w) bool, True on tissue.
    """
    saturation = ndimage.uniform_filter(hsv_saturation(rgb), size=3)
    threshold = max(otsu_threshold(saturation), MIN_SATURATION)
    near_white = (rgb > NEAR_WHITE).all(axis=-1)
    near_black = (rgb < NEAR_BLACK).all(axis=-1)
    mask = (saturation > threshold) & ~near_white & ~near_black

    radius = _smoothing_radius(pixel_size_um, smoothing_um, fallback_px=2)
    cross = ndimage.generate_binary_structure(2, 1)
    # Repeated 3x3 steps approximate a disk of `radius` at a fraction of its cost.
    mask = ndimage.binary_closing(mask, structure=cross, iterations=radius, border_value=0)
    mask = ndimage.binary_opening(mask, structure=cross, iterations=radius)
    min_area_px = 64 if pixel_size_um is None else max(1, round(min_object_area_um2 / pixel_size_um**2))
    return remove_small_objects(mask, min_area_px)


def remove_small_objects(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """Drop 8-connected components of `mask` with fewer than `min_area_px` pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return mask
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area_px
    keep[0] = False
    return keep[labels]


def segment_slide_thumbnail(rgb: np.ndarray, downsample: float, mpp: float, source: str) -> TissueMask:
    """Segment a thumbnail (`downsample` level-0 px per px, level-0 `mpp` um/px).

    Raises InputError naming `source` when no tissue is found.
    """
    mask = segment_tissue(rgb, pixel_size_um=downsample * mpp)
    if not mask.any():
        raise InputError(f"{source}: no tissue found (the thumbnail is blank or background only)")
    return TissueMask(mask=mask, downsample=downsample)


def contour_overlay(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 0)) -> np.ndarray:
    """Thumbnail (h, w, 3) uint8 with the outline of `mask` drawn in `colour`, 2 px wide."""
    outline = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
    drawn = rgb.copy()
    drawn[outline] = colour
    return drawn
