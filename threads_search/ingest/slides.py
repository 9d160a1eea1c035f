"""`ingest slides`: patch-feature files -> the atlas's `slides` and `items` tables.

Files are validated one at a time (features streamed, never held together), so memory stays
bounded whatever the number of slides; nothing is written until every file has passed, and
then everything is written in one transaction.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from threads_search.atlas import layout
from threads_search.atlas.items import upsert_items
from threads_search.atlas.metadata import apply_metadata, metadata_changes
from threads_search.atlas.slides import slide_fingerprints, write_slides
from threads_search.atlas.store import Atlas
from threads_search.atomic import copy_file_atomic
from threads_search.errors import InputError
from threads_search.atlas.slide_images import images_would_change, record_slide_images
from threads_search.ingest.coverage import coverage_warnings
from threads_search.ingest.plan import IngestReport, plan_writes
from threads_search.ingest.slide_images import find_slide_images
from threads_search.readers.metadata_csv import read_metadata_csv
from threads_search.readers.patch_features import FeatureFileInfo, expand_feature_paths, inspect_feature_file

Progress = Callable[[int, int, str], None]


def _check_consistent(atlas: Atlas, infos: list[FeatureFileInfo]) -> None:
    atlas_dim = atlas.meta("feature_dim")
    expected_dim = int(atlas_dim) if atlas_dim else infos[0].feature_dim
    first_of_dim = infos[0] if not atlas_dim else None
    for info in infos:
        if info.feature_dim != expected_dim:
            origin = f"{first_of_dim.path} has {expected_dim}" if first_of_dim else f"the atlas holds {expected_dim}-d features"
            raise InputError(f"{info.path}: feature dimension {info.feature_dim} differs ({origin})")
    atlas_encoder = atlas.meta("patch_encoder")
    encoders = {info.patch_encoder for info in infos if info.patch_encoder}
    if atlas_encoder:
        encoders.add(atlas_encoder)
    if len(encoders) > 1:
        offender = next(i for i in infos if i.patch_encoder and i.patch_encoder != (atlas_encoder or infos[0].patch_encoder)) \
            if any(i.patch_encoder for i in infos) else infos[0]
        raise InputError(f"{offender.path}: patch encoder '{offender.patch_encoder}' differs from "
                         f"'{atlas_encoder or next(iter(encoders - {offender.patch_encoder}))}'; one atlas holds one patch encoder")


def _inspect_all(paths: list[Path], progress: Progress | None) -> list[FeatureFileInfo]:
    infos: list[FeatureFileInfo] = []
    first_path_of: dict[str, Path] = {}
    for done, path in enumerate(paths, start=1):
        info = inspect_feature_file(path)
        if info.slide_id in first_path_of:
            raise InputError(f"{path}: duplicate slide id '{info.slide_id}' (also {first_path_of[info.slide_id]})")
        first_path_of[info.slide_id] = path
        infos.append(info)
        if progress:
            progress(done, len(paths), info.slide_id)
    return infos


def _copy_into_atlas(atlas: Atlas, info: FeatureFileInfo) -> str:
    relative = layout.copied_features(info.slide_id, info.fingerprint, info.path.suffix)
    copy_file_atomic(info.path, atlas.path(relative))
    return relative


def ingest_slides(atlas: Atlas, feature_paths: list[str | os.PathLike], metadata_csv: str | os.PathLike | None = None,
                  copy: bool = False, replace: bool = False, strict: bool = False,
                  progress: Progress | None = None, wsi_dir: str | os.PathLike | None = None) -> IngestReport:
    """Validate feature files, then record them (and their metadata) in one transaction.

    `wsi_dir` pairs slides with raw slide files by name (see `ingest.slide_images`), for
    every given file, including those already in the atlas.
    """
    report = IngestReport()
    paths = expand_feature_paths(list(feature_paths))
    metadata = read_metadata_csv(metadata_csv, "slide_id") if metadata_csv else None
    infos = _inspect_all(paths, progress)
    _check_consistent(atlas, infos)
    images, image_warnings = find_slide_images(infos, Path(wsi_dir) if wsi_dir is not None else None)
    report.warnings += image_warnings

    patient_of: dict[str, str] = {}
    sample_of: dict[str, str | None] = {}
    if metadata is not None:
        keys = metadata.keys
        if metadata.key_column == "slide_id":
            patients, samples = metadata.column("patient_id"), metadata.column("sample_id")
            patient_of = {k: str(p) for k, p in zip(keys, patients) if p is not None}
            sample_of = {k: (str(s) if s is not None else None) for k, s in zip(keys, samples)}
            report.warnings += coverage_warnings(metadata, [i.slide_id for i in infos], infos[0].path.parent,
                                                 "feature file", strict, {i.slide_id: i.path for i in infos})

    existing = slide_fingerprints(atlas)
    chosen = plan_writes([i.slide_id for i in infos], [i.fingerprint for i in infos], existing, replace, report,
                         lambda k: f"{infos[k].path}: slide id '{infos[k].slide_id}' is already in the atlas from a different file")
    to_write = [infos[k] for k in chosen]
    if not to_write and not images_would_change(atlas, images) and (
            metadata is None or not metadata_changes(atlas, metadata, "slides")[1]):
        report.metadata_rows_matched = metadata_changes(atlas, metadata, "slides")[0] if metadata is not None else 0
        return report  # a re-run: nothing to write, so nothing is written

    copied: list[Path] = []
    try:
        with atlas.transaction():
            stored_paths = []
            for info in to_write:
                stored_paths.append(_copy_into_atlas(atlas, info) if copy else str(info.path))
                if copy:
                    copied.append(atlas.path(stored_paths[-1]))
            write_slides(atlas, to_write, stored_paths, copy)
            record_slide_images(atlas, images)
            upsert_items(atlas, "slides", [i.slide_id for i in to_write], [patient_of.get(i.slide_id) for i in to_write],
                         [sample_of.get(i.slide_id) for i in to_write])
            if infos:
                if not atlas.meta("feature_dim"):
                    atlas.set_meta("feature_dim", str(infos[0].feature_dim))
                encoder = next((i.patch_encoder for i in infos if i.patch_encoder), None)
                if encoder and not atlas.meta("patch_encoder"):
                    atlas.set_meta("patch_encoder", encoder)
            if metadata is not None:
                report.metadata_rows_matched = apply_metadata(atlas, metadata, "slides")
    except BaseException:
        for path in copied:
            path.unlink(missing_ok=True)
        raise
    return report
