"""Where a slide's pictures are: its raw WSI and a thumbnail, recorded on the `slides` table.

Three nullable columns of `slides` (added by the schema's version-2 migration):

    wsi_path              VARCHAR  absolute path of the raw slide (`ingest --wsi-dir`, or extract's record)
    thumbnail_path        VARCHAR  absolute path of a whole-slide picture (extract's `thumbnails/<id>.png`)
    thumbnail_downsample  DOUBLE   level-0 px per thumbnail px
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from threads_search.atlas.store import Atlas

IMAGE_COLUMNS = ("wsi_path", "thumbnail_path", "thumbnail_downsample")


@dataclass(frozen=True)
class SlideImages:
    """The pictures known for one slide (any field may be None)."""

    slide_id: str
    wsi_path: Path | None = None
    thumbnail_path: Path | None = None
    thumbnail_downsample: float | None = None


def record_slide_images(atlas: Atlas, images: list[SlideImages]) -> int:
    """Store what is known; a None field leaves the stored value as it was. Returns rows updated."""
    updated = 0
    for image in images:
        values = {"wsi_path": str(image.wsi_path) if image.wsi_path else None,
                  "thumbnail_path": str(image.thumbnail_path) if image.thumbnail_path else None,
                  "thumbnail_downsample": image.thumbnail_downsample if image.thumbnail_path else None}
        known = [name for name in IMAGE_COLUMNS if values[name] is not None]
        if not known:
            continue
        assignments = ", ".join(f"{name} = ?" for name in known)  # names from IMAGE_COLUMNS only
        atlas.sql(f"UPDATE slides SET {assignments} WHERE slide_id = ?", [*(values[n] for n in known), image.slide_id])
        updated += 1
    return updated


def images_would_change(atlas: Atlas, images: list[SlideImages]) -> bool:
    """Whether recording `images` would change anything (a re-run with the same --wsi-dir changes nothing)."""
    for image in images:
        recorded = slide_images(atlas, image.slide_id)
        for name in IMAGE_COLUMNS:
            new = getattr(image, name)
            if new is not None and new != getattr(recorded, name):
                return True
    return False


def slide_images(atlas: Atlas, slide_id: str) -> SlideImages:
    """The recorded pictures of one slide (fields None where unknown)."""
    row = atlas.sql("SELECT wsi_path, thumbnail_path, thumbnail_downsample FROM slides WHERE slide_id = ?",
                    [slide_id]).fetchone()
    if row is None:
        return SlideImages(slide_id)
    wsi, thumbnail, downsample = row
    return SlideImages(slide_id, Path(wsi) if wsi else None, Path(thumbnail) if thumbnail else None, downsample)


def image_availability(atlas: Atlas) -> dict[str, tuple[bool, bool]]:
    """slide_id -> (has a recorded thumbnail, has a recorded raw slide), for slides with either."""
    rows = atlas.sql("SELECT slide_id, thumbnail_path IS NOT NULL, wsi_path IS NOT NULL FROM slides "
                     "WHERE thumbnail_path IS NOT NULL OR wsi_path IS NOT NULL").fetchall()
    return {slide_id: (bool(thumbnail), bool(wsi)) for slide_id, thumbnail, wsi in rows}
