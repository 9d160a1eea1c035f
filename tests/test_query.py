"""The query engine through the CLI on a small atlas indexed with the mean-pooling model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def atlas(tmp_path_factory) -> Path:
    """Quick synthetic cohort, ingested, embedded and indexed with a fitted mean-pooling model."""
    from conftest import indexed_quick_atlas

    path, _ = indexed_quick_atlas(tmp_path_factory.mktemp("query"))
    return path


def slides_table(atlas: Path) -> list[tuple]:
    from threads_search.atlas.store import open_atlas

    with open_atlas(atlas, read_only=True) as opened:
        return opened.sql("SELECT item_id, patient_id, cohort, subtype, vid FROM items WHERE modality = 'slides' ORDER BY vid").fetchall()


def brute_force(atlas: Path, query_vid: int, allowed: set[int], k: int) -> list[tuple[int, float]]:
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.stored_models import resolve_model_id

    with open_atlas(atlas, read_only=True) as opened:
        ids, vectors = load_embeddings(opened, resolve_model_id(opened), "slides")
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query = vectors[list(ids).index(query_vid)]
    scores = vectors @ query
    order = [i for i in np.argsort(-scores, kind="stable") if int(ids[i]) in allowed]
    return [(int(ids[i]), float(scores[i])) for i in order[:k]]


def test_slide_search_matches_brute_force_and_excludes_the_patient(atlas):
    rows = slides_table(atlas)
    query_id, patient, *_ = rows[0]
    result = cli("search", atlas, "--slide-id", query_id, "-k", 5, "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    allowed = {vid for _, p, _, _, vid in rows if p != patient}
    expected = brute_force(atlas, rows[0][4], allowed, 5)
    vid_of = {item: vid for item, *_, vid in rows}
    assert [vid_of[h["id"]] for h in payload["hits"]] == [v for v, _ in expected]
    np.testing.assert_allclose([h["score"] for h in payload["hits"]], [s for _, s in expected], atol=1e-5)
    assert all(h["patient_id"] != patient for h in payload["hits"])
    assert set(payload) >= {"query", "hits"} and payload["query"]["id"] == query_id
    assert set(payload["hits"][0]) >= {"rank", "id", "modality", "patient_id", "score", "subtype", "cohort"}
    assert [h["rank"] for h in payload["hits"]] == [1, 2, 3, 4, 5]


def test_include_same_patient_brings_back_the_patients_other_slide(atlas):
    rows = slides_table(atlas)
    patients = [p for _, p, *_ in rows]
    query = next(r for r in rows if patients.count(r[1]) > 1)
    n = len(rows) - 1
    hits = json.loads(cli("search", atlas, "--slide-id", query[0], "-k", n, "--include-same-patient", "--format", "json").stdout)["hits"]
    assert query[1] in {h["patient_id"] for h in hits}
    assert query[0] not in {h["id"] for h in hits}  # never the query itself


def test_filtered_search_returns_k_matching_items(atlas):
    rows = slides_table(atlas)
    heldout = [r for r in rows if r[2] == "heldout"]
    result = cli("search", atlas, "--slide-id", rows[0][0], "-k", 4, "--where", "cohort = 'heldout'", "--format", "json")
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == 4 and all(h["cohort"] == "heldout" for h in hits)
    expected = brute_force(atlas, rows[0][4], {r[4] for r in heldout if r[1] != rows[0][1]}, 4)
    assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_k_larger_than_candidates_returns_what_exists_and_says_so(atlas):
    rows = slides_table(atlas)
    rare = [r for r in rows if r[3] == "clear_cell"]
    result = cli("search", atlas, "--slide-id", rows[0][0], "-k", 500, "--where", "subtype = 'clear_cell'", "--format", "json")
    assert result.exit_code == 0
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == len([r for r in rare if r[1] != rows[0][1]])
    assert "can be returned" in result.output


def test_expression_row_to_slides_and_table_output(atlas, tmp_path):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.profiles import load_profiles

    with open_atlas(atlas, read_only=True) as opened:
        (profiles,) = load_profiles(opened, "expression")
    sample = profiles.sample_ids[0]
    header = "sample_id," + ",".join(profiles.genes)
    (tmp_path / "one.csv").write_text(header + "\n" + sample + "," + ",".join(f"{v:.6g}" for v in profiles.values[0]) + "\n")
    result = cli("search", atlas, "--expression", tmp_path / "one.csv", "-k", 3, "--target", "slides")
    assert result.exit_code == 0, result.output
    assert "query: expression_file" in result.output and "rank" in result.output
    assert "top hits: subtype" in result.output
    by_id = json.loads(cli("search", atlas, "--sample-id", sample, "-k", 3, "--format", "json", "--include-same-patient").stdout)
    from_file = json.loads(cli("search", atlas, "--expression", tmp_path / "one.csv", "-k", 3, "--format", "json").stdout)
    assert [h["id"] for h in by_id["hits"]] == [h["id"] for h in from_file["hits"]]


def test_prototype_classification_matches_a_hand_computation(atlas):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.stored_models import resolve_model_id
    from threads_search.search.prototypes import build_prototypes, classify_slides

    with open_atlas(atlas) as opened:
        model_id = resolve_model_id(opened)
        built = build_prototypes(opened, model_id, "subtype", "slides", "cohort = 'train'", "hand")
        result = classify_slides(opened, "hand", "cohort = 'heldout'")
        ids, vectors = load_embeddings(opened, model_id, "slides")
        labels = dict(opened.sql("SELECT vid, subtype FROM items WHERE modality = 'slides'").fetchall())
        cohort = dict(opened.sql("SELECT vid, cohort FROM items WHERE modality = 'slides'").fetchall())
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    means = {}
    for label in built.classes:
        members = unit[[labels[int(i)] == label and cohort[int(i)] == "train" for i in ids]]
        mean = members.mean(axis=0)
        means[label] = mean / np.linalg.norm(mean)
    heldout = [j for j, i in enumerate(ids) if cohort[int(i)] == "heldout"]
    expected = [max(means, key=lambda c: float(unit[j] @ means[c])) for j in heldout]
    assert result.predicted == expected
    np.testing.assert_allclose(result.scores[:, 0], unit[heldout] @ means[built.classes[0]], atol=1e-5)
    search = json.loads(cli("search", atlas, "--prototype", f"hand:{built.classes[0]}", "-k", 3, "--format", "json").stdout)
    assert len(search["hits"]) == 3


@pytest.mark.parametrize("args, fragment", [
    (["--slide-id", "no-such-slide"], "unknown slide id 'no-such-slide'"),
    (["--sample-id", "no-such-sample"], "unknown sample id 'no-such-sample'"),
    (["--slide-id", "{slide}", "--where", "cohort = "], "--where"),
    (["--slide-id", "{slide}", "--where", "colour = 'red'"], "columns: modality, item_id"),
    (["--slide-id", "{slide}", "--where", "cohort = 'nowhere'"], "matches no slides"),
    (["--prototype", "missing:x"], "no prototype set 'missing'"),
    (["--slide-id", "{slide}", "--model", "ffff"], "--model ffff"),
    (["--slide-id", "{slide}", "--sample-id", "x"], "give exactly one query"),
])
def test_bad_queries_get_one_line_errors(atlas, args, fragment):
    slide = slides_table(atlas)[0][0]
    result = cli("search", atlas, *[a.format(slide=slide) for a in args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1


def test_query_file_with_wrong_feature_dimension(atlas, tmp_path):
    from conftest import write_trident

    path = write_trident(tmp_path / "uni.h5", np.ones((5, 1024), np.float32), encoder="uni_v1")
    result = cli("search", atlas, "--features", path)
    assert result.exit_code == 2 and "768" in result.output and "1024" in result.output


def test_prototype_class_without_members(atlas):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id
    from threads_search.search.prototypes import build_prototypes

    with open_atlas(atlas) as opened:
        build_prototypes(opened, resolve_model_id(opened), "subtype", "slides", "cohort = 'train'", "p2")
    result = cli("search", atlas, "--prototype", "p2:not_a_subtype")
    assert result.exit_code == 2 and "has no class 'not_a_subtype'" in result.output


def test_corrupt_or_missing_index_says_rebuild(atlas, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(atlas, copy)
    slide = slides_table(copy)[0][0]
    index_file = next((copy / "indexes").glob("*-slides-*.faiss"))
    index_file.write_bytes(index_file.read_bytes()[:100])
    result = cli("search", copy, "--slide-id", slide)
    assert result.exit_code == 2 and "rebuild" in result.output
    index_file.unlink()
    result = cli("search", copy, "--slide-id", slide)
    assert result.exit_code == 2 and "rebuild" in result.output


def test_index_of_another_model_is_refused(atlas, tmp_path):
    import shutil

    from threads_search.atlas.store import open_atlas

    copy = tmp_path / "copy"
    shutil.copytree(atlas, copy)
    with open_atlas(copy) as opened:
        (stem,) = opened.sql("SELECT path FROM indexes WHERE modality = 'slides'").fetchone()
    sidecar = copy / f"{stem}.json"
    payload = json.loads(sidecar.read_text())
    payload["model_id"] = "0123456789abcdef"
    sidecar.write_text(json.dumps(payload))
    result = cli("search", copy, "--slide-id", slides_table(copy)[0][0])
    assert result.exit_code == 2 and "was built from model 0123456789abcdef" in result.output
