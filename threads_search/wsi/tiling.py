"""Patch grid at a target magnification: level choice, level-0 coordinates, tissue filter.

Units: `patch_size` is pixels at the target magnification; `patch_size_level0` the same
patch measured in level-0 pixels (`patch_size * level0_ratio(...)`, rounded: see
`level0_ratio` for when the scan's magnification is taken as nominal); coordinates are
level-0 (x, y) of a patch's top-left corner, int64, as in TRIDENT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.errors import InputError
from threads_search.wsi.reader import Slide
from threads_search.wsi.tissue import TissueMask

# Scans report e.g. mpp 0.5040 (19.8x) for a nominal 20x objective; a target this close above
# the scan's magnification reads level 0 unchanged rather than being refused.
MAGNIFICATION_TOLERANCE = 0.05

# Relative distance within which a level-0 / target ratio counts as an integer, or a scan's
# magnification as a standard objective power (see `level0_ratio`).
RATIO_SNAP_TOLERANCE = 0.02
OBJECTIVE_POWERS = (1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0)


@dataclass(frozen=True)
class TilePlan:
    """Where and how to read the patches of one slide.

    `coords` (n, 2) int64 level-0 (x, y); a patch is read at pyramid `level` as a
    `read_size` x `read_size` region (pixels at that level) and resized to `patch_size`.
    `level0_magnification` is the nominal one the patch size follows (`level0_ratio` x target;
    the scan's own 10 / mpp where nothing snapped), so `patch_size * level0_magnification /
    target_magnification` gives `patch_size_level0` back, as TRIDENT's readers compute it.
    """

    coords: np.ndarray
    patch_size: int
    patch_size_level0: int
    level: int
    level_downsample: float
    read_size: int
    level0_magnification: float
    target_magnification: float

    @property
    def n_patches(self) -> int:
        return int(self.coords.shape[0])


def _near(value: float, nominal: float) -> bool:
    return nominal > 0 and abs(value / nominal - 1.0) <= RATIO_SNAP_TOLERANCE


def level0_ratio(level0_magnification: float, target_magnification: float) -> float:
    """Level-0 pixels per target pixel, with the scanner's calibration noise taken out.

    Rule, first match wins (tolerance RATIO_SNAP_TOLERANCE = 2 %, relative):
    1. `level0 / target` within 2 % of an integer n >= 1 -> n
       (20.04x -> 20x: 1.002 -> 1; 40.1x -> 20x: 2.005 -> 2; 19.84x -> 20x: 0.992 -> 1).
    2. `level0` within 2 % of a standard objective power P (OBJECTIVE_POWERS) -> P / target
       (60.2x -> 40x: 3/2; 40.1x -> 30x: 4/3).
    3. Otherwise the measured ratio (a 0.2266 um/px scan is 44.13x: 44.13 / 20 = 2.207).

    Why: scanners record a calibrated pixel size near, not at, the objective's nominal one
    (Aperio: 0.499-0.504 um/px at 20x, 0.252 at 40x, i.e. up to ~1 % off), so 256 px at 20x
    from a 20.04x scan would be 257 level-0 px and every patch would be resampled by 0.2 %.
    TRIDENT avoids this by rounding the level-0 magnification to 80/60/40/20/10/5x in wide
    mpp bands (everything below 0.3 um/px is "40x") and writing `patch_size * mag // target`;
    we snap only within 2 %, so a patch covers within 2 % of the tissue it should, and a slide
    that really is 44x keeps 565-px patches for 256 at 20x. The two rules agree on scans
    within 2 % of a nominal objective and differ only beyond that.
    """
    ratio = level0_magnification / target_magnification
    whole = max(1, round(ratio))
    if _near(ratio, whole):
        return float(whole)
    for power in OBJECTIVE_POWERS:
        if _near(level0_magnification, power):
            return power / target_magnification
    return ratio


def choose_level(level_downsamples: tuple[float, ...], downsample: float) -> int:
    """Lowest-resolution level whose downsample is <= `downsample` (level 0 if none is).

    A relative slack of 1e-3 lets a level whose recorded downsample is 4.0003 serve 4.
    """
    eligible = [i for i, d in enumerate(level_downsamples) if d <= downsample * (1 + 1e-3)]
    return max(eligible, key=lambda i: level_downsamples[i]) if eligible else 0


def grid_coords(width: int, height: int, step: int) -> np.ndarray:
    """Top-left corners (n, 2) int64 of `step` x `step` tiles covering width x height, row-major.

    As in TRIDENT, the last row and column may extend past the slide's edge (read as white),
    so tissue at the border is not lost.
    """
    xs = np.arange(0, width, step, dtype=np.int64)
    ys = np.arange(0, height, step, dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def tissue_fraction_of_tiles(tissue: TissueMask, coords: np.ndarray, patch_size_level0: int) -> np.ndarray:
    """Fraction (n,) float64 of each level-0 tile covered by the tissue mask.

    Tiles are mapped to mask pixels (rounded, at least one pixel) and summed with an
    integral image, so the cost does not depend on the tile size. A tile's part beyond
    the slide's edge counts as background.
    """
    mask = tissue.mask
    height, width = mask.shape
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(axis=0).cumsum(axis=1)
    scale = 1.0 / tissue.downsample
    x0 = np.round(coords[:, 0] * scale).astype(np.int64)
    y0 = np.round(coords[:, 1] * scale).astype(np.int64)
    x1 = np.maximum(np.round((coords[:, 0] + patch_size_level0) * scale).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.round((coords[:, 1] + patch_size_level0) * scale).astype(np.int64), y0 + 1)
    area = (x1 - x0) * (y1 - y0)
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    covered = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return covered / area


def check_target_magnification(slide: Slide, target_magnification: float) -> None:
    """Raise InputError when the target is above the scan's magnification (beyond tolerance)."""
    if target_magnification <= 0:
        raise InputError(f"{slide.path}: target magnification must be positive, got {target_magnification}")
    if target_magnification > slide.magnification * (1 + MAGNIFICATION_TOLERANCE):
        raise InputError(
            f"{slide.path}: target magnification {target_magnification:g}x is above the scan's "
            f"{slide.magnification:.1f}x (mpp {slide.mpp:.4g} from {slide.mpp_source})"
        )


def plan_tiles(
    slide: Slide,
    tissue: TissueMask,
    target_magnification: float = 20.0,
    patch_size: int = 512,
    min_tissue_fraction: float = 0.25,
) -> TilePlan:
    """Non-overlapping patches on tissue at `target_magnification`.

    Keeps grid tiles whose tissue fraction is >= `min_tissue_fraction`. Raises InputError
    when the target is above the scan, or when no tile has enough tissue.
    """
    check_target_magnification(slide, target_magnification)
    if patch_size < 1:
        raise InputError(f"{slide.path}: patch size must be a positive number of pixels, got {patch_size}")
    ratio = level0_ratio(slide.magnification, target_magnification)
    patch_size_level0 = max(1, round(patch_size * ratio))
    downsample = patch_size_level0 / patch_size
    level = choose_level(slide.level_downsamples, downsample)
    level_downsample = slide.level_downsamples[level]
    read_size = max(1, round(patch_size_level0 / level_downsample))

    width, height = slide.dimensions
    candidates = grid_coords(width, height, patch_size_level0)
    fractions = tissue_fraction_of_tiles(tissue, candidates, patch_size_level0)
    coords = candidates[fractions >= min_tissue_fraction]
    if coords.shape[0] == 0:
        raise InputError(
            f"{slide.path}: no {patch_size}px patch at {target_magnification:g}x has "
            f"{min_tissue_fraction:.0%} tissue (slide {width}x{height}px, {patch_size_level0}px per patch at level 0)"
        )
    return TilePlan(
        coords=np.ascontiguousarray(coords, dtype=np.int64),
        patch_size=patch_size,
        patch_size_level0=patch_size_level0,
        level=level,
        level_downsample=level_downsample,
        read_size=read_size,
        level0_magnification=ratio * target_magnification,
        target_magnification=float(target_magnification),
    )


def read_patch(slide: Slide, plan: TilePlan, x: int, y: int) -> np.ndarray:
    """Patch at level-0 (x, y) as (patch_size, patch_size, 3) uint8 RGB."""
    from PIL import Image

    region = slide.read_rgb((int(x), int(y)), plan.level, (plan.read_size, plan.read_size))
    if plan.read_size == plan.patch_size:
        return region
    resized = Image.fromarray(region).resize((plan.patch_size, plan.patch_size), Image.Resampling.BILINEAR)
    return np.asarray(resized)
