"""Heatmap rendering: rank normalisation, where colour goes, size of the PNG."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from threads_search.errors import InputError
from threads_search.wsi.files import save_png
from threads_search.wsi.heatmap import rank_normalise, render_heatmap


def test_rank_normalise_against_hand_values():
    assert rank_normalise(np.array([0.1, 10.0, 0.2, 1000.0])).tolist() == [0.0, 2 / 3, 1 / 3, 1.0]
    assert rank_normalise(np.array([5.0, 5.0, 1.0])).tolist() == [0.75, 0.75, 0.0]  # ties share rank 2.5
    assert rank_normalise(np.array([3.0])).tolist() == [1.0]


def _thumbnail() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (100, 160, 3), dtype=np.uint8))


def test_colours_only_the_patches_and_adds_a_colour_bar(tmp_path):
    thumbnail = _thumbnail()
    # thumbnail downsample 4: 80 level-0 px patches are 20 x 20 thumbnail px
    coords = np.array([[0, 0], [80, 0], [400, 200]], dtype=np.int64)
    weights = np.array([0.01, 0.5, 0.2])
    heatmap = render_heatmap(thumbnail, 4.0, coords, 80, weights, alpha=0.5)
    assert heatmap.size == (160 + 48, 100)  # colour bar max(48, 160 // 8) px wide
    pixels = np.asarray(heatmap).astype(float)
    base = np.asarray(thumbnail).astype(float)
    cmap = matplotlib.colormaps["turbo"]
    for (x, y), rank in zip([(0, 0), (20, 0), (100, 50)], [0.0, 1.0, 0.5]):
        expected = 0.5 * base[y : y + 20, x : x + 20] + 0.5 * np.array(cmap(rank)[:3]) * 255
        assert np.abs(pixels[y : y + 20, x : x + 20] - expected).max() <= 0.5 + 1e-9
    outside = np.ones((100, 160), dtype=bool)
    outside[0:20, 0:40] = outside[50:70, 100:120] = False
    assert np.array_equal(pixels[:, :160][outside], base[outside])
    path = save_png(heatmap, tmp_path / "heatmap.png")
    assert path.stat().st_size > 1000
    assert Image.open(path).size == (208, 100)


def test_overlapping_patches_average_and_patches_past_the_edge_are_clipped():
    thumbnail = Image.new("RGB", (40, 40), (255, 255, 255))
    coords = np.array([[0, 0], [10, 0], [30, 30]], dtype=np.int64)
    heatmap = render_heatmap(thumbnail, 1.0, coords, 20, np.array([1.0, 3.0, 2.0]), alpha=1.0)
    pixels = np.asarray(heatmap)[:, :40]
    cmap = matplotlib.colormaps["turbo"]
    overlap_value = (0.0 + 1.0) / 2  # ranks 0 and 1 averaged where the first two patches overlap
    assert pixels[5, 15].tolist() == np.round(np.array(cmap(overlap_value)[:3]) * 255).astype(int).tolist()
    assert pixels[39, 39].tolist() == np.round(np.array(cmap(0.5)[:3]) * 255).astype(int).tolist()


def test_bad_weights_are_refused():
    thumbnail = _thumbnail()
    coords = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(InputError, match="1 weights for 2 patches"):
        render_heatmap(thumbnail, 1.0, coords, 10, np.array([1.0]))
    with pytest.raises(InputError, match="NaN or Inf"):
        render_heatmap(thumbnail, 1.0, coords, 10, np.array([1.0, np.nan]))


def test_png_round_trip_is_lossless():
    heatmap = render_heatmap(_thumbnail(), 2.0, np.array([[10, 10]]), 30, np.array([0.3]))
    buffer = io.BytesIO()
    heatmap.save(buffer, format="PNG")
    assert np.array_equal(np.asarray(Image.open(buffer)), np.asarray(heatmap))
