"""Building the patch index under a small --max-memory stays within it (peak RSS, subprocess),
and the mosaic index is the same on every build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ingest_quick_cohort, write_trident
from threads_search.cli.app import app

BUDGET = 64 * 2**20

_MEASURE = """
import json, sys
import numpy as np
from threads_search.atlas.store import open_atlas
from threads_search.jobs.patch_index import PatchIndexConfig, build_atlas_patch_index
import faiss, h5py, pyarrow as pa, pyarrow.parquet as pq
faiss.omp_set_num_threads(1)
# Warm-up: the first Parquet write maps ~55 MiB of pyarrow's library code and thread stacks
# into RSS, whatever the data; that is not memory of the index build.
pq.write_table(pa.table({"x": [1]}), sys.argv[3])

def rss():
    with open("/proc/self/statm") as handle:
        import os
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))

with open_atlas(sys.argv[1]) as atlas:
    before = rss()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the high-water mark restarts from the current RSS
    report = build_atlas_patch_index(atlas, PatchIndexConfig(max_memory=int(sys.argv[2])))
    print(json.dumps({"growth": peak() - before, "kind": report.sidecar["kind"], "count": report.sidecar["count"],
                      "estimated_peak": report.sidecar["memory"]["estimated_build_peak_bytes"],
                      "recall": report.sidecar["recall_at_10"]}))
"""


@pytest.mark.slow
def test_build_under_a_small_budget_stays_within_it(tmp_path):
    from threads_search.indexer.synthetic import clustered_unit_vectors

    folder = tmp_path / "features"
    folder.mkdir()
    vectors = clustered_unit_vectors(80_000, 384, seed=0).astype(np.float16)
    for slide in range(40):
        write_trident(folder / f"S{slide:02d}.h5", vectors[slide * 2000:(slide + 1) * 2000])
    atlas = tmp_path / "atlas"
    runner = CliRunner()
    for args in (["init", str(atlas)], ["ingest", "slides", str(atlas), str(folder)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    float32_bytes = 80_000 * 384 * 4
    assert float32_bytes > 1.8 * BUDGET  # the features cannot simply be held
    completed = subprocess.run([sys.executable, "-c", _MEASURE, str(atlas), str(BUDGET), str(tmp_path / "warm.parquet")], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    assert measured["count"] == 80_000
    assert measured["kind"] in ("ivfsq", "ivfpq")
    assert measured["estimated_peak"] <= BUDGET
    assert measured["growth"] <= BUDGET, measured
    assert measured["recall"] >= 0.8


def test_mosaic_index_is_the_same_on_every_build(tmp_path):
    from threads_search.atlas.patch_indexes import patch_index_record
    from threads_search.atlas.store import open_atlas
    from threads_search.indexer.patch_index import load_patch_index
    from threads_search.jobs.patch_index import PatchIndexConfig, build_atlas_patch_index

    path, cohort = ingest_quick_cohort(tmp_path, seed=4)
    built = []
    with open_atlas(path) as atlas:
        for seed in (3, 3, 4):
            report = build_atlas_patch_index(atlas, PatchIndexConfig(mosaic=0.1, seed=seed))
            built.append(np.array(load_patch_index(atlas.path(patch_index_record(atlas)["path"])).ids))
    np.testing.assert_array_equal(built[0], built[1])
    assert not np.array_equal(built[0], built[2])
    assert 0.08 * cohort.summary.n_patches <= built[0].size <= 0.2 * cohort.summary.n_patches
    assert report.sidecar["mosaic"]["fraction"] == 0.1
