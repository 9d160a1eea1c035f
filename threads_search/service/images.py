"""Slide pictures for the page, addressed by item id only: thumbnails, DeepZoom tiles, attention.

A thumbnail is the one `extract` wrote (recorded at ingest), else one made from the recorded
raw slide on first request and cached as `ATLAS/thumbnails/<slide>-<hash>.png` (kept in memory
when the folder is not writable). DeepZoom tiles come from OpenSlide's `DeepZoomGenerator` over
the recorded raw slide; open slides are kept in a small LRU. Paths come from the atlas's
records, never from a request.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from threads_search.atlas.slide_images import SlideImages, slide_images
from threads_search.atlas.layout import safe_file_name
from threads_search.atomic import atomic_path
from threads_search.lru import LruCache
from threads_search.atlas.store import Atlas
from threads_search.service.http_errors import NotFoundError

TILE_SIZE = 254  # + 1 px overlap on each side: 256 px tiles, OpenSlide's DeepZoom default
TILE_OVERLAP = 1
TILE_FORMAT = "jpeg"
TILE_QUALITY = 80
CACHED_THUMBNAIL_SIDE = 1024
MAX_OPEN_SLIDES = 16


@dataclass
class OpenWsi:
    """An open raw slide with its DeepZoom generator and resolution."""

    path: Path
    slide: object  # threads_search.wsi.reader.Slide
    deepzoom: object  # openslide.deepzoom.DeepZoomGenerator
    mpp: float | None
    mpp_source: str | None


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class SlideImageStore:
    """Thumbnails and tiles of one atlas's slides."""

    def __init__(self, atlas_root: Path) -> None:
        self.cache_dir = Path(atlas_root) / "thumbnails"
        self._slides = LruCache(MAX_OPEN_SLIDES, on_evict=lambda wsi: wsi.slide.close())
        self._thumbnails = LruCache(512)
        self._memory_thumbnails = LruCache(64)

    # --- raw slides ------------------------------------------------------------------

    def open_wsi(self, images: SlideImages) -> OpenWsi:
        """The recorded raw slide, opened once; 404 when none is recorded or it has vanished."""
        if images.wsi_path is None:
            raise NotFoundError(f"slide '{images.slide_id}' has no raw slide recorded "
                                f"(pair one with `threads-search ingest slides ... --wsi-dir DIR`)")
        if not images.wsi_path.is_file():
            raise NotFoundError(f"slide '{images.slide_id}': its raw slide {images.wsi_path} is no longer there")
        return self._slides.get(str(images.wsi_path), lambda: self._open(images))

    def _open(self, images: SlideImages) -> OpenWsi:
        from openslide.deepzoom import DeepZoomGenerator

        from threads_search.errors import InputError
        from threads_search.wsi.reader import open_slide

        try:
            slide = open_slide(images.wsi_path)
            mpp, source = slide.mpp, slide.mpp_source
        except InputError as error:
            if "microns-per-pixel" not in str(error):
                raise
            slide = open_slide(images.wsi_path, mpp=1.0)  # tiles need no resolution; the scale bar does
            mpp, source = None, None
        deepzoom = DeepZoomGenerator(slide.handle, tile_size=TILE_SIZE, overlap=TILE_OVERLAP, limit_bounds=False)
        return OpenWsi(images.wsi_path, slide, deepzoom, mpp, source)

    def describe(self, images: SlideImages) -> dict:
        """What the viewer needs: level-0 size, resolution, DeepZoom levels (None without a raw slide)."""
        if images.wsi_path is None or not images.wsi_path.is_file():
            return None
        wsi = self.open_wsi(images)
        width, height = wsi.slide.dimensions
        return {"width": width, "height": height, "mpp": wsi.mpp, "mpp_source": wsi.mpp_source,
                "levels": wsi.deepzoom.level_count, "tile_size": TILE_SIZE, "overlap": TILE_OVERLAP,
                "format": TILE_FORMAT, "file": wsi.path.name}

    def dzi(self, images: SlideImages) -> str:
        return self.open_wsi(images).deepzoom.get_dzi(TILE_FORMAT)

    def tile(self, images: SlideImages, level: int, column: int, row: int) -> bytes:
        """One JPEG tile; 404 for an address outside the pyramid."""
        deepzoom = self.open_wsi(images).deepzoom
        if not 0 <= level < deepzoom.level_count:
            raise NotFoundError(f"slide '{images.slide_id}': no DeepZoom level {level} (0-{deepzoom.level_count - 1})")
        columns, rows = deepzoom.level_tiles[level]
        if not (0 <= column < columns and 0 <= row < rows):
            raise NotFoundError(f"slide '{images.slide_id}': no tile {column}_{row} at level {level} "
                                f"({columns} x {rows} tiles)")
        tile = deepzoom.get_tile(level, (column, row))
        buffer = io.BytesIO()
        tile.save(buffer, format="JPEG", quality=TILE_QUALITY)
        return buffer.getvalue()

    # --- thumbnails ------------------------------------------------------------------

    def _cached_file(self, slide_id: str, wsi: Path) -> Path:
        digest = hashlib.blake2b(f"{slide_id}\0{wsi}".encode(), digest_size=6).hexdigest()
        return self.cache_dir / f"{safe_file_name(slide_id)[:80]}-{digest}.png"

    def _from_wsi(self, images: SlideImages):
        """A picture of the raw slide, made once and cached in the atlas folder."""
        from PIL import Image

        from threads_search.wsi.thumbnail import read_thumbnail

        cached = self._cached_file(images.slide_id, images.wsi_path)
        if cached.is_file() and cached.stat().st_mtime_ns >= images.wsi_path.stat().st_mtime_ns:
            with Image.open(cached) as image:
                return image.convert("RGB")
        wsi = self.open_wsi(images)
        image = Image.fromarray(read_thumbnail(wsi.slide, CACHED_THUMBNAIL_SIDE).rgb)
        try:
            with atomic_path(cached) as temporary:
                image.save(temporary, format="PNG")
        except OSError:  # a read-only atlas folder: keep it in memory instead
            self._memory_thumbnails.get(str(cached), lambda: image)
        return image

    def thumbnail_png(self, images: SlideImages, max_side: int) -> bytes:
        """PNG of the slide at most `max_side` px on its longer side; 404 when no picture is known."""
        from PIL import Image

        source = images.thumbnail_path if images.thumbnail_path and images.thumbnail_path.is_file() else None
        if source is None and images.wsi_path is None:
            raise NotFoundError(f"slide '{images.slide_id}' has no thumbnail or raw slide recorded "
                                f"(pair one with `threads-search ingest slides ... --wsi-dir DIR`)")
        origin = source or images.wsi_path
        if not origin.is_file():
            raise NotFoundError(f"slide '{images.slide_id}': its raw slide {origin} is no longer there")
        key = (str(origin), origin.stat().st_mtime_ns, max_side)

        def make() -> bytes:
            if source is not None:
                with Image.open(source) as opened:
                    image = opened.convert("RGB")
            else:
                image = self._from_wsi(images)
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return _png(image)

        return self._thumbnails.get(key, make)


def slide_of_vid(atlas: Atlas, vid: int) -> SlideImages:
    """The recorded pictures of the slide with this vector id; 404 for an unknown or non-slide id."""
    from threads_search.atlas.facets import item_by_vid

    item = item_by_vid(atlas, vid)
    if item is None or item[0] != "slides":
        raise NotFoundError(f"no slide with item id {vid} in this atlas (ids change when a slide is re-ingested; "
                            f"search again)")
    return slide_images(atlas, item[1])
