"""Attention heatmaps: per-patch weights painted over a slide thumbnail.

Weights are rank-normalised to [0, 1] (attention is heavy-tailed: a linear scale would show
one hot patch and a uniform rest), coloured with a perceptual colour map and blended over
the thumbnail inside the patches; everything outside the patches is left as is. A colour
bar on the right reads 'high' at the top and 'low' at the bottom.
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError


def rank_normalise(weights: np.ndarray) -> np.ndarray:
    """(n,) weights -> (n,) float64 in [0, 1] by rank (ties share their mean rank; n=1 -> 1)."""
    from scipy.stats import rankdata

    if weights.size == 1:
        return np.ones(1)
    return (rankdata(weights) - 1.0) / (weights.size - 1)


def _validate(coords: np.ndarray, weights: np.ndarray, patch_size_level0: float, downsample: float) -> None:
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"heatmap: coords must be (n, 2) level-0 (x, y), got shape {coords.shape}")
    if weights.shape != (coords.shape[0],):
        raise InputError(f"heatmap: {weights.shape[0] if weights.ndim else 0} weights for {coords.shape[0]} patches")
    if coords.shape[0] == 0:
        raise InputError("heatmap: no patches to draw")
    if not np.isfinite(weights).all():
        raise InputError("heatmap: weights contain NaN or Inf")
    if patch_size_level0 <= 0 or downsample <= 0:
        raise InputError("heatmap: patch_size_level0 and thumbnail_downsample must be positive")


def _paint_patches(shape: tuple[int, int], coords: np.ndarray, values: np.ndarray, patch_px: float, downsample: float):
    """Mean value per thumbnail pixel over the patches covering it, and the covered mask."""
    height, width = shape
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.int32)
    x0 = np.floor(coords[:, 0] / downsample).astype(int)
    y0 = np.floor(coords[:, 1] / downsample).astype(int)
    x1 = np.maximum(x0 + 1, np.ceil((coords[:, 0] + patch_px) / downsample).astype(int))
    y1 = np.maximum(y0 + 1, np.ceil((coords[:, 1] + patch_px) / downsample).astype(int))
    for left, top, right, bottom, value in zip(
        np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height), values
    ):
        total[top:bottom, left:right] += value
        count[top:bottom, left:right] += 1
    covered = count > 0
    return np.divide(total, np.maximum(count, 1)), covered


def _colour_bar(height: int, width: int, colour_map) -> np.ndarray:
    """(height, width, 3) uint8 strip: a vertical gradient (high at the top) with a white margin."""
    from PIL import Image, ImageDraw

    bar = np.full((height, width, 3), 255, dtype=np.uint8)
    margin = max(2, height // 20)
    bar_left, bar_right = width // 4, width // 4 + max(4, width // 3)
    gradient = np.linspace(1.0, 0.0, max(1, height - 2 * margin))
    colours = (colour_map(gradient)[:, :3] * 255).astype(np.uint8)
    bar[margin : height - margin, bar_left:bar_right] = colours[:, None, :]
    image = Image.fromarray(bar)
    draw = ImageDraw.Draw(image)
    text_x = min(bar_right + 2, width - 1)
    draw.text((text_x, margin), "high", fill=(0, 0, 0))
    draw.text((text_x, max(margin, height - margin - 10)), "low", fill=(0, 0, 0))
    return np.asarray(image)


def render_heatmap(
    thumbnail,
    thumbnail_downsample: float,
    coords: np.ndarray,
    patch_size_level0: float,
    weights: np.ndarray,
    alpha: float = 0.5,
    colour_map: str = "turbo",
):
    """Blend rank-normalised per-patch `weights` over `thumbnail`.

    Args:
        thumbnail: PIL image of the whole slide.
        thumbnail_downsample: level-0 pixels per thumbnail pixel.
        coords: (n, 2) level-0 (x, y) of each patch's top-left corner.
        patch_size_level0: patch side in level-0 pixels.
        weights: (n,) attention (any scale; only the order matters).
        alpha: opacity of the colours over the tissue.

    Returns:
        RGB PIL image, thumbnail width + colour bar (max(48, width // 8) px) wide, same height;
        pixels outside every patch equal the thumbnail's.
    """
    import matplotlib
    from PIL import Image

    coords = np.asarray(coords, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64).ravel()
    _validate(coords, weights, patch_size_level0, thumbnail_downsample)
    base = np.asarray(thumbnail.convert("RGB"), dtype=np.float64)
    ranks = rank_normalise(weights)
    values, covered = _paint_patches(base.shape[:2], coords, ranks, patch_size_level0, thumbnail_downsample)
    cmap = matplotlib.colormaps[colour_map]
    colours = cmap(values)[..., :3] * 255.0
    blended = base.copy()
    blended[covered] = (1 - alpha) * base[covered] + alpha * colours[covered]
    bar = _colour_bar(base.shape[0], max(48, base.shape[1] // 8), cmap)
    canvas = np.concatenate([np.round(blended).astype(np.uint8), bar], axis=1)
    return Image.fromarray(canvas)
