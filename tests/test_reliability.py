"""The embedded-database promise: idempotent re-runs, readers that never block or break writers,
one writer at a time with a named holder, damaged files and full disks answered in one line."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

runner = CliRunner()
CLI = [sys.executable, "-c", "from threads_search.cli.app import main; main()"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A quick cohort ingested (slides, expression, mutations), embedded and indexed with mean pooling."""
    from conftest import ingest_quick_cohort, store_fitted_baseline
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import embed_atlas
    from threads_search.jobs.index import build_atlas_indexes

    root = tmp_path_factory.mktemp("reliable")
    path, cohort = ingest_quick_cohort(root)
    assert cli("ingest", "mutations", path, cohort.mutations_maf, "--metadata", cohort.samples_csv).exit_code == 0
    model_id = store_fitted_baseline(path, "cohort = 'train'")
    with open_atlas(path) as opened:
        embed_atlas(opened, model_id)
        build_atlas_indexes(opened, model_id)
        slide = opened.sql("SELECT min(item_id) FROM items WHERE modality = 'slides'").fetchone()[0]
    return {"atlas": path, "cohort": cohort, "model": model_id, "slide": slide, "root": root}


@pytest.fixture
def copy(built, tmp_path) -> Path:
    target = tmp_path / "atlas"
    shutil.copytree(built["atlas"], target)
    return target


def test_every_ingest_run_twice_changes_nothing_the_second_time(built, copy):
    cohort = built["cohort"]
    for args in (("slides", cohort.features_dir, "--metadata", cohort.slides_csv),
                 ("expression", cohort.expression_csv, "--metadata", cohort.samples_csv),
                 ("mutations", cohort.mutations_maf, "--metadata", cohort.samples_csv)):
        before = digest_tree(copy)
        result = cli("ingest", args[0], copy, *args[1:])
        assert result.exit_code == 0, result.output
        assert "0 added, 0 replaced" in result.output
        assert digest_tree(copy) == before, args[0]


def _hold_writer_lock(atlas: Path, seconds: float) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import sys, time
        from threads_search.atlas.store import open_atlas
        atlas = open_atlas({str(atlas)!r})
        print("holding", flush=True)
        time.sleep({seconds})
        atlas.close()
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_second_writer_is_told_who_holds_the_atlas(built, copy, monkeypatch):
    monkeypatch.setenv("THREADS_SEARCH_LOCK_TIMEOUT", "0.3")
    holder = _hold_writer_lock(copy, 20)
    try:
        result = subprocess.run(CLI + ["ingest", "mutations", str(copy), str(built["cohort"].mutations_maf)],
                                capture_output=True, text=True, env=dict(os.environ, THREADS_SEARCH_LOCK_TIMEOUT="0.3"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert f"being written by pid {holder.pid}" in lines[0] and "since" in lines[0]
    finally:
        holder.kill()
        holder.wait()


def test_searches_and_readers_run_while_a_writer_holds_the_atlas(built, copy):
    """Readers open the published generation: a writer's lock never fails or blocks them, and
    a writer starts while readers are open."""
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas

    expected = cli("search", copy, "--slide-id", built["slide"], "--format", "json")
    assert expected.exit_code == 0
    holder = _hold_writer_lock(copy, 30)
    try:
        for _ in range(20):
            result = cli("search", copy, "--slide-id", built["slide"], "--format", "json")
            assert result.exit_code == 0, result.output
            assert result.stdout == expected.stdout
        assert cli("info", copy).exit_code == 0
    finally:
        holder.kill()
        holder.wait()
    reader = open_atlas(copy, read_only=True)
    try:
        result = subprocess.run(CLI + ["prototypes", str(copy), "--label", "subtype", "--modality", "slides"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        hits = search_atlas(reader, Query(slide_id=built["slide"]), SearchOptions(k=3)).hits
        assert len(hits) == 3
    finally:
        reader.close()


def test_an_open_reader_moves_to_the_generation_another_process_publishes(built, copy):
    from threads_search.atlas.indexes import index_summaries
    from threads_search.atlas.store import open_atlas

    reader = open_atlas(copy, read_only=True)
    try:
        before = reader.generation
        kinds_before = {s["kind"] for s in index_summaries(reader)}
        result = subprocess.run(CLI + ["index", str(copy), "--kind", "hnsw", "--rebuild"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert index_summaries(reader) and {s["kind"] for s in index_summaries(reader)} == kinds_before  # still the old one
        assert reader.refresh() is True and reader.generation > before
        assert {s["kind"] for s in index_summaries(reader)} == {"hnsw"}
        assert reader.refresh() is False
    finally:
        reader.close()


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


@pytest.mark.parametrize("damage", ["truncate", "delete", "fifo"])
def test_a_damaged_embedding_part_is_one_line_naming_it_and_check_repairs(built, copy, damage):
    part = _first(copy / "embeddings" / built["model"], "slides-*.parquet")
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:100])
    elif damage == "delete":
        part.unlink()
    else:
        part.unlink()
        os.mkfifo(part)
    before = digest_tree(copy) if damage != "fifo" else None
    for args in (("eval", copy, "--label", "subtype", "--queries", "cohort = 'heldout'", "--database", "cohort = 'heldout'",
                  "--bootstrap", "0"), ("embed", copy), ("index", copy, "--rebuild")):
        line = one_error_line(cli(*args))
        assert part.name in line and "check" in line and "--repair" in line, line
    if before is not None:
        assert digest_tree(copy) == before
    result = cli("check", copy)
    assert result.exit_code == 1 and part.name in result.output
    assert cli("check", copy, "--repair").exit_code == 0
    assert cli("embed", copy).exit_code == 0 and cli("index", copy).exit_code == 0
    assert cli("check", copy).exit_code == 0
    assert cli("search", copy, "--slide-id", built["slide"]).exit_code == 0


def test_a_damaged_database_is_refused_in_one_line_and_restored_by_repair(built, copy):
    database = copy / "atlas.duckdb"
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    line = one_error_line(cli("ingest", "mutations", copy, built["cohort"].mutations_maf))
    assert "atlas.duckdb" in line and "check" in line
    assert cli("search", copy, "--slide-id", built["slide"]).exit_code == 0  # readers use the published copy
    result = cli("check", copy, "--repair")
    assert result.exit_code == 0 and "restored from generation" in result.output
    assert cli("ingest", "mutations", copy, built["cohort"].mutations_maf).exit_code == 0
    assert cli("check", copy).exit_code == 0


def test_an_edited_sidecar_kind_is_one_line(built, copy):
    import json

    sidecar = _first(copy / "indexes", "*-slides-*.json")
    payload = json.loads(sidecar.read_text())
    payload["kind"] = "hnsw"
    sidecar.write_text(json.dumps(payload))
    line = one_error_line(cli("search", copy, "--slide-id", built["slide"]))
    assert sidecar.name in line and "rebuild" in line


def test_a_huge_k_is_capped_not_allocated(built):
    result = cli("search", built["atlas"], "--slide-id", built["slide"], "-k", "1000000000", "--format", "json")
    assert result.exit_code == 0, result.output
    assert "can be returned" in result.stderr


def _peak_rss_mib(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.stderr.write(r.stderr); "
              "sys.exit(r.returncode)")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    return result, float(result.stdout.strip().splitlines()[-1])


def test_a_file_that_claims_more_than_it_holds_is_refused_in_bounded_memory(tmp_path):
    import h5py

    path = tmp_path / "claim.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", shape=(1_400_000, 768), dtype="float16")
        handle.create_dataset("coords", shape=(1_400_000, 2), dtype="int64")
    assert path.stat().st_size < 100_000
    assert cli("init", tmp_path / "atlas").exit_code == 0
    before = digest_tree(tmp_path / "atlas")
    result, peak = _peak_rss_mib(CLI + ["ingest", "slides", str(tmp_path / "atlas"), str(path)])
    assert result.returncode == 2 and "declares shape (1400000, 768)" in result.stderr, result.stderr
    assert peak < 600, f"peak RSS {peak:.0f} MiB"
    assert digest_tree(tmp_path / "atlas") == before


def test_a_header_of_a_million_columns_is_refused_in_bounded_memory(built, tmp_path):
    path = tmp_path / "wide.csv"
    with open(path, "w") as handle:
        handle.write("sample_id," + ",".join(f"G{i}" for i in range(1_000_000)) + "\n")
        handle.write("S1," + ",".join("1" for _ in range(1_000_000)) + "\n")
    result, peak = _peak_rss_mib(CLI + ["ingest", "expression", str(built["atlas"]), str(path)])
    assert result.returncode == 2 and "at most 200,000 columns" in result.stderr, result.stderr
    assert peak < 600, f"peak RSS {peak:.0f} MiB"


def _tmpfs(tmp_path: Path, size: str):
    """A tmpfs of `size` (root can mount one); the test is skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    yield from _tmpfs(tmp_path, "24m")


@pytest.fixture
def roomy_disk(tmp_path):
    yield from _tmpfs(tmp_path, "192m")


def test_a_full_disk_is_one_line_and_leaves_the_atlas_and_no_partial_copy(built, small_disk, tmp_path):
    atlas = small_disk / "atlas"
    assert cli("init", atlas).exit_code == 0
    features = tmp_path / "big"
    features.mkdir()
    from conftest import write_trident

    rng = np.random.default_rng(0)
    for index in range(4):  # 4 x 8 MiB of float32 features: more than the disk holds
        write_trident(features / f"BIG-{index}.h5", rng.normal(size=(2730, 768)).astype(np.float32))
    before = digest_tree(atlas)
    result = cli("ingest", "slides", atlas, features, "--copy")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "re-run the command" in lines[0], result.stderr
    assert digest_tree(atlas) == before
    assert not [p for p in atlas.rglob("*") if p.is_file() and p.suffix == ".h5"]
    assert cli("ingest", "slides", atlas, _first(features, "*.h5"), "--copy").exit_code == 0
    assert cli("check", atlas).exit_code == 0


def test_an_environment_failure_mid_write_changes_nothing(built, copy, monkeypatch):
    """A write that fails at the disk (here: at the fsync of a part) leaves the atlas as it was."""
    import threads_search.atomic as atomic

    def full_disk(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    assert cli("remove", copy, "--where", "site = 'site1'").exit_code == 0  # something for embed to redo
    assert cli("ingest", "slides", copy, built["cohort"].features_dir, "--metadata", built["cohort"].slides_csv).exit_code == 0
    before = digest_tree(copy)
    monkeypatch.setattr(atomic, "fsync_path", full_disk)
    result = cli("embed", copy, "--model", built["model"])
    assert result.exit_code == 1 and "No space left on device" in result.stderr, result.output
    monkeypatch.undo()
    assert digest_tree(copy) == before
    assert not [p for p in copy.rglob("*") if atomic.is_temporary(p)]


def test_remove_takes_items_out_of_every_index_and_search(built, copy):
    from threads_search.atlas.store import open_atlas

    result = cli("remove", copy, "--where", "site = 'site2'")
    assert result.exit_code == 0 and "removed" in result.output, result.output
    with open_atlas(copy, read_only=True) as atlas:
        assert atlas.sql("SELECT count(*) FROM items WHERE site = 'site2'").fetchone()[0] == 0
    hits = cli("search", copy, "--slide-id", built["slide"], "-k", "200", "--format", "csv").stdout
    assert "site2" not in hits
    assert cli("check", copy).exit_code == 0
    ids = copy.parent / "ids.txt"
    ids.write_text(f"# one id a line\n{built['slide']}\nNOT-AN-ID\n")
    result = cli("remove", copy, "--ids", ids, "--modality", "slides")
    assert result.exit_code == 0 and "removed 1 slides" in result.output and "NOT-AN-ID" in result.stderr
    assert "unknown slide id" in one_error_line(cli("search", copy, "--slide-id", built["slide"]))


@pytest.fixture
def atlas_on_a_disk(built, roomy_disk):
    """A copy of the built atlas on its own tmpfs (its feature files stay outside)."""
    atlas = roomy_disk / "atlas"
    shutil.copytree(built["atlas"], atlas)
    return atlas


def _fill_disk(mount: Path, leave_bytes: int) -> Path:
    filler = mount / "filler"
    free = shutil.disk_usage(mount).free
    with open(filler, "wb") as handle:
        handle.truncate(0)
        remaining = max(free - leave_bytes, 0)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            try:
                handle.write(block[:min(len(block), remaining)])
                handle.flush()
            except OSError:
                break
            remaining -= len(block)
    return filler


@pytest.mark.parametrize("command", ["ingest-expression", "ingest-mutations", "embed", "index", "prototypes", "remove"])
def test_every_writer_on_a_full_disk_is_one_line_and_resumes(built, atlas_on_a_disk, roomy_disk, command):
    """Each writer on a disk with almost no room left: exit 1 with one line (no traceback), the atlas
    still readable and consistent, and the same command finishes once there is room again."""
    atlas, cohort = atlas_on_a_disk, built["cohort"]
    assert cli("remove", atlas, "--where", "site = 'site1'").exit_code == 0  # work for embed and index to redo
    assert cli("ingest", "slides", atlas, cohort.features_dir, "--metadata", cohort.slides_csv).exit_code == 0
    extra = roomy_disk.parent / "extra-expression.csv"
    if not extra.exists():
        lines = cohort.expression_csv.read_text().splitlines()
        extra.write_text("\n".join([lines[0]] + [line.replace("-01A", "-02A", 1) for line in lines[1:]]) + "\n")
    args = {"ingest-expression": ("ingest", "expression", atlas, extra),
            "ingest-mutations": ("ingest", "mutations", atlas, cohort.mutations_maf),
            "embed": ("embed", atlas, "--model", built["model"]), "index": ("index", atlas, "--model", built["model"]),
            "prototypes": ("prototypes", atlas, "--label", "subtype", "--modality", "slides", "--model", built["model"]),
            "remove": ("remove", atlas, "--where", "site = 'site2'")}[command]
    if command == "ingest-mutations":
        assert cli("remove", atlas, "--where", "modality = 'mutations'").exit_code == 0
    if command == "index":  # new vectors for the index to take
        assert cli("embed", atlas, "--model", built["model"]).exit_code == 0
    filler = _fill_disk(roomy_disk, 64 << 10)
    try:
        result = cli(*args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0], (result.stderr, repr(result.exception))
        assert "Traceback" not in result.output
    finally:
        filler.unlink()
    check = cli("check", atlas)  # readable and consistent; only leftovers of the failed write may be listed
    assert check.exit_code in (0, 1) and "Traceback" not in check.output
    problems = [line for line in check.output.splitlines() if line.startswith("PROBLEM")]
    assert all("temporary file" in line or "no record references" in line for line in problems), check.output
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert cli("check", atlas).exit_code == 0
