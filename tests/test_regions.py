"""Region search: patch ids, the patch index over a generated cohort with planted tumour patches,
region queries, slide votes, filters and same-patient exclusion, mosaic selection."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ingest_quick_cohort
from threads_search.cli.app import app
from threads_search.errors import InputError
from threads_search.indexer.patch_ids import (
    MAX_ROWS_PER_SLIDE,
    MAX_VID,
    decode_patch_ids,
    encode_patch_ids,
    slide_id_range,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def test_patch_ids_round_trip_and_layout():
    rng = np.random.default_rng(0)
    vids = np.concatenate([[0, 1, MAX_VID], rng.integers(0, MAX_VID, 1000)])
    rows = np.concatenate([[0, MAX_ROWS_PER_SLIDE - 1, 7], rng.integers(0, MAX_ROWS_PER_SLIDE, 1000)])
    ids = encode_patch_ids(vids, rows)
    assert ids.dtype == np.int64 and (ids >= 0).all()
    back_vids, back_rows = decode_patch_ids(ids)
    np.testing.assert_array_equal(back_vids, vids)
    np.testing.assert_array_equal(back_rows, rows)
    assert int(encode_patch_ids(3, 5)) == (3 << 24) | 5
    first, end = slide_id_range(3)
    assert first <= int(encode_patch_ids(3, 0)) and int(encode_patch_ids(3, MAX_ROWS_PER_SLIDE - 1)) < end
    assert int(encode_patch_ids(4, 0)) == end
    # Ids sort by slide, then row.
    pairs = sorted(zip(vids.tolist(), rows.tolist()))
    np.testing.assert_array_equal(np.sort(ids), encode_patch_ids(*map(np.array, zip(*pairs))))
    assert decode_patch_ids(np.array([-1]))[0][0] == -1
    for bad_vid, bad_row in ((-1, 0), (MAX_VID + 1, 0), (1, MAX_ROWS_PER_SLIDE), (1, -2)):
        with pytest.raises(InputError):
            encode_patch_ids(bad_vid, bad_row)


def test_mosaic_is_seeded_and_deterministic():
    from threads_search.indexer.mosaic import mosaic_rows, slide_seed
    from threads_search.indexer.synthetic import clustered_unit_vectors

    features = clustered_unit_vectors(600, 32, n_clusters=5, seed=1)
    coords = np.stack([np.arange(600) % 30, np.arange(600) // 30], axis=1) * 512
    first = mosaic_rows(features, coords, 0.1, seed=7)
    np.testing.assert_array_equal(first, mosaic_rows(features, coords, 0.1, seed=7))
    assert not np.array_equal(first, mosaic_rows(features, coords, 0.1, seed=8))
    assert 55 <= first.size <= 70 and np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(mosaic_rows(features, coords, 1.0, seed=7), np.arange(600))
    assert slide_seed(0, "a") == slide_seed(0, "a") != slide_seed(1, "a")
    with pytest.raises(InputError, match="--mosaic"):
        mosaic_rows(features, coords, 0.0, seed=0)


@pytest.fixture(scope="module")
def region_atlas(tmp_path_factory):
    """A quick cohort (planted tumour patches) with its patch index built (exact kind)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.patch_index import PatchIndexConfig, build_atlas_patch_index

    root = tmp_path_factory.mktemp("regions")
    path, cohort = ingest_quick_cohort(root, seed=5)
    with open_atlas(path) as atlas:
        report = build_atlas_patch_index(atlas, PatchIndexConfig())
    metadata = {row["slide_id"]: row for row in csv.DictReader(open(cohort.slides_csv))}
    return path, cohort, metadata, report


def _tumour_box(cohort, slide_id):
    from threads_search.readers.patch_features import read_coords

    coords = read_coords(cohort.features_dir / f"{slide_id}.h5")
    tumour = coords[cohort.truth.tumour_masks[slide_id]]
    (x0, y0), (x1, y1) = tumour.min(axis=0), tumour.max(axis=0) + 1024
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def test_hit_ids_map_back_to_slide_and_coords(region_atlas):
    from threads_search.atlas.store import open_atlas
    from threads_search.readers.patch_features import read_coords
    from threads_search.search.regions import RegionOptions, RegionQuery, search_regions

    path, cohort, _, report = region_atlas
    assert report.sidecar["count"] == report.n_patches == cohort.summary.n_patches
    slide_id = next(iter(cohort.truth.tumour_masks))
    with open_atlas(path, read_only=True) as atlas:
        result = search_regions(atlas, RegionQuery(slide_id=slide_id, patch=0), RegionOptions(k=10))
        vids = dict(atlas.sql("SELECT item_id, vid FROM items WHERE modality = 'slides'").fetchall())
    assert len(result.hits) == 10
    for hit in result.hits:
        vid, row = decode_patch_ids(hit["patch_id"])
        assert int(vid) == vids[hit["id"]] and int(row) == hit["patch"]
        x, y = read_coords(cohort.features_dir / f"{hit['id']}.h5")[hit["patch"]]
        assert (hit["x"], hit["y"], hit["width"], hit["height"]) == (x, y, 1024, 1024)
    assert [h["score"] for h in result.hits] == sorted((h["score"] for h in result.hits), reverse=True)


def test_region_query_finds_planted_tumour_of_same_class(region_atlas):
    """precision@10 = share of region hits that are planted tumour patches of a slide of the
    query's subtype, averaged over 30 query slides (box = the tumour's bounding box)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.search.regions import RegionOptions, RegionQuery, search_regions

    path, cohort, metadata, _ = region_atlas
    masks = cohort.truth.tumour_masks
    precisions, chances = [], []
    with open_atlas(path, read_only=True) as atlas:
        for slide_id in list(masks)[:30]:
            result = search_regions(atlas, RegionQuery(slide_id=slide_id, region=_tumour_box(cohort, slide_id)),
                                    RegionOptions(k=10))
            subtype, patient = metadata[slide_id]["subtype"], metadata[slide_id]["patient_id"]
            assert all(h["patient_id"] != patient for h in result.hits)
            precisions.append(np.mean([masks[h["id"]][h["patch"]] and metadata[h["id"]]["subtype"] == subtype
                                       for h in result.hits]))
            others = [s for s in masks if metadata[s]["patient_id"] != patient]
            matching = sum(int((masks[s] & (metadata[s]["subtype"] == subtype)).sum()) for s in others)
            chances.append(matching / sum(masks[s].size for s in others))
    # Measured: 0.64 against a chance of 0.02 (seed 5).
    assert np.mean(precisions) >= 0.45
    assert np.mean(precisions) >= 10 * np.mean(chances)


def test_filters_and_same_patient_exclusion_hold_for_regions_and_grouped_slides(region_atlas):
    from threads_search.atlas.store import open_atlas
    from threads_search.search.regions import RegionOptions, RegionQuery, search_regions

    path, cohort, metadata, _ = region_atlas
    # A patient with two slides, so exclusion is more than the query slide itself.
    by_patient: dict[str, list[str]] = {}
    for slide_id, row in metadata.items():
        by_patient.setdefault(row["patient_id"], []).append(slide_id)
    patient, slides = next((p, s) for p, s in by_patient.items() if len(s) > 1)
    query = RegionQuery(slide_id=slides[0], region=_tumour_box(cohort, slides[0]))
    with open_atlas(path, read_only=True) as atlas:
        for group_by in (None, "slide"):
            plain = search_regions(atlas, query, RegionOptions(k=15, group_by=group_by))
            assert plain.hits and all(h["patient_id"] != patient for h in plain.hits)
            filtered = search_regions(atlas, query, RegionOptions(k=15, group_by=group_by, where="site = 'site2'"))
            assert filtered.hits and all(h["site"] == "site2" for h in filtered.hits)
            both = search_regions(atlas, query, RegionOptions(k=15, group_by=group_by, include_same_patient=True))
            ids = {h["id"] for h in both.hits}
            assert slides[0] not in ids  # the query slide is never its own hit
        grouped = search_regions(atlas, query, RegionOptions(k=50, group_by="slide", include_same_patient=True,
                                                             votes_per_patch=200))
    assert slides[1] in {h["id"] for h in grouped.hits}  # the same patient's other slide can come back
    assert len({h["id"] for h in grouped.hits}) == len(grouped.hits)
    scores = [h["score"] for h in grouped.hits]
    assert scores == sorted(scores, reverse=True)


def test_slide_votes_weigh_rank_and_similarity():
    from threads_search.search.regions import slide_votes

    ids = encode_patch_ids(np.array([[1, 2, 1], [2, 2, 3]]), np.array([[0, 0, 1], [1, 2, 0]]))
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.6, -0.2]], dtype=np.float32)
    vids, totals, counts = slide_votes(scores, ids)
    discount = 1 / np.log2(np.arange(2, 5))
    # Weight: (similarity - the patch's lowest returned similarity)^2 / log2(1 + rank), mean over patches.
    expected = {1: (0.2**2 * discount[0] + 0.0) / 2,
                2: (0.1**2 * discount[1] + 1.1**2 * discount[0] + 0.8**2 * discount[1]) / 2, 3: 0.0}
    assert vids.tolist() == [2, 1, 3]
    np.testing.assert_allclose(totals, [expected[v] for v in vids.tolist()], rtol=1e-5)
    assert counts.tolist() == [3, 2, 1]
    padded_ids = np.array([[int(ids[0, 0]), -1, -1]])
    vids, totals, _ = slide_votes(np.array([[0.5, -np.inf, -np.inf]], np.float32), padded_ids)
    assert vids.tolist() == [1] and totals.tolist() == [0.0]


def test_replaced_slide_gets_new_ids_and_old_patches_never_come_back(region_atlas, tmp_path):
    """A replaced slide gets a new vid: its old patches are not returned under its id, and a
    rebuild indexes the new file under the new vid."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.patch_index import PatchIndexConfig, build_atlas_patch_index
    from threads_search.search.regions import RegionOptions, RegionQuery, search_regions

    original, cohort, metadata, _ = region_atlas
    path = tmp_path / "atlas"
    shutil.copytree(original, path)
    slide_ids = list(cohort.truth.tumour_masks)
    query_slide, replaced = slide_ids[0], slide_ids[1]
    with open_atlas(path) as atlas:
        old_vid = atlas.sql("SELECT vid FROM items WHERE item_id = ?", [replaced]).fetchone()[0]
    changed = tmp_path / "new" / f"{replaced}.h5"
    changed.parent.mkdir()
    shutil.copy(cohort.features_dir / f"{replaced}.h5", changed)
    import h5py

    with h5py.File(changed, "r+") as handle:
        handle["features"][...] = handle["features"][...] * np.float16(0.5) + np.float16(0.25)
    result = CliRunner().invoke(app, ["ingest", "slides", str(path), str(changed), "--replace"])
    assert result.exit_code == 0, result.output
    with open_atlas(path) as atlas:
        new_vid = atlas.sql("SELECT vid FROM items WHERE item_id = ?", [replaced]).fetchone()[0]
        assert new_vid != old_vid
        query = RegionQuery(slide_id=query_slide, patch=0)
        before = search_regions(atlas, query, RegionOptions(k=200))
        assert all(int(decode_patch_ids(h["patch_id"])[0]) != old_vid for h in before.hits)
        assert replaced not in {h["id"] for h in before.hits}  # its new patches are not indexed yet
        build_atlas_patch_index(atlas, PatchIndexConfig())
        after = search_regions(atlas, RegionQuery(slide_id=replaced, patch=0), RegionOptions(k=5))
        again = search_regions(atlas, query, RegionOptions(k=5000))
    assert after.query["id"] == replaced
    assert any(int(decode_patch_ids(h["patch_id"])[0]) == new_vid for h in again.hits)


def test_cli_index_patches_and_region_search(region_atlas, tmp_path):
    original, cohort, metadata, _ = region_atlas
    path = tmp_path / "atlas"
    shutil.copytree(original, path)
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(path), "--level", "patches", "--kind", "ivfsq", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "ivfsq" in result.output and "IVF" in result.output
    from threads_search.atlas.patch_indexes import patch_index_record
    from threads_search.atlas.store import open_atlas

    with open_atlas(path, read_only=True) as opened:
        stem = patch_index_record(opened)["path"]
    sidecar = json.loads((path / (stem + ".json")).read_text())
    assert sidecar["kind"] == "ivfsq" and sidecar["recall"]["n_queries"] > 0 and 0 < sidecar["recall_at_10"] <= 1
    slide_id = next(iter(cohort.truth.tumour_masks))
    x, y, w, h = _tumour_box(cohort, slide_id)
    result = runner.invoke(app, ["search", str(path), "--slide-id", slide_id, "--region", f"{x},{y},{w},{h}",
                                 "-k", "5", "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["query"]["region"] == [x, y, w, h] and payload["query"]["patches"] >= 1
    assert len(payload["hits"]) == 5
    assert all({"x", "y", "width", "height", "patch", "score"} <= set(hit) for hit in payload["hits"])
    result = runner.invoke(app, ["search", str(path), "--slide-id", slide_id, "--patch", "0", "--group-by", "slide"])
    assert result.exit_code == 0 and "slides (by region votes)" in result.output
    for args, message in ((["--region", "1,2,3"], "--region"), (["--region", "0,0,10,10"], "covers no patch"),
                          (["--patch", "100000"], "--patch"), (["--patch", "0", "--group-by", "slides"], "slides")):
        result = runner.invoke(app, ["search", str(path), "--slide-id", slide_id, *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_features_file_region_query_and_encoder_mismatch(region_atlas, tmp_path):
    from conftest import write_trident

    path, cohort, _, _ = region_atlas
    slide_id = next(iter(cohort.truth.tumour_masks))
    source = cohort.features_dir / f"{slide_id}.h5"
    runner = CliRunner()
    result = runner.invoke(app, ["search", str(path), "--features", str(source), "--patch", "1", "-k", "3",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["hits"]) == 3
    other = write_trident(tmp_path / "other.h5", np.ones((4, 768), np.float16), encoder="uni_v1")
    result = runner.invoke(app, ["search", str(path), "--features", str(other), "--patch", "0"])
    assert result.exit_code == 2 and "uni_v1" in result.output
    respelled = write_trident(tmp_path / "respelled.h5", np.ones((4, 768), np.float16), encoder="Synthetic-Conch-v15")
    result = runner.invoke(app, ["search", str(path), "--features", str(respelled), "--patch", "0", "--format", "json"])
    assert result.exit_code == 0, result.output  # another spelling of the atlas's encoder (alias table) is the same


def test_search_without_patch_index_says_how_to_build(tmp_path):
    path, cohort = ingest_quick_cohort(tmp_path, seed=2)
    slide_id = next(iter(cohort.truth.tumour_masks))
    result = CliRunner().invoke(app, ["search", str(path), "--slide-id", slide_id, "--patch", "0"])
    assert result.exit_code == 2 and "--level patches" in result.output


def test_eval_by_regions_beside_slide_embeddings(region_atlas, tmp_path):
    from conftest import store_fitted_baseline

    original, cohort, metadata, _ = region_atlas
    path = tmp_path / "atlas"
    shutil.copytree(original, path)
    model_id = store_fitted_baseline(path)
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(path), "--model", model_id])
    assert result.exit_code == 0, result.output
    report = tmp_path / "eval.json"
    args = ["eval", str(path), "--label", "subtype", "--queries", "cohort = 'heldout'", "--database",
            "cohort = 'heldout'", "--model", model_id, "-k", "1,5", "--bootstrap", "50", "--json", str(report)]
    result = runner.invoke(app, args + ["--by", "regions"])
    assert result.exit_code == 0, result.output
    assert "region votes" in result.output
    payload = json.loads(report.read_text())
    votes, chance = payload["baselines"]["region_votes"], payload["baselines"]["chance"]
    assert payload["region_votes"]["patch_index"]["count"] == cohort.summary.n_patches
    low, high = payload["baseline_details"]["region_votes"]["ci95"]["mAP@5"]
    assert low <= votes["mAP@5"] <= high
    # Planted tumour patches carry the subtype: region votes retrieve it far above chance.
    # Measured 0.45 against a chance of 0.07 (seed 5).
    assert votes["mAP@5"] > chance["mAP@5"] + 0.2
    assert payload["n_queries"] > 10
    result = runner.invoke(app, args + ["--by", "region"])
    assert result.exit_code == 2
