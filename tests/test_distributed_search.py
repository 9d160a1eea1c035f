"""Sharded search on a local Ray cluster: `index --shards N`, one actor per shard, exact merge."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
runner = CliRunner()
SMALL = {"num_cpus": 0.25}  # four shard actors fit the 2-CPU test cluster


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    """A quick cohort embedded and indexed (single index) with a fitted mean-pooling model."""
    from conftest import indexed_quick_atlas

    path, _ = indexed_quick_atlas(tmp_path_factory.mktemp("sharded"), kind="flat")
    return path


def _queries(atlas_path: Path):
    from threads_search.atlas.store import open_atlas
    from threads_search.search.query import Query

    with open_atlas(atlas_path, read_only=True) as opened:
        slides = [r[0] for r in opened.sql("SELECT item_id FROM items WHERE modality = 'slides' ORDER BY vid").fetchall()]
        samples = [r[0] for r in opened.sql("SELECT item_id FROM items WHERE modality = 'expression' ORDER BY vid").fetchall()]
    return [Query(slide_id=s) for s in slides[::3]] + [Query(sample_id=s) for s in samples[::5]]


OPTIONS = [
    dict(k=5),
    dict(k=8, where="cohort = 'train'"),
    dict(k=6, include_same_patient=True, where="subtype IN ('clear_cell', 'mucinous') OR site = 'site2'"),
    dict(k=4, facets={"site": ["site1", "site3"]}),
    dict(k=5, one_per_patient=True),
    dict(k=500),  # more than there are: every candidate, and the note saying so
    dict(k=5, target="expression"),
]


@pytest.mark.parametrize("n_shards", [1, 2, 3, 4])
def test_sharded_flat_search_equals_the_single_index(ray_cluster, atlas, n_shards):
    from threads_search.atlas.store import open_atlas
    from threads_search.distributed.shards import ShardPlacement, open_sharded_index
    from threads_search.search.query import SearchOptions, search_many

    result = cli("index", atlas, "--shards", n_shards, "--kind", "flat")
    assert result.exit_code == 0, result.output
    queries = _queries(atlas)
    with open_atlas(atlas, read_only=True) as opened:
        for target in ("slides", "expression"):
            with open_sharded_index(opened, _model(opened), target, placement=ShardPlacement(**SMALL)) as sharded:
                assert len(sharded.stems) <= n_shards and sharded.count == opened.modality_vids(target).size
                for settings in (s for s in OPTIONS if s.get("target", "slides") == target):
                    options = SearchOptions(**settings)
                    single = search_many(opened, queries, options)
                    spread = search_many(opened, queries, options, index=sharded)
                    for expected, got in zip(single, spread):
                        _assert_same_hits(got, expected, settings)
                    assert any(r.hits for r in single)


def _assert_same_hits(got, expected, settings) -> None:
    """Same items in the same order with the same metadata; scores equal to float tolerance (the
    shards' processes may sum a dot product in another order: last-digit differences at 6 decimals)."""
    assert got.notes == expected.notes, settings
    assert [h["id"] for h in got.hits] == [h["id"] for h in expected.hits], settings
    np.testing.assert_allclose([h["score"] for h in got.hits], [h["score"] for h in expected.hits], atol=2e-6)
    strip = [{k: v for k, v in h.items() if k != "score"} for h in got.hits]
    assert strip == [{k: v for k, v in h.items() if k != "score"} for h in expected.hits], settings


def _model(opened) -> str:
    from threads_search.atlas.stored_models import resolve_model_id

    return resolve_model_id(opened)


def _tied_shards(tmp_path: Path, n_shards: int):
    """A flat index of 300 vectors made of 100 distinct ones, each held three times under
    scattered ids (exact ties), and the same vectors split into shard files."""
    from threads_search.indexer import build_index, save_index
    from threads_search.indexer.shards import split_by_shard

    rng = np.random.default_rng(4)
    distinct = rng.normal(size=(100, 32)).astype(np.float32)
    vectors = np.repeat(distinct, 3, axis=0)
    ids = np.sort(rng.choice(10**6, size=300, replace=False)).astype(np.int64)
    single = build_index(vectors, ids, kind="flat", model_id="ab" * 8, modality="slides")
    stems = {}
    for shard, rows in enumerate(split_by_shard(ids, n_shards)):
        stems[shard] = str(tmp_path / f"shard{shard}")
        save_index(build_index(vectors[rows], ids[rows], kind="flat", model_id="ab" * 8, modality="slides"), stems[shard])
    return single, stems, distinct, ids


@pytest.mark.parametrize("n_shards", [2, 4])
def test_ties_merge_like_the_single_index(ray_cluster, tmp_path, n_shards):
    """Equal scores across shards are ordered by vid exactly as the single index's answer is."""
    from threads_search.distributed.shards import ShardedIndex, ShardPlacement
    from threads_search.indexer import search
    from threads_search.search.query import TIE_MARGIN, _rank

    single, stems, distinct, ids = _tied_shards(tmp_path, n_shards)
    queries = distinct[:10] + 0.01 * np.random.default_rng(5).normal(size=(10, 32)).astype(np.float32)
    excluded = [ids[3 * q:3 * q + 1] for q in range(10)]  # one copy of each query's own vector
    allowed = np.delete(ids, np.arange(2, 300, 9))  # a third copy gone from every third triple
    with ShardedIndex(ray, stems, n_shards, "ab" * 8, "slides", ShardPlacement(**SMALL)) as sharded:
        for k in (1, 2, 4, 7):
            fetch = k + TIE_MARGIN
            for allow in (None, allowed):
                want = search(single, queries, fetch, allowed_ids=allow, exclude_ids=excluded)
                got = sharded.fan_out(queries, fetch, allow, excluded)
                tied_rows = 0
                for row in range(10):
                    expected, merged = _rank(want[1][row], want[0][row], k), _rank(got[1][row], got[0][row], k)
                    assert [v for v, _ in merged] == [v for v, _ in expected]
                    np.testing.assert_allclose([s for _, s in merged], [s for _, s in expected], atol=2e-6)
                    scores = np.round([s for _, s in expected], 6)
                    tied_rows += len(set(scores)) < len(scores)
                assert tied_rows or k == 1  # the answers do hold ties


class DiesOnFirstSearch:
    """A shard server whose process dies in the middle of its first search (a marker file
    remembers it already died, so the restarted actor answers)."""

    def __init__(self, stem: str, device: str = "cpu") -> None:
        from threads_search.distributed.shards import ShardServer

        self.server, self.marker = ShardServer(stem, device), Path(stem + ".died")

    def describe(self):
        return self.server.describe()

    def ids(self):
        return self.server.ids()

    def search(self, *args):
        if not self.marker.exists():
            self.marker.touch()
            os._exit(1)
        return self.server.search(*args)


class AlwaysDies(DiesOnFirstSearch):
    def search(self, *args):
        os._exit(1)


@pytest.fixture
def shards_by_value():
    """Ship this module's server classes to the workers by value (tests/ is not on their path)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_shard_actor_that_dies_mid_query_is_restarted_and_the_query_retried(ray_cluster, tmp_path, shards_by_value):
    from threads_search.distributed.shards import ShardedIndex, ShardPlacement
    from threads_search.indexer import search

    from threads_search.search.query import _rank

    def ranked(answer):
        return [[v for v, _ in _rank(answer[1][row], answer[0][row], 5)] for row in range(5)]

    single, stems, distinct, _ = _tied_shards(tmp_path, 3)
    want = ranked(search(single, distinct[:5], 13))
    with ShardedIndex(ray, stems, 3, "ab" * 8, "slides", ShardPlacement(**SMALL), server_class=DiesOnFirstSearch) as sharded:
        assert ranked(sharded.fan_out(distinct[:5], 13, None, None)) == want
        assert all(Path(stem + ".died").exists() for stem in stems.values())  # every shard died once
        # An actor Ray will not restart (killed for good) is replaced by the coordinator.
        ray.kill(sharded.actor(1), no_restart=True)
        assert ranked(sharded.fan_out(distinct[:5], 13, None, None)) == want
        assert sharded.restarts == 1


def test_a_shard_that_stays_down_fails_the_query_instead_of_answering_partially(ray_cluster, tmp_path, shards_by_value):
    from threads_search.distributed.shards import ShardedIndex, ShardPlacement
    from threads_search.errors import ClusterError

    _, stems, distinct, _ = _tied_shards(tmp_path, 2)
    with ShardedIndex(ray, stems, 2, "ab" * 8, "slides", ShardPlacement(**SMALL), server_class=AlwaysDies) as sharded:
        with pytest.raises(ClusterError, match="no partial results"):
            sharded.fan_out(distinct[:2], 5, None, None)


def test_serve_with_ray_gives_the_single_index_hits(ray_cluster, atlas):
    from fastapi.testclient import TestClient

    from threads_search.distributed.serving import ShardedIndexes
    from threads_search.distributed.shards import ShardPlacement
    from threads_search.service.app import create_app
    from threads_search.service.config import ServiceConfig

    assert cli("index", atlas, "--shards", 3, "--kind", "flat").exit_code == 0
    source = ShardedIndexes("auto", ShardPlacement(**SMALL))
    body = {"slide_id": _queries(atlas)[1].slide_id, "k": 6, "where": "cohort = 'train'"}
    with TestClient(create_app(ServiceConfig(atlas=atlas))) as plain, \
            TestClient(create_app(ServiceConfig(atlas=atlas), index_source=source)) as sharded:
        expected, got = plain.post("/api/search", json=body), sharded.post("/api/search", json=body)
        assert expected.status_code == got.status_code == 200, got.text
        assert [h["id"] for h in got.json()["hits"]] == [h["id"] for h in expected.json()["hits"]]
        np.testing.assert_allclose([h["score"] for h in got.json()["hits"]], [h["score"] for h in expected.json()["hits"]],
                                   atol=2e-6)
        assert len(got.json()["hits"]) == 6
        assert len(source._running) == 1  # the shard actors were started for the request
    assert source._running == {}  # stopped with the app


def test_index_shards_refusals(atlas):
    assert "--shards 0: expected 1 to" in cli("index", atlas, "--shards", 0).output
    assert "only for --level slides" in cli("index", atlas, "--shards", 2, "--level", "patches").output


def _shard_contents(atlas_path: Path) -> dict:
    from threads_search.atlas.index_shards import shard_records
    from threads_search.atlas.store import open_atlas
    from threads_search.indexer import load_index

    contents = {}
    with open_atlas(atlas_path, read_only=True) as opened:
        model_id = _model(opened)
        for target in ("slides", "expression"):
            for record in shard_records(opened, model_id, target):
                index = load_index(opened.path(record.stem), device="cpu")
                ids = index.sorted_ids()
                contents[(target, record.shard)] = (ids, index.stored_vectors(ids), index.kind)
    return contents


def test_shards_built_on_ray_equal_the_local_shards(ray_cluster, atlas):
    assert cli("index", atlas, "--shards", 3, "--kind", "flat").exit_code == 0
    local = _shard_contents(atlas)
    result = cli("index", atlas, "--shards", 3, "--kind", "flat", "--ray", "auto", "--num-cpus", "0.5")
    assert result.exit_code == 0, result.output
    spread = _shard_contents(atlas)
    assert spread.keys() == local.keys() and len(local) == 6
    for key, (ids, vectors, kind) in local.items():
        np.testing.assert_array_equal(spread[key][0], ids)
        np.testing.assert_array_equal(spread[key][1], vectors)
        assert spread[key][2] == kind == "flat"
