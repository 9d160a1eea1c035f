"""Heatmap rendering: the numeric attention scale, where colour goes, the title and the size of the PNG."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from threads_search.errors import InputError
from threads_search.wsi.files import save_png
from threads_search.wsi.heatmap import AttentionScale, colour_bar_width, ratio_label, render_heatmap, title_height

COOLWARM = matplotlib.colormaps["coolwarm"]


def test_the_scale_shows_attention_relative_to_the_slide_mean_on_log2():
    weights = np.array([1.0, 1.0, 2.0, 4.0]) / 8  # mean 0.25: ratios 0.5, 0.5, 1, 2
    scale = AttentionScale.for_weights(weights)
    assert scale.limit == 1
    assert scale.positions(weights).tolist() == [0.0, 0.0, 0.5, 1.0]
    assert [(p, r, label) for p, r, label in scale.ticks()] == [(0.0, 0.5, "1/2x"), (0.5, 1.0, "1x"), (1.0, 2.0, "2x")]
    # Any overall scale of the weights gives the same colours: only weight / mean matters.
    assert scale.positions(weights * 1000).tolist() == [0.0, 0.0, 0.5, 1.0]


def test_a_small_spread_stays_near_the_neutral_middle():
    """Rank colours put a 3 % spread across the whole map; the true-value scale keeps it near 1x."""
    weights = np.linspace(0.985, 1.015, 50)
    scale = AttentionScale.for_weights(weights)
    positions = scale.positions(weights)
    assert scale.limit == 1
    assert positions.min() > 0.48 and positions.max() < 0.52
    assert positions.min() == pytest.approx(0.5 + np.log2(0.985) / 2, abs=1e-3)


def test_the_limit_grows_to_hold_the_extremes_and_clips_zeros():
    heavy = np.array([5.0] + [1.0] * 19)  # mean 1.2: the top patch is 4.17x, log2 2.06 -> limit 3
    scale = AttentionScale.for_weights(heavy)
    assert scale.limit == 3
    assert scale.positions(heavy)[0] == pytest.approx(0.5 + np.log2(5 / 1.2) / 6)
    wide = AttentionScale(limit=6)
    assert [label for _, _, label in wide.ticks()] == ["1/64x", "1/16x", "1/4x", "1x", "4x", "16x", "64x"]
    with_zero = np.array([0.0, 1.0, 1.0])
    assert AttentionScale.for_weights(with_zero).limit == 10
    assert AttentionScale.for_weights(with_zero).positions(with_zero)[0] == 0.0
    assert (ratio_label(0.125), ratio_label(1.0), ratio_label(8.0)) == ("1/8x", "1x", "8x")


def test_the_json_scale_carries_colour_stops_and_ticks():
    payload = AttentionScale(limit=2).to_json(n_stops=5)
    assert payload["log2_limit"] == 2 and len(payload["colours"]) == 5
    middle = np.round(np.array(COOLWARM(0.5)[:3]) * 255).astype(int)
    assert payload["colours"][2] == "#%02x%02x%02x" % tuple(middle)
    assert [t["label"] for t in payload["ticks"]] == ["1/4x", "1/2x", "1x", "2x", "4x"]


def _thumbnail() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (100, 160, 3), dtype=np.uint8))


def test_colours_only_the_patches_with_true_values_and_adds_title_and_colour_bar(tmp_path):
    thumbnail = _thumbnail()
    # thumbnail downsample 4: 80 level-0 px patches are 20 x 20 thumbnail px
    coords = np.array([[0, 0], [80, 0], [400, 200]], dtype=np.int64)
    weights = np.array([0.1, 0.4, 0.2])  # mean 0.7/3: ratios 0.43, 1.71, 0.86 -> limit 2
    title = ["attention of model m on slide s", "second line"]
    heatmap = render_heatmap(thumbnail, 4.0, coords, 80, weights, alpha=0.5, title=title)
    top = title_height(title)
    assert top == 42 and colour_bar_width(160) == 96
    assert heatmap.size == (160 + 96, 100 + top)
    pixels = np.asarray(heatmap).astype(float)[top:]
    base = np.asarray(thumbnail).astype(float)
    ratios = weights / weights.mean()
    for (x, y), ratio in zip([(0, 0), (20, 0), (100, 50)], ratios):
        position = 0.5 + np.log2(ratio) / 4
        expected = 0.5 * base[y : y + 20, x : x + 20] + 0.5 * np.array(COOLWARM(position)[:3]) * 255
        assert np.abs(pixels[y : y + 20, x : x + 20] - expected).max() <= 0.5 + 1e-6
    outside = np.ones((100, 160), dtype=bool)
    outside[0:20, 0:40] = outside[50:70, 100:120] = False
    assert np.array_equal(pixels[:, :160][outside], base[outside])
    strip = np.asarray(heatmap)[:top]
    assert (strip < 128).any() and (strip == 255).mean() > 0.8  # dark text on white
    path = save_png(heatmap, tmp_path / "heatmap.png")
    assert Image.open(path).size == (256, 142)


def test_the_colour_bar_runs_from_the_top_value_down_to_the_bottom_value():
    heatmap = render_heatmap(Image.new("RGB", (400, 400), (255, 255, 255)), 1.0, np.array([[0, 0], [10, 0]]), 10,
                             np.array([1.0, 3.0]))
    bar = np.asarray(heatmap)[:, 400:].astype(int)
    column = bar[:, 8 + 5]  # inside the gradient strip, which spans rows 20 to 379 (margin 400 // 20)
    top, bottom = column[20], column[379]
    assert column[385].tolist() == [255, 255, 255]  # below the strip: the white margin
    assert np.abs(top - np.array(COOLWARM(1.0)[:3]) * 255).max() <= 2  # red at the top (2^limit)
    assert np.abs(bottom - np.array(COOLWARM(0.0)[:3]) * 255).max() <= 2  # blue at the bottom


def test_overlapping_patches_average_and_patches_past_the_edge_are_clipped():
    thumbnail = Image.new("RGB", (40, 40), (255, 255, 255))
    coords = np.array([[0, 0], [10, 0], [30, 30]], dtype=np.int64)
    weights = np.array([1.0, 4.0, 2.0])
    heatmap = render_heatmap(thumbnail, 1.0, coords, 20, weights, alpha=1.0)
    pixels = np.asarray(heatmap)[:, :40]
    scale = AttentionScale.for_weights(weights)
    first, second, third = scale.positions(weights)
    overlap = (first + second) / 2  # positions averaged where the first two patches overlap
    assert pixels[5, 15].tolist() == np.round(np.array(COOLWARM(overlap)[:3]) * 255).astype(int).tolist()
    assert pixels[39, 39].tolist() == np.round(np.array(COOLWARM(third)[:3]) * 255).astype(int).tolist()


def test_bad_weights_are_refused():
    thumbnail = _thumbnail()
    coords = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(InputError, match="1 weights for 2 patches"):
        render_heatmap(thumbnail, 1.0, coords, 10, np.array([1.0]))
    with pytest.raises(InputError, match="NaN or Inf"):
        render_heatmap(thumbnail, 1.0, coords, 10, np.array([1.0, np.nan]))
    with pytest.raises(InputError, match="must not be negative"):
        render_heatmap(thumbnail, 1.0, coords, 10, np.array([1.0, -0.5]))
    with pytest.raises(InputError, match="sum to zero"):
        render_heatmap(thumbnail, 1.0, coords, 10, np.array([0.0, 0.0]))


def test_png_round_trip_is_lossless():
    heatmap = render_heatmap(_thumbnail(), 2.0, np.array([[10, 10]]), 30, np.array([0.3]))
    buffer = io.BytesIO()
    heatmap.save(buffer, format="PNG")
    assert np.array_equal(np.asarray(Image.open(buffer)), np.asarray(heatmap))


def test_the_heatmap_title_names_the_slide_the_model_and_how_to_read_the_colours():
    from threads_search.search.heatmap import heatmap_title

    first, second = heatmap_title("TCGA-AA-0001", "0123456789abcdef", "threads-abmil-cpu", 812, 2)
    assert first == "attention of model 0123456789abcdef (threads-abmil-cpu) on slide TCGA-AA-0001"
    assert "812 patches, mean of 2 heads" in second and "1x = 1/812" in second and "log2" in second
