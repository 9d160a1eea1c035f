"""`check ATLAS [--repair]`: every record of the atlas against its files, and the files against the records.

Verified: the database opens; the published generation readers use exists and opens; every
embedding part, profile batch and index file exists, is a regular readable file of the recorded
size and row count, and matches the checksum recorded when it was written; every model folder
holds the model it is recorded as (content hash); every slide's feature file is still the one
ingested; no file is left that nothing references, and no temporary file of a dead process.

`repair` makes the atlas consistent again without guessing: a damaged `atlas.duckdb` is
restored from the newest published generation; records whose files are damaged are dropped
(with the records that depend on them), so that `embed` / `index` / `ingest` rebuild exactly
what was lost; leftovers are deleted; a fresh generation is published. What it cannot rebuild
itself (a user's feature file that changed) is reported with the command that does.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from threads_search.atlas.generations import collect_garbage, published_database, read_current
from threads_search.atlas.layout import DATABASE_NAME
from threads_search.atlas.store import Atlas, open_atlas
from threads_search.atomic import file_checksum, is_temporary
from threads_search.errors import AtlasDamagedError, ThreadsSearchError


@dataclass
class Problem:
    path: str
    message: str
    fix: str  # what --repair did, or the command that fixes it
    repaired: bool = False


@dataclass
class CheckReport:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    removed_leftovers: list[str] = field(default_factory=list)

    @property
    def outstanding(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]


def check_atlas(root: str | Path, repair: bool = False) -> CheckReport:
    """Verify (and with `repair`, mend) the atlas at `root`."""
    root = Path(root)
    report = CheckReport(root=root)
    damage = _probe_database(root)
    if not repair:  # a reader: changes nothing, waits for no writer
        if damage:
            report.problems.append(Problem(DATABASE_NAME, damage, f"threads-search check {root} --repair"))
        atlas = open_atlas(root, read_only=True)
    else:
        if damage:
            _restore_database(root, report, damage)
        atlas = open_atlas(root)
    with atlas:
        _check_published(atlas, report, repair)
        _check_parts(atlas, report, repair)
        _check_batches(atlas, report, repair)
        _check_indexes(atlas, report, repair)
        _check_models(atlas, report, repair)
        _check_slides(atlas, report)
        _check_leftovers(atlas, report, repair)
        if repair and any(p.repaired for p in report.problems):
            atlas.publish()
    return report


def _probe_database(root: Path) -> str | None:
    """What is wrong with the writer's database, read whole (None if sound, or while a writer holds it)."""
    import duckdb

    try:
        connection = duckdb.connect(str(root / DATABASE_NAME), read_only=True)
    except duckdb.Error as error:
        message = str(error).splitlines()[0]
        return None if "lock" in message.lower() else f"not a readable atlas database ({message[:160]})"
    try:
        tables = [r[0] for r in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        for table in tables:
            connection.execute(f'SELECT * FROM "{table}"').fetchall()
    except duckdb.Error as error:
        return f"damaged ({str(error).splitlines()[0][:160]})"
    finally:
        connection.close()
    return None


def _restore_database(root: Path, report: CheckReport, reason: str) -> None:
    published = published_database(root)
    if published is None or not published[0].is_file():
        raise AtlasDamagedError(f"{root / DATABASE_NAME}: damaged and no published generation to restore it from "
                                f"({reason.split('; run')[0]})")
    damaged = root / f"{DATABASE_NAME}.damaged-{int(time.time())}"
    (root / DATABASE_NAME).rename(damaged)
    (root / f"{DATABASE_NAME}.wal").unlink(missing_ok=True)
    shutil.copyfile(published[0], root / DATABASE_NAME)
    report.problems.append(Problem(DATABASE_NAME, reason.split("; run")[0],
                                   f"restored from generation {published[1]}; the damaged file is kept as {damaged.name}",
                                   repaired=True))


def _file_problem(path: Path, checksum: str | None) -> str | None:
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "not a regular file"
    if checksum and file_checksum(path) != checksum:
        return "content differs from the checksum recorded when it was written"
    return None


def _check_published(atlas: Atlas, report: CheckReport, repair: bool) -> None:
    import duckdb

    published = published_database(atlas.root)
    problem = None
    if read_current(atlas.root) is None:
        problem = "no published generation (readers fall back to the writer's database)"
    elif not published[0].is_file():
        problem = f"CURRENT points at {published[0].name}, which is missing"
    else:
        try:
            duckdb.connect(str(published[0]), read_only=True).close()
        except duckdb.Error as error:
            problem = f"published generation {published[1]} is unreadable ({str(error).splitlines()[0]})"
    if problem:
        if repair:
            atlas.publish()
        report.problems.append(Problem("CURRENT", problem, "published a new generation" if repair else
                                       f"threads-search check {atlas.root} --repair", repaired=repair))


def _check_parts(atlas: Atlas, report: CheckReport, repair: bool) -> None:
    from threads_search.atlas.parquet import read_atlas_parquet

    rows = atlas.sql("SELECT model_id, modality, part, n_vectors, checksum FROM embeddings ORDER BY part").fetchall()
    report.checked["embedding parts"] = len(rows)
    for model_id, modality, part, n_vectors, checksum in rows:
        problem = _file_problem(atlas.path(part), checksum)
        if problem is None:
            try:
                found = read_atlas_parquet(atlas, part, "embedding part", ["vid"]).num_rows
                problem = None if found == n_vectors else f"holds {found} vectors, recorded {n_vectors}"
            except ThreadsSearchError as error:
                problem = str(error).split(": ", 1)[-1].split("; run")[0]
        if problem is None:
            continue
        if repair:
            with atlas.transaction():
                atlas.sql("DELETE FROM embeddings WHERE part = ?", [part])
        report.problems.append(Problem(part, f"embedding part of model {model_id} ({modality}): {problem}",
                                       f"dropped; `threads-search embed {atlas.root} --model {model_id}` re-embeds its "
                                       f"{n_vectors} items" if repair else f"threads-search check {atlas.root} --repair",
                                       repaired=repair))


def _check_batches(atlas: Atlas, report: CheckReport, repair: bool) -> None:
    from threads_search.atlas.parquet import read_atlas_parquet

    rows = atlas.sql("SELECT batch_id, modality, parquet, n_samples, checksum, source FROM profile_batches").fetchall()
    report.checked["profile batches"] = len(rows)
    for batch_id, modality, relative, n_samples, checksum, source in rows:
        problem = _file_problem(atlas.path(relative), checksum)
        if problem is None:
            try:
                found = read_atlas_parquet(atlas, relative, "profile batch", ["sample_id"]).num_rows
                problem = None if found == n_samples else f"holds {found} samples, recorded {n_samples}"
            except ThreadsSearchError as error:
                problem = str(error).split(": ", 1)[-1].split("; run")[0]
        if problem is None:
            continue
        if repair:
            with atlas.transaction():
                atlas.sql("""DELETE FROM items WHERE modality = ? AND item_id IN
                             (SELECT sample_id FROM profiles WHERE batch_id = ?)""", [modality, batch_id])
                atlas.sql("DELETE FROM profiles WHERE batch_id = ?", [batch_id])
                atlas.sql("DELETE FROM profile_batches WHERE batch_id = ?", [batch_id])
        report.problems.append(Problem(relative, f"{modality} batch {batch_id}: {problem}",
                                       f"dropped with its samples; ingest {source} again" if repair
                                       else f"threads-search check {atlas.root} --repair", repaired=repair))


def _check_indexes(atlas: Atlas, report: CheckReport, repair: bool) -> None:
    from threads_search.indexer import load_index

    rows = atlas.sql("SELECT model_id, modality, path, n_vectors, checksum FROM indexes").fetchall()
    report.checked["indexes"] = len(rows)
    for model_id, modality, stem, n_vectors, checksum in rows:
        problem = _file_problem(atlas.path(stem + ".faiss"), checksum)
        if problem is None:
            try:
                loaded = load_index(atlas.path(stem), device="cpu")
                problem = None if loaded.count == n_vectors else f"holds {loaded.count} vectors, recorded {n_vectors}"
            except ThreadsSearchError as error:
                problem = str(error).split("; rebuild")[0]
        if problem is None:
            continue
        if repair:
            with atlas.transaction():
                atlas.sql("DELETE FROM indexes WHERE model_id = ? AND modality = ?", [model_id, modality])
        report.problems.append(Problem(stem + ".faiss", f"{modality} index of model {model_id}: {problem}",
                                       f"dropped; `threads-search index {atlas.root} --model {model_id}` rebuilds it"
                                       if repair else f"threads-search check {atlas.root} --repair", repaired=repair))


def _check_models(atlas: Atlas, report: CheckReport, repair: bool) -> None:
    from threads_search.atlas.stored_models import load_atlas_model

    rows = atlas.sql("SELECT model_id, recipe, path FROM models").fetchall()
    report.checked["models"] = len(rows)
    for model_id, recipe, relative in rows:
        try:
            load_atlas_model(atlas, model_id)
            continue
        except ThreadsSearchError as error:
            problem = str(error).split("; run")[0]
        if repair:
            with atlas.transaction():
                for table in ("embeddings", "indexes", "prototypes", "models"):
                    atlas.sql(f"DELETE FROM {table} WHERE model_id = ?", [model_id])
        report.problems.append(Problem(relative, f"model {model_id} ({recipe}): {problem}",
                                       "dropped with its embeddings, indexes and prototypes; train it again" if repair
                                       else f"threads-search check {atlas.root} --repair", repaired=repair))


def _check_slides(atlas: Atlas, report: CheckReport) -> None:
    from threads_search.atlas.slides import slide_records, verify_unchanged

    records = slide_records(atlas)
    report.checked["slide feature files"] = len(records)
    for record in records:
        try:
            verify_unchanged(record)
        except ThreadsSearchError as error:
            report.problems.append(Problem(str(record.path), str(error).split(": ", 1)[-1],
                                           f"threads-search ingest slides {atlas.root} {record.path} --replace"))


def _check_leftovers(atlas: Atlas, report: CheckReport, repair: bool) -> None:
    """Files nothing references and temporaries of dead processes (what the writer's collection removes)."""
    removed = collect_garbage(atlas.connection, atlas.root, dry_run=not repair)
    if repair:
        report.removed_leftovers = [str(p.relative_to(atlas.root)) for p in removed]
    for path in removed:
        kind = "temporary file of an interrupted run" if is_temporary(path) else "file no record references"
        report.problems.append(Problem(str(path.relative_to(atlas.root)), kind,
                                       "deleted" if repair else f"threads-search check {atlas.root} --repair",
                                       repaired=repair))
