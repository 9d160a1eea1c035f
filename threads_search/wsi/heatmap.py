"""Attention heatmaps: per-patch weights painted over a slide thumbnail on a numeric colour scale.

Colours show the true attention, as a ratio to the slide's mean attention (1x = every patch
alike, i.e. 1 / n_patches for weights that sum to one), on a log2 scale symmetric about 1x:
a diverging colour map runs from 2^-L (blue) through 1x (neutral) to 2^L (red), with L the
smallest whole number (at least 1) that holds the slide's extremes. A slide whose attention
is nearly uniform therefore looks nearly neutral, and a 3 % spread never fills the scale, as
it did when colours showed ranks. The colour bar on the right carries the tick values; an
optional title strip names the slide and the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from threads_search.errors import InputError

COLOUR_MAP = "coolwarm"
MAX_LOG2_LIMIT = 10  # 1024x the mean; more extreme patches take the end colours
TITLE_LINE_PX = 18
FONT_PX = 13


@dataclass(frozen=True)
class AttentionScale:
    """The colour scale of one slide's attention: log2(weight / mean weight) in [-limit, limit]."""

    limit: int
    colour_map: str = COLOUR_MAP

    @classmethod
    def for_weights(cls, weights: np.ndarray, colour_map: str = COLOUR_MAP) -> "AttentionScale":
        ratios = relative_attention(weights)
        positive = ratios[ratios > 0]
        extreme = float(np.abs(np.log2(positive)).max()) if positive.size else float(MAX_LOG2_LIMIT)
        if positive.size < ratios.size:  # zero weights sit at the bottom end
            extreme = float(MAX_LOG2_LIMIT)
        return cls(limit=int(min(MAX_LOG2_LIMIT, max(1, math.ceil(extreme - 1e-9)))), colour_map=colour_map)

    def positions(self, weights: np.ndarray) -> np.ndarray:
        """(n,) float64 in [0, 1]: where each weight falls on the colour map (0.5 = the mean)."""
        ratios = relative_attention(weights)
        logs = np.log2(np.maximum(ratios, 2.0 ** -(self.limit + 1)))
        return 0.5 + np.clip(logs, -self.limit, self.limit) / (2 * self.limit)

    def ticks(self) -> list[tuple[float, float, str]]:
        """(position in [0, 1], ratio, label) at whole powers of two, at most 9 of them."""
        step = max(1, math.ceil(2 * self.limit / 8))
        exponents = [e for e in range(-self.limit, self.limit + 1) if e % step == 0]
        return [(0.5 + e / (2 * self.limit), 2.0 ** e, ratio_label(2.0 ** e)) for e in exponents]

    def colours(self, positions: np.ndarray) -> np.ndarray:
        """(..., 3) float64 RGB in [0, 255] of positions in [0, 1]."""
        import matplotlib

        return matplotlib.colormaps[self.colour_map](np.asarray(positions, dtype=np.float64))[..., :3] * 255.0

    def to_json(self, n_stops: int = 33) -> dict:
        """The scale for a browser: evenly spaced colour stops and the labelled ticks."""
        stops = self.colours(np.linspace(0.0, 1.0, n_stops))
        return {"quantity": "attention / the slide's mean attention (1x = uniform)", "log2_limit": self.limit,
                "colour_map": self.colour_map,
                "colours": ["#%02x%02x%02x" % tuple(int(round(c)) for c in stop) for stop in stops],
                "ticks": [{"position": p, "ratio": r, "label": label} for p, r, label in self.ticks()]}


def relative_attention(weights: np.ndarray) -> np.ndarray:
    """(n,) weights / their mean: 1.0 for a patch weighed like the average patch."""
    weights = np.asarray(weights, dtype=np.float64).ravel()
    mean = weights.mean() if weights.size else 0.0
    if not mean > 0:
        raise InputError("heatmap: the attention weights sum to zero")
    return weights / mean


def ratio_label(ratio: float) -> str:
    """2.0 -> '2x', 0.25 -> '1/4x', 1.0 -> '1x'."""
    return f"{ratio:g}x" if ratio >= 1 else f"1/{1 / ratio:g}x"


def _validate(coords: np.ndarray, weights: np.ndarray, patch_size_level0: float, downsample: float) -> None:
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise InputError(f"heatmap: coords must be (n, 2) level-0 (x, y), got shape {coords.shape}")
    if weights.shape != (coords.shape[0],):
        raise InputError(f"heatmap: {weights.shape[0] if weights.ndim else 0} weights for {coords.shape[0]} patches")
    if coords.shape[0] == 0:
        raise InputError("heatmap: no patches to draw")
    if not np.isfinite(weights).all():
        raise InputError("heatmap: weights contain NaN or Inf")
    if (weights < 0).any():
        raise InputError("heatmap: attention weights must not be negative")
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


def _font():
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_PX)


def colour_bar_width(thumbnail_width: int) -> int:
    return max(96, thumbnail_width // 8)


def _colour_bar(height: int, width: int, scale: AttentionScale) -> np.ndarray:
    """(height, width, 3) uint8: a vertical gradient (2^limit at the top) with its tick values."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    margin = max(FONT_PX, height // 20)
    bar_left, bar_right = 8, 8 + max(12, width // 5)
    span = max(1, height - 2 * margin)
    gradient = scale.colours(np.linspace(1.0, 0.0, span))
    strip = np.repeat(np.round(gradient).astype(np.uint8)[:, None, :], bar_right - bar_left, axis=1)
    canvas.paste(Image.fromarray(strip), (bar_left, margin))
    for position, _, label in scale.ticks():
        y = margin + round((1.0 - position) * (span - 1))
        draw.line([(bar_right, y), (bar_right + 4, y)], fill=(0, 0, 0))
        draw.text((bar_right + 6, y), label, fill=(0, 0, 0), font=font, anchor="lm")
    draw.text((bar_left, margin // 2), "x mean", fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas)


def _title_strip(width: int, lines: list[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, title_height(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = _font()
    for index, line in enumerate(lines):
        draw.text((6, 4 + index * TITLE_LINE_PX), line, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def title_height(lines: list[str] | None) -> int:
    """Pixels the title strip takes above the thumbnail (0 without a title)."""
    return 6 + TITLE_LINE_PX * len(lines) if lines else 0


def render_heatmap(
    thumbnail,
    thumbnail_downsample: float,
    coords: np.ndarray,
    patch_size_level0: float,
    weights: np.ndarray,
    alpha: float = 0.5,
    title: list[str] | None = None,
    scale: AttentionScale | None = None,
):
    """Blend per-patch attention `weights` over `thumbnail` on the numeric scale of `AttentionScale`.

    Args:
        thumbnail: PIL image of the whole slide.
        thumbnail_downsample: level-0 pixels per thumbnail pixel.
        coords: (n, 2) level-0 (x, y) of each patch's top-left corner.
        patch_size_level0: patch side in level-0 pixels.
        weights: (n,) non-negative attention (any overall scale: colours show weight / mean weight).
        alpha: opacity of the colours over the tissue.
        title: lines written in a strip above the picture.
        scale: the colour scale (default: fitted to these weights).

    Returns:
        RGB PIL image: `title_height(title)` px of title, then the thumbnail (pixels outside every
        patch unchanged) beside a colour bar `colour_bar_width(width)` px wide.
    """
    from PIL import Image

    coords = np.asarray(coords, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64).ravel()
    _validate(coords, weights, patch_size_level0, thumbnail_downsample)
    scale = scale or AttentionScale.for_weights(weights)
    base = np.asarray(thumbnail.convert("RGB"), dtype=np.float64)
    values, covered = _paint_patches(base.shape[:2], coords, scale.positions(weights), patch_size_level0,
                                     thumbnail_downsample)
    colours = scale.colours(values)
    blended = base.copy()
    blended[covered] = (1 - alpha) * base[covered] + alpha * colours[covered]
    bar = _colour_bar(base.shape[0], colour_bar_width(base.shape[1]), scale)
    canvas = np.concatenate([np.round(blended).astype(np.uint8), bar], axis=1)
    if title:
        canvas = np.concatenate([_title_strip(canvas.shape[1], title), canvas], axis=0)
    return Image.fromarray(canvas)
