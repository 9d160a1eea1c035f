"""`embed --ray` on a local Ray cluster: the same parts as the local job, and resumable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

pytest.importorskip("ray", reason="the `ray` extra is not installed")
runner = CliRunner()


@pytest.fixture(scope="module")
def cohort_atlas(tmp_path_factory) -> tuple[Path, str]:
    """A quick cohort ingested with a fitted mean-pooling model, not yet embedded."""
    from conftest import ingest_quick_cohort, store_fitted_baseline

    path, _ = ingest_quick_cohort(tmp_path_factory.mktemp("distributed-embed"))
    return path, store_fitted_baseline(path, "cohort = 'train'")


@pytest.fixture(scope="module")
def local_embeddings(cohort_atlas, tmp_path_factory):
    """(ids, vectors) per modality of the local `embed` on a copy of the atlas."""
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import embed_atlas

    path, model_id = cohort_atlas
    copy = shutil.copytree(path, tmp_path_factory.mktemp("local") / "atlas")
    with open_atlas(copy) as atlas:
        embed_atlas(atlas, model_id)
        return {m: load_embeddings(atlas, model_id, m) for m in ("slides", "expression")}


def _copy(cohort_atlas, tmp_path) -> tuple[Path, str]:
    path, model_id = cohort_atlas
    return shutil.copytree(path, tmp_path / "atlas"), model_id


def _assert_equal_to_local(path: Path, model_id: str, local) -> None:
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas

    with open_atlas(path, read_only=True) as atlas:
        for modality, (ids, vectors) in local.items():
            got_ids, got_vectors = load_embeddings(atlas, model_id, modality)
            np.testing.assert_array_equal(got_ids, ids)
            np.testing.assert_allclose(got_vectors, vectors, rtol=0, atol=1e-6)


def test_embed_on_ray_equals_the_local_embed(ray_cluster, cohort_atlas, local_embeddings, tmp_path):
    path, model_id = _copy(cohort_atlas, tmp_path)
    n_slides = local_embeddings["slides"][0].size
    result = runner.invoke(app, ["embed", str(path), "--ray", "auto", "--workers", "2", "--num-cpus", "1"])
    assert result.exit_code == 0, result.output
    assert f"embedded {n_slides} slides (+0 already)" in result.output
    _assert_equal_to_local(path, model_id, local_embeddings)
    again = runner.invoke(app, ["embed", str(path), "--ray", "auto"])  # everything done: nothing sent to the cluster
    assert again.exit_code == 0 and f"embedded 0 slides (+{n_slides} already)" in again.output, again.output


def test_an_interrupted_ray_embed_resumes_where_it_stopped(ray_cluster, cohort_atlas, local_embeddings, tmp_path):
    from threads_search.atlas.embeddings import embedded_vids
    from threads_search.atlas.store import open_atlas
    from threads_search.distributed.cluster import RayConfig
    from threads_search.distributed.embed import embed_atlas_ray

    path, model_id = _copy(cohort_atlas, tmp_path)
    n_slides = local_embeddings["slides"][0].size
    seen = []

    def interrupt(done: int, total: int, slide_id: str) -> None:
        seen.append(done)
        if done >= 12:
            raise KeyboardInterrupt

    with open_atlas(path) as atlas, pytest.raises(KeyboardInterrupt):
        embed_atlas_ray(atlas, model_id, RayConfig(workers=2), progress=interrupt, slides_per_part=4)
    with open_atlas(path) as atlas:
        finished = len(embedded_vids(atlas, model_id, "slides"))
        assert 0 < finished < n_slides and finished % 4 == 0  # whole parts only
        report = embed_atlas_ray(atlas, model_id, RayConfig(workers=1), slides_per_part=16)
    assert report.skipped["slides"] == finished and report.embedded["slides"] == n_slides - finished
    assert seen == sorted(seen) and seen[-1] >= 12  # progress counts items done across the pool
    _assert_equal_to_local(path, model_id, local_embeddings)


def test_ray_config_refusals_are_one_line():
    from threads_search.distributed.cluster import RayConfig
    from threads_search.errors import InputError

    with pytest.raises(InputError, match="--workers 0"):
        RayConfig(workers=0).checked()
    with pytest.raises(InputError, match="--num-cpus"):
        RayConfig(num_cpus=0).checked()


def _patch_index_files(path: Path) -> tuple[np.ndarray, dict]:
    import json

    from threads_search.atlas.patch_indexes import patch_index_record
    from threads_search.atlas.store import open_atlas

    with open_atlas(path, read_only=True) as atlas:
        stem = patch_index_record(atlas)["path"]
    return np.load(path / (stem + ".ids.npy")), json.loads((path / (stem + ".json")).read_text())


def test_patch_index_planned_on_ray_equals_the_local_build(ray_cluster, cohort_atlas, tmp_path):
    """`index --level patches --mosaic F --ray`: the mosaic rows chosen on the cluster, the same index."""
    path, _ = cohort_atlas
    local = shutil.copytree(path, tmp_path / "local")
    spread = shutil.copytree(path, tmp_path / "spread")
    common = ["--level", "patches", "--kind", "flat", "--mosaic", "0.3", "--quiet"]
    assert runner.invoke(app, ["index", str(local), *common]).exit_code == 0
    result = runner.invoke(app, ["index", str(spread), *common, "--ray", "auto"])
    assert result.exit_code == 0, result.output
    want_ids, want = _patch_index_files(local)
    got_ids, got = _patch_index_files(spread)
    np.testing.assert_array_equal(got_ids, want_ids)
    from threads_search.atlas.slides import slide_summary
    from threads_search.atlas.store import open_atlas

    with open_atlas(spread, read_only=True) as atlas:
        total = slide_summary(atlas)["patches_total"]
    assert 0 < got["count"] == want["count"] == want_ids.size < 0.5 * total  # a 30 % mosaic was kept
    assert got["recall_at_10"] == want["recall_at_10"] and got["mosaic"] == want["mosaic"]
    assert "--ray: for --level patches or with --shards" in runner.invoke(app, ["index", str(spread), "--ray", "auto"]).output
