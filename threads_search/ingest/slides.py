"""`ingest slides`: patch-feature files -> the atlas's `slides` and `items` tables.

Files are validated one at a time (features streamed, never held together), so memory stays
bounded whatever the number of slides; nothing is written until every file has passed, and
then everything is written in one transaction.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from threads_search.atlas import layout
from threads_search.atlas.items import pair_items, upsert_items, vid_by_item
from threads_search.atlas.metadata import apply_metadata, metadata_changes
from threads_search.atlas.slides import slide_fingerprints, write_slides
from threads_search.atlas.store import Atlas
from threads_search.atomic import copy_file_atomic
from threads_search.encoders.patch.names import canonical_patch_encoder, same_patch_encoder
from threads_search.errors import InputError
from threads_search.atlas.slide_images import images_would_change, record_slide_images
from threads_search.ingest.coverage import coverage_warnings
from threads_search.ingest.plan import IngestReport, plan_writes
from threads_search.ingest.slide_images import find_slide_images
from threads_search.readers.metadata_csv import read_metadata_csv
from threads_search.readers.patch_features import (FEATURE_FILES, EmptyBagError, FeatureFileInfo, expand_feature_paths,
                                                   inspect_feature_file)
from threads_search.readers.paths import folder_encoder

Progress = Callable[[int, int, str], None]


def _check_consistent(atlas: Atlas, infos: list[FeatureFileInfo]) -> None:
    atlas_dim = atlas.meta("feature_dim")
    expected_dim = int(atlas_dim) if atlas_dim else infos[0].feature_dim
    first_of_dim = infos[0] if not atlas_dim else None
    for info in infos:
        if info.feature_dim != expected_dim:
            origin = f"{first_of_dim.path} has {expected_dim}" if first_of_dim else f"the atlas holds {expected_dim}-d features"
            raise InputError(f"{info.path}: feature dimension {info.feature_dim} differs ({origin})")


def _named_by_folders(infos: list[FeatureFileInfo], paths: list[Path], declared: str | None) -> list[FeatureFileInfo]:
    """The files of a TRIDENT `features_<encoder>` folder with that encoder (TRIDENT's files name
    none); a file or `--encoder` naming another is refused, as `--encoder` against a file is."""
    named = {path.resolve(): folder_encoder(path, FEATURE_FILES) for path in paths}
    named_infos = []
    for info in infos:
        encoder = canonical_patch_encoder(named.get(info.path))
        if encoder is None:
            named_infos.append(info)
            continue
        folder = info.path.parent.name
        if info.patch_encoder and not same_patch_encoder(info.patch_encoder, encoder):
            raise InputError(f"{info.path}: names patch encoder '{info.patch_encoder}', not '{encoder}' of its folder {folder}")
        if declared and not same_patch_encoder(declared, encoder):
            raise InputError(f"{info.path}: is in {folder}, features of '{encoder}', not of the declared --encoder "
                             f"'{canonical_patch_encoder(declared)}'")
        named_infos.append(dataclasses.replace(info, patch_encoder=info.patch_encoder or encoder))
    return named_infos


def _declare_encoder(atlas: Atlas, infos: list[FeatureFileInfo], declared: str | None) -> list[FeatureFileInfo]:
    """The files with their patch encoder: as named (any spelling of the alias table), or as
    `--encoder` declares for files that name none (CLAM). One atlas holds one encoder; a file
    that names none beside ones that do (in the batch or the atlas) is refused unless declared."""
    declared = canonical_patch_encoder(declared)
    for info in infos:
        if declared and info.patch_encoder and not same_patch_encoder(info.patch_encoder, declared):
            raise InputError(f"{info.path}: names patch encoder '{info.patch_encoder}', not the declared --encoder '{declared}'")
    if declared:
        infos = [info if info.patch_encoder else dataclasses.replace(info, patch_encoder=declared) for info in infos]
    atlas_encoder = canonical_patch_encoder(atlas.meta("patch_encoder"))
    named = next((info for info in infos if info.patch_encoder), None)
    unnamed = next((info for info in infos if not info.patch_encoder), None)
    reference = atlas_encoder or (canonical_patch_encoder(named.patch_encoder) if named else None)
    for info in infos:
        if info.patch_encoder and not same_patch_encoder(info.patch_encoder, reference):
            origin = "the atlas's" if atlas_encoder else f"{named.path}'s"
            raise InputError(f"{info.path}: patch encoder '{info.patch_encoder}' differs from {origin} '{reference}'; "
                             f"one atlas holds one patch encoder")
    if unnamed is not None and reference:
        origin = "the atlas holds" if atlas_encoder else f"{named.path} names"
        raise InputError(f"{unnamed.path}: names no patch encoder while {origin} '{reference}'; if it is the same, "
                         f"declare it with --encoder {reference}")
    if named is not None and not atlas_encoder and atlas.meta("feature_dim") and not declared:
        raise InputError(f"{named.path}: names patch encoder '{named.patch_encoder}' but the atlas's slides name none; "
                         f"if they are the same, declare it with --encoder {canonical_patch_encoder(named.patch_encoder)}")
    return infos


def _inspect_all(paths: list[Path], progress: Progress | None, strict: bool = True,
                 notes: list[str] | None = None) -> list[FeatureFileInfo]:
    """Every file checked; without `strict`, a 0-patch file is skipped with a note in `notes`."""
    infos: list[FeatureFileInfo] = []
    first_path_of: dict[str, Path] = {}
    for done, path in enumerate(paths, start=1):
        try:
            info = inspect_feature_file(path)
        except EmptyBagError as error:
            if strict or notes is None:
                raise
            notes.append(f"{error}; skipped (--strict refuses it)")
            continue
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
                  progress: Progress | None = None, wsi_dir: str | os.PathLike | None = None,
                  encoder: str | None = None) -> IngestReport:
    """Validate feature files, then record them (and their metadata) in one transaction.

    `wsi_dir` pairs slides with raw slide files by name (see `ingest.slide_images`), for
    every given file, including those already in the atlas. `encoder` declares the patch
    encoder of files that name none (CLAM); it is recorded and later ingests must match it.
    It also chooses the `features_<encoder>` folder of a TRIDENT job folder that holds several
    (see `readers.paths`); a TRIDENT folder's name is the encoder of the files in it.
    """
    report = IngestReport()
    paths = expand_feature_paths(list(feature_paths), encoder, canonical_patch_encoder)
    metadata = read_metadata_csv(metadata_csv, "slide_id") if metadata_csv else None
    infos = _inspect_all(paths, progress, strict, report.warnings)
    if not infos:
        others = f", as every other of the {len(paths)} files given" if len(paths) > 1 else ""
        raise InputError(f"{paths[0]}: empty bag (0 patches){others}; nothing to ingest")
    _check_consistent(atlas, infos)
    infos = _declare_encoder(atlas, _named_by_folders(infos, paths, encoder), encoder)
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
            # Slides known by precomputed embeddings only keep their vid (and so those embeddings).
            embedding_only = set(vid_by_item(atlas, "slides")) - set(existing)
            for write, group in ((upsert_items, [i for i in to_write if i.slide_id not in embedding_only]),
                                 (pair_items, [i for i in to_write if i.slide_id in embedding_only])):
                write(atlas, "slides", [i.slide_id for i in group], [patient_of.get(i.slide_id) for i in group],
                      [sample_of.get(i.slide_id) for i in group])
            if infos:
                if not atlas.meta("feature_dim"):
                    atlas.set_meta("feature_dim", str(infos[0].feature_dim))
                named = next((i.patch_encoder for i in infos if i.patch_encoder), None)
                if named and not atlas.meta("patch_encoder"):
                    atlas.set_meta("patch_encoder", canonical_patch_encoder(named))
            if metadata is not None:
                report.metadata_rows_matched = apply_metadata(atlas, metadata, "slides")
    except BaseException:
        for path in copied:
            path.unlink(missing_ok=True)
        raise
    return report
