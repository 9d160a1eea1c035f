"""A low-resolution RGB view of a whole slide, read in bounded memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.wsi.reader import Slide

# Regions are read at the chosen pyramid level in chunks of at most this many pixels a side,
# so a slide whose only level is 100k px wide never needs a 30 GB buffer.
READ_CHUNK_PX = 4096


@dataclass
class Thumbnail:
    """RGB thumbnail `(height, width, 3) uint8` and its scale.

    `downsample` is level-0 pixels per thumbnail pixel (the same along x and y).
    """

    rgb: np.ndarray
    downsample: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in thumbnail pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


def thumbnail_shape(level0_size: tuple[int, int], max_side: int) -> tuple[tuple[int, int], float]:
    """((width, height), downsample) of a thumbnail whose longer side is at most `max_side`.

    Slides smaller than `max_side` are not upsampled (downsample 1).
    """
    width, height = level0_size
    downsample = max(1.0, max(width, height) / max_side)
    size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
    return size, downsample


def read_thumbnail(slide: Slide, max_side: int = 1536) -> Thumbnail:
    """Read the whole slide at about `max_side` px on its longer side.

    Uses the lowest-resolution pyramid level that is still at least as fine as the
    thumbnail, reads it in chunks and downsizes each chunk (antialiased) into place.
    """
    from PIL import Image

    (thumb_w, thumb_h), downsample = thumbnail_shape(slide.dimensions, max_side)
    level = slide.handle.get_best_level_for_downsample(downsample)
    level_downsample = slide.level_downsamples[level]
    level_w, level_h = slide.level_dimensions[level]
    scale = level_downsample / downsample  # thumbnail px per level px
    canvas = np.full((thumb_h, thumb_w, 3), 255, dtype=np.uint8)
    for y0 in range(0, level_h, READ_CHUNK_PX):
        for x0 in range(0, level_w, READ_CHUNK_PX):
            x1, y1 = min(x0 + READ_CHUNK_PX, level_w), min(y0 + READ_CHUNK_PX, level_h)
            # Chunk edges map to rounded thumbnail edges, so neighbouring chunks tile exactly.
            tx0, ty0 = round(x0 * scale), round(y0 * scale)
            tx1, ty1 = min(thumb_w, round(x1 * scale)), min(thumb_h, round(y1 * scale))
            if tx1 <= tx0 or ty1 <= ty0:
                continue
            location = (round(x0 * level_downsample), round(y0 * level_downsample))
            chunk = slide.read_rgb(location, level, (x1 - x0, y1 - y0))
            resized = Image.fromarray(chunk).resize((tx1 - tx0, ty1 - ty0), Image.Resampling.BILINEAR)
            canvas[ty0:ty1, tx0:tx1] = np.asarray(resized)
    return Thumbnail(rgb=canvas, downsample=downsample)
