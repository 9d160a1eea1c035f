"""Pairing ingested feature files with their pictures: the raw slide and a thumbnail.

A raw slide is found in `--wsi-dir` (searched recursively, as GDC downloads put each slide in
its own folder) by the slide id or the feature file's stem, else taken from the `wsi_path`
attribute `extract` writes when that file still exists. A thumbnail is the one `extract`
wrote beside the feature file (`thumbnails/<slide_id>.png`, scale in `thumbnail_downsample`).
"""

from __future__ import annotations

from pathlib import Path

from threads_search.atlas.slide_images import SlideImages
from threads_search.errors import InputError
from threads_search.readers.patch_features import FeatureFileInfo

# File types OpenSlide opens as one file (DICOM folders and MIRAX companions are found through their index file).
WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu", ".dcm")


def wsi_files_by_stem(wsi_dir: Path) -> dict[str, Path]:
    """Slide files under `wsi_dir` by file stem; two files with one stem are refused."""
    wsi_dir = Path(wsi_dir)
    if not wsi_dir.is_dir():
        raise InputError(f"--wsi-dir {wsi_dir}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(wsi_dir.rglob("*")):
        if path.suffix.lower() not in WSI_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise InputError(f"--wsi-dir {wsi_dir}: slide files {found[path.stem]} and {path} share the stem "
                             f"'{path.stem}'; keep one")
        found[path.stem] = path.resolve()
    return found


def _check_readable(path: Path, slide_id: str) -> Path:
    import openslide

    if openslide.OpenSlide.detect_format(str(path)) is None:
        raise InputError(f"{path}: OpenSlide cannot read this file (paired with slide '{slide_id}' by its name)")
    return path


def _extract_thumbnail(info: FeatureFileInfo) -> tuple[Path | None, float | None]:
    path = info.path.parent / "thumbnails" / f"{info.slide_id}.png"
    downsample = info.attrs.get("thumbnail_downsample")
    if path.is_file() and isinstance(downsample, (int, float)) and downsample > 0:
        return path.resolve(), float(downsample)
    return None, None


def find_slide_images(infos: list[FeatureFileInfo], wsi_dir: Path | None) -> tuple[list[SlideImages], list[str]]:
    """What is known about each slide's pictures, and warnings (slides `--wsi-dir` has no file for)."""
    by_stem = wsi_files_by_stem(wsi_dir) if wsi_dir is not None else {}
    images, unmatched = [], []
    for info in infos:
        wsi = by_stem.get(info.slide_id) or by_stem.get(info.path.stem)
        if wsi is None and wsi_dir is not None:
            unmatched.append(info.slide_id)
        if wsi is None and isinstance(info.attrs.get("wsi_path"), str) and Path(info.attrs["wsi_path"]).is_file():
            wsi = Path(info.attrs["wsi_path"])
        if wsi is not None:
            _check_readable(wsi, info.slide_id)
        thumbnail, downsample = _extract_thumbnail(info)
        images.append(SlideImages(info.slide_id, wsi, thumbnail, downsample))
    warnings = []
    if unmatched:
        warnings.append(f"--wsi-dir {wsi_dir}: {len(unmatched)} of {len(infos)} slide(s) have no raw slide there "
                        f"(first: '{unmatched[0]}'); they are shown without an image")
    return images, warnings
