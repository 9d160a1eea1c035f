"""`remove`: take items out of the atlas, chosen by a filter or by a file of ids.

The item rows (with their slide and profile rows) go in one transaction; from then on no
reader sees them. Their vectors are then taken out of every index (`index` does the same on
its next run, should this one be interrupted). Files nothing references any more (copied
feature files, replaced index files) are deleted by the writer's garbage collection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas.indexes import indexed_models
from threads_search.atlas.items import delete_items, find_items
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.atlas.where import check_where
from threads_search.errors import InputError

MAX_ID_FILE_BYTES = 64 << 20


@dataclass
class RemoveReport:
    removed: dict[str, int] = field(default_factory=dict)
    unknown_ids: list[str] = field(default_factory=list)
    reindexed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_id_file(path: str | os.PathLike) -> list[str]:
    """Item ids, one per line (blank lines and `#` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--ids {path}: no such file")
    if path.stat().st_size > MAX_ID_FILE_BYTES:
        raise InputError(f"--ids {path}: larger than {MAX_ID_FILE_BYTES >> 20} MiB")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InputError(f"--ids {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def remove_items(atlas: Atlas, where_sql: str | None = None, ids: list[str] | None = None,
                 modality: str | None = None) -> RemoveReport:
    """Remove the items a filter selects, or the items with the given ids (of `modality`, or any)."""
    if (where_sql is None) == (ids is None):
        raise InputError("give exactly one of --where and --ids")
    modalities = (modality,) if modality else MODALITIES
    report = RemoveReport()
    if ids is not None:
        found = find_items(atlas, ids, modalities)
        report.unknown_ids = sorted(set(ids) - {item for item, _ in found})
        vids = np.array(sorted(vid for _, vid in found), np.int64)
    else:
        where = check_where(atlas, where_sql)
        vids = np.concatenate([atlas.filter_vids(where, m) for m in modalities])
    if vids.size:
        with atlas.transaction():
            report.removed = delete_items(atlas, vids)
    from threads_search.jobs.index import build_atlas_indexes

    # Also when nothing was left to delete: a re-run after an interruption finishes the indexes.
    for model_id in indexed_models(atlas):
        index_report = build_atlas_indexes(atlas, model_id)
        report.notes += index_report.notes
        if index_report.removed or index_report.built:
            report.reindexed.append(model_id)
    return report
