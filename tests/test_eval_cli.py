"""`threads-search eval` and `fewshot` end to end on a small atlas (no training: an untrained
THREADS model with an expression branch plays the trained model, beside a fitted mean pooling)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app

runner = CliRunner()
HELDOUT = "cohort = 'heldout'"
TRAIN = "cohort = 'train'"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@dataclass
class Built:
    path: Path
    model_id: str  # untrained threads-abmil-cpu with an expression encoder
    baseline_id: str  # fitted mean pooling


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    """Quick synthetic cohort, ingested; mean pooling and an untrained THREADS model embedded."""
    import torch

    from conftest import ingest_quick_cohort, store_fitted_baseline
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import embed_atlas
    from threads_search.encoders.molecular import ExpressionNormaliser
    from threads_search.encoders.registry import create_model
    from threads_search.atlas.stored_models import store_model
    from threads_search.training.job import paired_dataset

    path, _ = ingest_quick_cohort(tmp_path_factory.mktemp("eval"))
    baseline_id = store_fitted_baseline(path, TRAIN)
    with open_atlas(path) as atlas:
        dataset = paired_dataset(atlas, TRAIN)
        torch.manual_seed(0)
        model = create_model("threads-abmil-cpu", in_dim=768, patch_encoder=atlas.meta("patch_encoder"))
        expression = dataset.expression
        model.attach_expression(ExpressionNormaliser.fit(expression.matrix, expression.genes, expression.scale))
        model.eval()
        model_id = store_model(atlas, model)
        embed_atlas(atlas, baseline_id)
        embed_atlas(atlas, model_id)
    return Built(path, model_id, baseline_id)


@dataclass
class Items:
    """Embedded items of one modality in vid order, read straight from the atlas."""

    vectors: np.ndarray
    subtypes: list[str]
    patients: list[str]
    cohorts: list[str]

    def where(self, cohort: str) -> Items:
        keep = [i for i, c in enumerate(self.cohorts) if c == cohort]
        return Items(self.vectors[keep], [self.subtypes[i] for i in keep], [self.patients[i] for i in keep],
                     [cohort] * len(keep))


def items(built: Built, model_id: str, modality: str) -> Items:
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import load_embeddings

    with open_atlas(built.path, read_only=True) as atlas:
        rows = atlas.sql("SELECT vid, subtype, patient_id, cohort FROM items WHERE modality = ? ORDER BY vid",
                         [modality]).fetchall()
        ids, vectors = load_embeddings(atlas, model_id, modality)
    assert [r[0] for r in rows] == ids.tolist()
    return Items(vectors, [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])


def hand_metrics(queries: Items, database: Items, k: int) -> dict[str, float]:
    """mAP@K (/K), Acc@K and chance Acc@1 (= mean R_q / N_q) by explicit loops over queries:
    cosine ranking, items of the query's own patient removed, ties in database order."""
    q = queries.vectors.astype(np.float64)
    d = database.vectors.astype(np.float64)
    scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    maps, hits_any, chance_acc1 = [], [], []
    for i, (label, patient) in enumerate(zip(queries.subtypes, queries.patients)):
        eligible = [j for j in np.argsort(-scores[i], kind="stable") if database.patients[j] != patient]
        relevant = [database.subtypes[j] == label for j in eligible[:k]]
        found, precision_sum = 0, 0.0
        for rank, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                found += 1
                precision_sum += found / rank
        maps.append(precision_sum / k)
        hits_any.append(float(any(relevant)))
        chance_acc1.append(sum(database.subtypes[j] == label for j in eligible) / len(eligible))
    return {f"mAP@{k}": float(np.mean(maps)), f"Acc@{k}": float(np.mean(hits_any)),
            "chance Acc@1": float(np.mean(chance_acc1))}


def direct_report(queries: Items, database: Items, ks, n_bootstrap: int):
    from threads_search.evaluation import evaluate_retrieval

    return evaluate_retrieval(queries.vectors, queries.subtypes, queries.patients, database.vectors,
                              database.subtypes, database.patients, ks=ks, n_bootstrap=n_bootstrap, seed=0)


def run_eval(built: Built, *extra, queries=HELDOUT, database=HELDOUT):
    return cli("eval", built.path, "--label", "subtype", "--queries", queries, "--database", database, *extra)


def test_slide_to_slide_json_matches_the_evaluator_and_a_hand_computation(built, tmp_path):
    json_path, plots = tmp_path / "report" / "eval.json", tmp_path / "plots"
    result = run_eval(built, "-k", "1,5", "--bootstrap", 30, "--json", json_path, "--plots", plots)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert set(payload) >= {"metrics", "ci95", "per_class", "n_queries", "n_database", "definitions", "baselines"}
    assert payload["model_id"] == built.model_id and payload["baseline_model_id"] == built.baseline_id
    heldout = items(built, built.model_id, "slides").where("heldout")
    assert payload["n_queries"] == payload["n_database"] == len(heldout.subtypes)

    direct = direct_report(heldout, heldout, (1, 5), 30).to_dict()
    assert set(payload["metrics"]) == {f"{m}@{k}" for m in ("mAP", "Acc", "MV", "mAP_trec") for k in (1, 5)}
    for key, value in direct["metrics"].items():
        assert payload["metrics"][key] == pytest.approx(value, abs=1e-12)
        assert payload["baselines"]["chance"][key] == pytest.approx(direct["chance"]["metrics"][key], abs=1e-12)
        low, high = payload["ci95"][key]
        assert low <= payload["metrics"][key] <= high
    hand = hand_metrics(heldout, heldout, 5)
    assert payload["metrics"]["mAP@5"] == pytest.approx(hand["mAP@5"], abs=1e-12)
    assert payload["metrics"]["Acc@5"] == pytest.approx(hand["Acc@5"], abs=1e-12)
    assert payload["baselines"]["chance"]["Acc@1"] == pytest.approx(hand["chance Acc@1"], abs=1e-12)
    # Every query is also in the database: without the same-patient exclusion Acc@1 would be 1.
    assert payload["metrics"]["Acc@1"] == pytest.approx(hand_metrics(heldout, heldout, 1)["Acc@1"], abs=1e-12)
    assert payload["metrics"]["Acc@1"] < 1
    assert payload["overlap"] == {"items": len(heldout.subtypes), "patients": len(set(heldout.patients))}

    baseline = items(built, built.baseline_id, "slides").where("heldout")
    for key, value in direct_report(baseline, baseline, (1, 5), 0).to_dict()["metrics"].items():
        assert payload["baselines"]["meanpool"][key] == pytest.approx(value, abs=1e-12)

    classes = sorted(set(heldout.subtypes))
    assert sorted(payload["per_class"]) == classes
    for label in classes:
        figures = payload["per_class"][label]
        assert figures["n_queries"] == figures["n_database"] == heldout.subtypes.count(label)
        assert label in result.stdout
    assert "mAP@K" in payload["definitions"] and "mAP_trec@K" in payload["definitions"]
    assert "mean pooling" in result.stdout and "chance" in result.stdout

    written = sorted(p.name for p in plots.iterdir())
    assert written == ["embedding_projection.png", "per_class_mAP@5.png", "precision_at_k.png"]
    for png in plots.iterdir():
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_SIGNATURE


def test_expression_to_slides_excludes_the_query_patient_and_flags_the_baseline(built, tmp_path):
    json_path = tmp_path / "x.json"
    result = run_eval(built, "--query-modality", "expression", "-k", "5", "--bootstrap", 0, "--json", json_path)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    queries = items(built, built.model_id, "expression").where("heldout")
    database = items(built, built.model_id, "slides").where("heldout")
    assert (payload["query_modality"], payload["target"]) == ("expression", "slides")
    assert payload["n_queries"] == len(queries.subtypes) and payload["n_database"] == len(database.subtypes)
    hand = hand_metrics(queries, database, 5)
    assert payload["metrics"]["mAP@5"] == pytest.approx(hand["mAP@5"], abs=1e-12)
    assert payload["metrics"]["Acc@5"] == pytest.approx(hand["Acc@5"], abs=1e-12)
    # Different modalities share no item, but every held-out expression patient has slides.
    assert payload["overlap"] == {"items": 0, "patients": len(set(queries.patients))}
    assert payload["ci95"]["mAP@5"] == [None, None]  # no bootstrap asked for
    assert "meanpool" in payload["baselines"]
    assert any("no shared slide/profile space" in note for note in payload["notes"])
    assert "no shared slide/profile space" in result.stderr


def test_a_single_member_class_is_reported_with_a_warning_not_an_error(built, tmp_path):
    train = items(built, built.model_id, "slides").where("train")
    single = sorted(label for label in set(train.subtypes) if train.subtypes.count(label) == 1)
    assert single, "the fixture cohort should have a class with one training slide"
    json_path = tmp_path / "train.json"
    result = run_eval(built, "-k", "1,5", "--bootstrap", 0, "--json", json_path, queries=TRAIN, database=TRAIN)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert sorted(payload["per_class"]) == sorted(set(train.subtypes))
    for label in single:
        assert payload["per_class"][label]["n_queries"] == 1
        assert payload["per_class"][label]["mAP@5"] == 0.0 and payload["per_class"][label]["Acc@5"] == 0.0
        assert any(f"class '{label}'" in warning for warning in payload["warnings"])
        assert f"warning: class '{label}'" in result.stderr


def test_a_model_prefix_selects_mean_pooling_which_then_has_only_chance_beside_it(built, tmp_path):
    json_path = tmp_path / "mp.json"
    result = run_eval(built, "--model", built.baseline_id[:6], "-k", "5", "--bootstrap", 0, "--json", json_path)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert payload["model_id"] == built.baseline_id and set(payload["baselines"]) == {"chance"}
    heldout = items(built, built.baseline_id, "slides").where("heldout")
    assert payload["metrics"]["mAP@5"] == pytest.approx(hand_metrics(heldout, heldout, 5)["mAP@5"], abs=1e-12)
    assert "mean pooling" not in result.stdout


def test_a_baseline_without_embeddings_becomes_a_note(built, tmp_path):
    from threads_search.atlas.store import open_atlas
    from threads_search.encoders.registry import create_model
    from threads_search.atlas.stored_models import store_model

    copy = tmp_path / "atlas"
    shutil.copytree(built.path, copy)
    with open_atlas(copy) as atlas:  # a newer mean pooling, never embedded
        newer = store_model(atlas, create_model("meanpool", in_dim=768, seed=1,
                                                patch_encoder=atlas.meta("patch_encoder")))
    json_path = tmp_path / "e.json"
    result = cli("eval", copy, "--label", "subtype", "--queries", HELDOUT, "--database", HELDOUT, "-k", "5",
                 "--bootstrap", 0, "--json", json_path)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert set(payload["baselines"]) == {"chance"} and payload["baseline_model_id"] is None
    assert f"mean-pooling baseline {newer} is not embedded" in result.stderr


@pytest.mark.parametrize("overrides, expected", [
    ({"--label": "no_such_column"}, "--label no_such_column: no such metadata column"),
    ({"--label": "stage", "--query-modality": "expression"}, "--label stage: empty for every one"),
    ({"--queries": "cohort = 'nowhere'"}, "--queries \"cohort = 'nowhere'\" selects no slides"),
    ({"--database": "site = 'nowhere'"}, "--database \"site = 'nowhere'\" selects no slides"),
    ({"--queries": "cohort = = 'heldout'"}, "--queries \"cohort = = 'heldout'\": Parser Error"),
    ({"--database": "no_such_column = 1"}, "--database \"no_such_column = 1\": no column 'no_such_column'"),
    ({"-k": "1,5000"}, "-k 5000: larger than the database"),
    ({"-k": "1,five"}, "-k 1,five: expected comma-separated integers"),
    ({"--query-modality": "images"}, "'images' is not one of 'slides', 'expression', 'mutations'"),
    ({"--site-column": "hospital"}, "--site-column hospital: no such metadata column (columns: site, cohort"),
])
def test_bad_input_is_one_line_with_exit_code_2_and_writes_nothing(built, tmp_path, overrides, expected):
    json_path = tmp_path / "never.json"
    options = {"--label": "subtype", "--queries": HELDOUT, "--database": HELDOUT, "--bootstrap": "0",
               "--json": json_path, **overrides}
    result = cli("eval", built.path, *(item for pair in options.items() for item in pair))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.output and not json_path.exists()


def item_sites(built: Built, modality: str, cohort: str) -> list[str]:
    """`site` of the cohort's items of one modality, in vid order."""
    from threads_search.atlas.store import open_atlas

    with open_atlas(built.path, read_only=True) as atlas:
        return [r[0] for r in atlas.sql("SELECT site FROM items WHERE modality = ? AND cohort = ? ORDER BY vid",
                                        [modality, cohort]).fetchall()]


def hand_site_mixing(queries: Items, query_sites, database: Items, db_sites, k: int) -> tuple[float, dict]:
    """Mean over queries of (own-site share of the top k) / (own-site share of the eligible
    database), by explicit loops: cosine ranking, the query's own patient removed."""
    q = queries.vectors.astype(np.float64)
    d = database.vectors.astype(np.float64)
    scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    values: dict[str, list[float]] = {}
    for i, (patient, site) in enumerate(zip(queries.patients, query_sites)):
        eligible = [j for j in np.argsort(-scores[i], kind="stable") if database.patients[j] != patient]
        database_share = sum(db_sites[j] == site for j in eligible) / len(eligible)
        hit_share = sum(db_sites[j] == site for j in eligible[:k]) / k
        values.setdefault(site, []).append(hit_share / database_share)
    every = [v for site_values in values.values() for v in site_values]
    return float(np.mean(every)), {site: float(np.mean(v)) for site, v in values.items()}


def test_site_mixing_in_the_json_and_the_table_matches_a_hand_computation(built, tmp_path):
    json_path = tmp_path / "sites.json"
    result = run_eval(built, "-k", "1,5", "--bootstrap", 50, "--json", json_path)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    heldout = items(built, built.model_id, "slides").where("heldout")
    sites = item_sites(built, "slides", "heldout")
    overall, per_site = hand_site_mixing(heldout, sites, heldout, sites, 5)
    mixing = payload["site_mixing"]
    assert mixing["column"] == "site" and mixing["n_undefined"] == 0
    assert mixing["overall"]["site_mixing@5"] == pytest.approx(overall, abs=1e-12)
    assert sorted(mixing["per_site"]) == sorted(per_site)
    for site, value in per_site.items():
        assert mixing["per_site"][site]["site_mixing@5"] == pytest.approx(value, abs=1e-12)
        assert mixing["per_site"][site]["n_queries"] == sites.count(site)
    low, high = mixing["ci95"]["site_mixing@5"]
    assert low <= overall <= high
    baseline = items(built, built.baseline_id, "slides").where("heldout")
    baseline_overall, _ = hand_site_mixing(baseline, sites, baseline, sites, 5)
    assert payload["baseline_details"]["meanpool"]["site_mixing"]["overall"]["site_mixing@5"] == pytest.approx(
        baseline_overall, abs=1e-12)
    row = next(line for line in result.stdout.splitlines() if line.startswith("site_mixing@5 "))
    assert f"{overall:.3f} [{low:.3f}, {high:.3f}]" in row and f"{baseline_overall:.3f}" in row
    assert row.split()[-1] == "1.000"  # chance
    assert "site mixing by query site (K = 5; 1.0 = no site preference):" in result.stdout


def test_site_column_override_and_a_single_site_database(built, tmp_path):
    """--site-column cohort: every held-out query's database is its own 'site', so every hit is
    from it and so is every eligible item: site mixing is exactly 1."""
    json_path = tmp_path / "cohort.json"
    result = run_eval(built, "-k", "5", "--bootstrap", 0, "--site-column", "cohort", "--json", json_path)
    assert result.exit_code == 0, result.output
    mixing = json.loads(json_path.read_text())["site_mixing"]
    assert mixing["column"] == "cohort" and list(mixing["per_site"]) == ["heldout"]
    assert mixing["overall"]["site_mixing@5"] == 1.0 and mixing["per_site"]["heldout"]["database_share"] == 1.0


def test_queries_from_sites_missing_from_the_database_are_left_out_of_site_mixing(built, tmp_path):
    json_path = tmp_path / "cross.json"
    result = run_eval(built, "-k", "5", "--bootstrap", 0, "--json", json_path, database=TRAIN)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert payload["site_mixing"]["overall"]["site_mixing@5"] is None
    assert payload["site_mixing"]["n_undefined"] == payload["n_queries"]
    assert f"{payload['n_queries']} queries have no eligible database item of their own site" in result.stdout


def test_worst_and_rare_classes_sit_beside_the_mean(built, tmp_path):
    from threads_search.atlas.store import open_atlas

    json_path = tmp_path / "classes.json"
    result = run_eval(built, "-k", "5", "--bootstrap", 0, "--json", json_path)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    per_class = payload["per_class"]
    highlights = payload["class_highlights"]["mAP@5"]
    lowest = sorted((c for c in per_class if per_class[c]["mAP@5"] is not None), key=lambda c: (per_class[c]["mAP@5"], c))
    assert [e["class"] for e in highlights["worst"]] == lowest[:3]
    with open_atlas(built.path, read_only=True) as atlas:
        patients = dict(atlas.sql("SELECT subtype, count(DISTINCT patient_id) FROM items GROUP BY 1").fetchall())
        (n_patients,) = atlas.sql("SELECT count(DISTINCT patient_id) FROM items").fetchone()
    assert highlights["prevalence"] == {"n_patients": n_patients, "scope": "labelled atlas patients"}
    assert [e["prevalence_patients"] for e in highlights["worst"]] == [patients[c] for c in lowest[:3]]
    rare = sorted((c for c in patients if patients[c] <= 0.05 * n_patients), key=lambda c: (patients[c], c))
    assert [e["class"] for e in highlights["rare"]] == rare
    heldout = items(built, built.model_id, "slides").where("heldout")
    for label in per_class:
        assert per_class[label]["n_patients"] == len({p for p, s in zip(heldout.patients, heldout.subtypes) if s == label})
    worst_line = next(line for line in result.stdout.splitlines() if line.startswith("worst classes by mAP@5: "))
    assert worst_line.startswith(f"worst classes by mAP@5: {lowest[0]} {per_class[lowest[0]]['mAP@5']:.3f} (")
    assert f"rare classes (<= 5% of {n_patients} labelled atlas patients): " in result.stdout


def test_an_atlas_without_a_site_column_says_so_instead_of_failing(tmp_path, feature_folder):
    from conftest import write_csv
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import store_model
    from threads_search.encoders.registry import create_model
    from threads_search.jobs.embed import embed_atlas

    rows = [[f"P{p}-S{s}", f"P{p}", ["luminal", "basal", "her2"][p]] for p in range(3) for s in range(2)]
    metadata = write_csv(tmp_path / "slides.csv", ["slide_id", "patient_id", "subtype"], rows)
    path = tmp_path / "atlas"
    for args in (("init", path), ("ingest", "slides", path, feature_folder, "--metadata", metadata)):
        assert cli(*args).exit_code == 0
    with open_atlas(path) as atlas:
        model_id = store_model(atlas, create_model("meanpool", in_dim=768, seed=0,
                                                   patch_encoder=atlas.meta("patch_encoder")))
        embed_atlas(atlas, model_id)
    json_path = tmp_path / "e.json"
    result = cli("eval", path, "--label", "subtype", "--queries", "TRUE", "--database", "TRUE", "-k", "1",
                 "--bootstrap", 0, "--json", json_path)
    assert result.exit_code == 0, result.output
    assert "site mixing: no site column (none of site, center" in result.stdout
    assert json.loads(json_path.read_text())["site_mixing"] is None


def test_fewshot_writes_a_curve_whose_full_shot_prototype_matches_nearest_centroid(built, tmp_path):
    json_path, plots = tmp_path / "fs" / "fewshot.json", tmp_path / "fs_plots"
    result = cli("fewshot", built.path, "--label", "subtype", "--train", TRAIN, "--test", HELDOUT,
                 "--shots", "1,100", "--repeats", 2, "--json", json_path, "--plots", plots)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    train = items(built, built.model_id, "slides").where("train")
    test = items(built, built.model_id, "slides").where("heldout")
    assert payload["shots"] == [1, 100] and payload["n_repeats"] == 2 and payload["model_id"] == built.model_id
    assert payload["classes"] == sorted(set(train.subtypes))
    for method in ("prototype", "linear_probe"):
        for metric in ("balanced_accuracy", "macro_auroc"):
            figures = payload["methods"][method][metric]
            assert all(0.0 <= value <= 1.0 for value in figures["mean"] + figures["std"])
            assert figures["std"][1] == pytest.approx(0.0, abs=1e-12)  # k=100 draws every item each time

    # Nearest normalised class centroid of all training slides, scored by balanced accuracy.
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    train_unit, test_unit = unit(train.vectors.astype(np.float64)), unit(test.vectors.astype(np.float64))
    classes = payload["classes"]
    centroids = unit(np.stack([train_unit[[s == c for s in train.subtypes]].sum(axis=0) for c in classes]))
    predicted = [classes[i] for i in (test_unit @ centroids.T).argmax(axis=1)]
    recalls = [np.mean([p == c for p, t in zip(predicted, test.subtypes) if t == c]) for c in set(test.subtypes)]
    assert payload["methods"]["prototype"]["balanced_accuracy"]["mean"][1] == pytest.approx(np.mean(recalls), abs=1e-12)
    png = plots / "fewshot_curve.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_SIGNATURE
    assert "prototype bal.acc" in result.stdout


def test_fewshot_bad_label_is_one_line_with_exit_code_2(built):
    result = cli("fewshot", built.path, "--label", "grade", "--train", TRAIN, "--test", HELDOUT)
    assert result.exit_code == 2 and result.stderr.strip() == result.stderr.strip().splitlines()[0]
    assert "--label grade: no such metadata column" in result.stderr
