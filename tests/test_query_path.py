"""The warm query path returns exactly what the cold one does: stored-vector lookup, in-memory
item lookups, cached filters and bitmap selectors."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A quick cohort embedded with mean pooling in many small parts, indexed flat."""
    from conftest import ingest_quick_cohort, store_fitted_baseline
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs import embed as embed_job
    from threads_search.jobs.index import build_atlas_indexes

    root = tmp_path_factory.mktemp("query-path")
    path, cohort = ingest_quick_cohort(root)
    model_id = store_fitted_baseline(path, "cohort = 'train'")
    previous = embed_job.SLIDES_PER_PART
    embed_job.SLIDES_PER_PART = 3
    try:
        with open_atlas(path) as opened:
            report = embed_job.embed_atlas(opened, model_id)
            build_atlas_indexes(opened, model_id, kind="flat")
    finally:
        embed_job.SLIDES_PER_PART = previous
    return {"atlas": path, "cohort": cohort, "model": model_id, "compacted": report.compacted}


def _every_stored_vector_matches(atlas, model_id: str) -> int:
    from threads_search.atlas.embeddings import load_embeddings, stored_vector

    checked = 0
    for modality in ("slides", "expression"):
        ids, vectors = load_embeddings(atlas, model_id, modality)
        assert ids.size
        for vid, vector in zip(ids, vectors):
            np.testing.assert_array_equal(stored_vector(atlas, model_id, modality, int(vid)), vector)
            checked += 1
    assert stored_vector(atlas, model_id, "slides", 10**9) is None
    return checked


def test_embed_compacts_many_parts_and_every_stored_vector_is_found(built):
    from threads_search.atlas.embeddings import MAX_PARTS, part_count
    from threads_search.atlas.store import open_atlas

    assert built["compacted"].get("slides") == 1  # 67 slides in 23 parts of 3 were merged
    with open_atlas(built["atlas"], read_only=True) as atlas:
        assert part_count(atlas, built["model"], "slides") <= MAX_PARTS
        assert _every_stored_vector_matches(atlas, built["model"]) > 60


def test_stored_vectors_survive_many_parts_and_a_replace(built, tmp_path):
    import shutil

    from conftest import write_trident
    from threads_search.atlas.embeddings import load_embeddings, stored_vector, write_part
    from threads_search.atlas.items import find_item
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import embed_atlas

    copy = tmp_path / "atlas"
    shutil.copytree(built["atlas"], copy)
    slide = sorted(built["cohort"].features_dir.glob("*.h5"))[0]
    replacement = write_trident(tmp_path / slide.name, np.random.default_rng(1).normal(size=(40, 768)).astype(np.float16),
                                encoder="synthetic_conch_v15")
    with open_atlas(copy) as atlas:
        ids, vectors = load_embeddings(atlas, built["model"], "slides")
        for start in range(0, 30, 3):  # many small extra parts repeating stored vectors
            write_part(atlas, built["model"], "slides", ids[start:start + 3], vectors[start:start + 3])
        (old_vid, _, _), = find_item(atlas, slide.stem, ("slides",))
    assert cli("ingest", "slides", copy, replacement, "--replace").exit_code == 0
    with open_atlas(copy) as atlas:
        embed_atlas(atlas, built["model"])
        (new_vid, _, _), = find_item(atlas, slide.stem, ("slides",))
        assert new_vid != old_vid
        assert stored_vector(atlas, built["model"], "slides", new_vid) is not None
        _every_stored_vector_matches(atlas, built["model"])
    with open_atlas(copy, read_only=True) as atlas:
        _every_stored_vector_matches(atlas, built["model"])
        current = load_embeddings(atlas, built["model"], "slides")[0]
        assert old_vid not in current and new_vid in current


def test_the_index_returns_the_same_stored_vectors(built):
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.index import open_index

    with open_atlas(built["atlas"], read_only=True) as atlas:
        ids, vectors = load_embeddings(atlas, built["model"], "slides")
        index = open_index(atlas, built["model"], "slides")
        assert index.keeps_vectors()
        stored = index.stored_vectors(ids)
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, normalised, atol=1e-6)


def test_warm_lookups_equal_the_cold_queries(built):
    from threads_search.atlas import items
    from threads_search.atlas.store import open_atlas

    with open_atlas(built["atlas"], read_only=True) as cold_atlas:
        table = items.item_table(cold_atlas, "slides")
        expression = items.item_table(cold_atlas, "expression")
        cold = [items.find_item(cold_atlas, i, ("slides", "expression")) for i in table.item_ids + expression.item_ids]
        patients = sorted(set(table.patient_ids))
        cold_patients = [items.patient_vids(cold_atlas, "slides", p) for p in patients]
        cold_metadata = items.item_metadata(cold_atlas, table.vids[::3])
    with open_atlas(built["atlas"], read_only=True) as atlas:
        for _ in range(items.WARM_AFTER_QUERIES):
            items.find_item(atlas, table.item_ids[0], ("slides",))
        assert atlas.peek("item lookup") is not None
        warm = [items.find_item(atlas, i, ("slides", "expression")) for i in table.item_ids + expression.item_ids]
        warm_patients = [items.patient_vids(atlas, "slides", p) for p in patients]
        warm_metadata = items.item_metadata(atlas, table.vids[::3])
    assert warm == cold
    assert all(np.array_equal(a, b) for a, b in zip(warm_patients, cold_patients))
    assert warm_metadata == cold_metadata


@pytest.mark.parametrize("where", [None, "cohort = 'heldout'", "site IN ('site1', 'site2')"])
def test_repeated_searches_on_one_atlas_equal_fresh_ones(built, where):
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas
    from threads_search.atlas.items import item_table

    with open_atlas(built["atlas"], read_only=True) as atlas:
        slides = item_table(atlas, "slides").item_ids[:12]
        warm = [search_atlas(atlas, Query(slide_id=s), SearchOptions(k=7, where=where)).hits for s in slides]
    fresh = []
    for slide in slides:
        with open_atlas(built["atlas"], read_only=True) as atlas:
            fresh.append(search_atlas(atlas, Query(slide_id=slide), SearchOptions(k=7, where=where)).hits)
    assert warm == fresh and all(len(h) == 7 for h in warm)


def test_bitmap_and_hash_selectors_select_the_same(one_faiss_thread):
    from threads_search.indexer import build_index, search
    from threads_search.indexer.id_filter import IdFilter
    from threads_search.indexer.synthetic import clustered_unit_vectors

    vectors = clustered_unit_vectors(3000, 64, seed=3)
    dense = build_index(vectors, np.arange(3000, dtype=np.int64) * 7, kind="flat")
    sparse = build_index(vectors, np.arange(3000, dtype=np.int64) * 10**9, kind="flat")
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(3000, size=900, replace=False))
    queries = vectors[:5]
    for index, scale in ((dense, 7), (sparse, 10**9)):
        prepared = IdFilter(chosen * scale)
        scores_a, ids_a = search(index, queries, 10, allowed_ids=prepared)
        scores_b, ids_b = search(index, queries, 10, allowed_ids=prepared)  # reused selector
        brute = vectors[chosen] @ queries.T
        expected = (chosen[np.argsort(-brute, axis=0, kind="stable")[:10]].T) * scale
        np.testing.assert_array_equal(ids_a, expected)
        np.testing.assert_array_equal(ids_b, ids_a)


def test_a_batch_of_queries_equals_the_queries_one_by_one(built):
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas, search_many
    from threads_search.atlas.items import item_table

    options = SearchOptions(k=6, where="cohort = 'heldout'")
    with open_atlas(built["atlas"], read_only=True) as atlas:
        queries = [Query(slide_id=s) for s in item_table(atlas, "slides").item_ids[:15]]
        batch = search_many(atlas, queries, options)
        single = [search_atlas(atlas, q, options) for q in queries]
    # the same hits; scores agree to float32 rounding (a batched matrix product sums in another order)
    assert [[h["id"] for h in r.hits] for r in batch] == [[h["id"] for h in r.hits] for r in single]
    for got, want in zip(batch, single):
        np.testing.assert_allclose([h["score"] for h in got.hits], [h["score"] for h in want.hits], atol=2e-6)


def test_equal_scores_are_ordered_by_vector_id(built, tmp_path):
    """Duplicated slides score the same: they come back lowest vid first, as the evaluator ranks them."""
    import shutil

    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas

    features = tmp_path / "features"
    features.mkdir()
    source = sorted(built["cohort"].features_dir.glob("*.h5"))
    for copy_number in range(4):  # four identical copies of one slide, different ids and patients
        shutil.copy(source[0], features / f"DUP-{copy_number}.h5")
    atlas_path = tmp_path / "atlas"
    shutil.copytree(built["atlas"], atlas_path)
    assert cli("ingest", "slides", atlas_path, features).exit_code == 0
    assert cli("embed", atlas_path, "--model", built["model"]).exit_code == 0
    assert cli("index", atlas_path, "--model", built["model"]).exit_code == 0
    with open_atlas(atlas_path, read_only=True) as atlas:
        hits = search_atlas(atlas, Query(slide_id="DUP-0"), SearchOptions(k=3, model_id=built["model"])).hits
        tied = (source[0].stem, "DUP-1", "DUP-2", "DUP-3")  # the original slide holds the same features
        vid_of = {h: atlas.sql("SELECT vid FROM items WHERE item_id = ?", [h]).fetchone()[0] for h in tied}
    assert [h["id"] for h in hits] == sorted(vid_of, key=vid_of.get)[:3]
    assert len({h["score"] for h in hits}) == 1


def test_an_atlas_keeps_only_its_recent_filters(built, monkeypatch):
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas
    from threads_search.atlas.items import item_table
    from threads_search.search import query as query_module

    monkeypatch.setattr(query_module, "RECENT_FILTERS", 2)
    with open_atlas(built["atlas"], read_only=True) as atlas:
        slide = item_table(atlas, "slides").item_ids[0]
        wheres = ["site = 'site1'", "site = 'site2'", "site = 'site3'", "site = 'site1'"]
        hits = [search_atlas(atlas, Query(slide_id=slide), SearchOptions(k=3, where=w)).hits for w in wheres]
        kept = atlas.peek("id filters")
        assert len(kept._items) == 2
    assert hits[0] == hits[3]


def test_the_filter_cache_keeps_within_its_byte_budget():
    """Beyond its entry count, the LRU evicts the oldest entries while the kept values weigh more
    than max_bytes (the newest entry always stays)."""
    from threads_search.lru import LruCache

    cache = LruCache(16, max_bytes=250, size_of=len)
    for key in range(4):
        cache.get(key, lambda: b"x" * 100)
    assert list(cache._items) == [2, 3]
    cache.get("big", lambda: b"x" * 400)
    assert list(cache._items) == ["big"]
