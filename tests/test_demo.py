"""`threads-search demo --quick` end to end through the CLI, its report checked against hand
computations from the atlas it leaves, and the re-run rules of the demo folder."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pytest
from typer.testing import CliRunner

from threads_search.cli.app import app
from threads_search.demo.folder import MARKER_NAME, prepare_folder
from threads_search.errors import InputError

runner = CliRunner()
K = 5
TASKS = {"slide_to_slide": "slides", "expression_to_slide": "expression"}
STAGES = ("generate", "ingest", "train", "embed", "index", "search", "evaluate", "prototypes")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quick demo run: (CLI result, out folder, parsed report/demo.json)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return result, out, json.loads((out / "report" / "demo.json").read_text())


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _held_out(out, model_id: str, modality: str, cohort: str = "heldout"):
    """(unit vectors, patients, subtypes) of the cohort's items embedded with the model."""
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.embeddings import load_embeddings

    with open_atlas(out / "atlas", read_only=True) as atlas:
        rows = atlas.sql("SELECT vid, patient_id, subtype FROM items WHERE modality = ? AND cohort = ?",
                         [modality, cohort]).fetchall()
        ids, vectors = load_embeddings(atlas, model_id, modality, [r[0] for r in rows])
    meta = {r[0]: r[1:] for r in rows}
    assert len(ids) == len(rows)
    return (_unit(vectors.astype(np.float64)), np.array([meta[int(i)][0] for i in ids]),
            np.array([meta[int(i)][1] for i in ids]))


def _hand_metrics(queries, database, k: int = K) -> dict[str, float]:
    """mAP@k (Patho-Bench: sum_{j<=k} P@j rel_j / k) and Acc@k, own patient excluded, plus their
    closed-form chance levels under a uniformly random ranking of the same eligible database."""
    q_vectors, q_patients, q_labels = queries
    d_vectors, d_patients, d_labels = database
    figures = {"mAP": [], "Acc": [], "chance_mAP": [], "chance_Acc": []}
    for vector, patient, label in zip(q_vectors, q_patients, q_labels):
        eligible = d_patients != patient
        scores = d_vectors[eligible] @ vector
        relevant = (d_labels[eligible] == label).astype(float)
        top = relevant[np.argsort(-scores, kind="stable")[:k]]
        precision = np.cumsum(top) / np.arange(1, k + 1)
        figures["mAP"].append((precision * top).sum() / k)
        figures["Acc"].append(float(top.any()))
        n, r = len(relevant), relevant.sum()
        # E[P@j rel_j] = (1/j) (P(rel_j) + (j - 1) P(rel_i and rel_j)) for a random order.
        expected = [(r / n + (j - 1) * r * (r - 1) / (n * (n - 1))) / j for j in range(1, k + 1)]
        figures["chance_mAP"].append(sum(expected) / k)
        figures["chance_Acc"].append(1 - comb(int(n - r), k) / comb(n, k))
    return {name: float(np.mean(values)) for name, values in figures.items()}


def test_cli_narrates_every_stage_and_ends_with_the_summary(demo):
    result, out, payload = demo
    output = result.output
    for index in range(1, 9):
        assert f"[{index}/8]" in output
    search = payload["search"]
    assert f"query: slide {search['slide_id']} -> slides" in output
    assert f"{search['n_relevant_hits']} of {K} top hits" in output or search["majority"] in output
    summary_start = output.index("Held-out sites")
    assert output.index("[8/8]") < summary_start
    summary = output[summary_start:]
    assert "slide -> slide" in summary and "expression -> slide" in summary
    trained = payload["summary"]["slide_to_slide"]["trained"]
    assert f"{trained['mAP@5']:.3f}" in summary
    assert f"balanced accuracy {payload['prototypes']['balanced_accuracy']:.3f}" in summary
    assert f"threads-search search {out / 'atlas'} --slide-id {search['slide_id']}" in summary


@pytest.mark.parametrize("task, task_name", [("slide_to_slide", "slide -> slide"),
                                             ("expression_to_slide", "expression -> slide")])
def test_summary_lists_worst_and_rare_classes_and_site_mixing_from_the_evaluator(demo, task, task_name):
    result, out, payload = demo
    evaluator = json.loads((out / "report" / f"{task}.json").read_text())
    figures = payload["evaluation"][task]
    assert figures["class_highlights"] == evaluator["class_highlights"][f"mAP@{K}"]
    worst = figures["class_highlights"]["worst"]
    assert len(worst) == 3 and worst[0][f"mAP@{K}"] == min(
        f[f"mAP@{K}"] for f in evaluator["per_class"].values() if f[f"mAP@{K}"] is not None)
    summary = result.output[result.output.index("Held-out sites"):]
    assert f"{task_name}, worst classes by mAP@{K}: {worst[0]['class']} {worst[0][f'mAP@{K}']:.3f}" in summary
    assert f"{task_name}, rare classes (<= 5% of {payload['cohort']['n_patients']} labelled atlas patients)" in summary
    mixing = figures["site_mixing"]
    assert mixing["column"] == "site" and sorted(mixing["per_site"]) == sorted(payload["cohort"]["heldout_sites"])
    assert mixing["trained"] == evaluator["site_mixing"]["overall"][f"site_mixing@{K}"]
    assert mixing["meanpool"] == evaluator["baseline_details"]["meanpool"]["site_mixing"]["overall"][f"site_mixing@{K}"]
    assert f"{task_name}, site_mixing@{K} (1.0 = no site preference): trained {mixing['trained']:.3f}" in summary


def test_report_files_exist_and_plots_are_png(demo):
    _, out, payload = demo
    report = out / "report"
    for task in TASKS:
        assert (report / f"{task}.json").is_file()
        pngs = sorted((report / "plots" / task).glob("*.png"))
        assert len(pngs) == 3 and sorted(payload["evaluation"][task]["plots"]) == [str(p) for p in pngs]
    for png in sorted((report / "plots").rglob("*.png")):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, png
    assert payload["training_plot"] == str(report / "plots" / "training.png")
    assert (out / "atlas" / "atlas.duckdb").is_file() and (out / MARKER_NAME).is_file()
    assert payload["settings"]["quick"] is True and payload["settings"]["seed"] == 0
    assert payload["cohort"]["n_patients"] == 60
    assert set(payload["timings_s"]) == set(STAGES) | {"total"}
    assert sum(payload["timings_s"][s] for s in STAGES) <= payload["timings_s"]["total"] + 0.05


@pytest.mark.parametrize("task", list(TASKS))
def test_summary_is_the_evaluator_report_and_chance_is_exact(demo, task):
    _, out, payload = demo
    evaluator = json.loads((out / "report" / f"{task}.json").read_text())
    figures = payload["summary"][task]
    for metric in ("mAP@5", "Acc@5", "MV@5"):
        assert figures["trained"][metric] == evaluator["metrics"][metric]
        assert figures["meanpool"][metric] == evaluator["baselines"]["meanpool"][metric]
        assert figures["chance"][metric] == evaluator["baselines"]["chance"][metric]
        for encoder in ("trained", "meanpool", "chance"):
            assert 0.0 <= figures[encoder][metric] <= 1.0
    assert evaluator["query_modality"] == TASKS[task] and evaluator["target"] == "slides"
    # Chance from the closed form, on the eligible database of each query.
    database = _held_out(out, payload["models"]["trained"], "slides")
    queries = _held_out(out, payload["models"]["trained"], TASKS[task])
    hand = _hand_metrics(queries, database)
    assert figures["chance"]["mAP@5"] == pytest.approx(hand["chance_mAP"], abs=1e-9)
    assert figures["chance"]["Acc@5"] == pytest.approx(hand["chance_Acc"], abs=1e-9)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("encoder", ["trained", "meanpool"])
def test_retrieval_figures_match_a_hand_computation_from_the_atlas(demo, task, encoder):
    _, out, payload = demo
    model_id = payload["models"][encoder]
    hand = _hand_metrics(_held_out(out, model_id, TASKS[task]), _held_out(out, model_id, "slides"))
    figures = payload["summary"][task][encoder]
    assert figures["mAP@5"] == pytest.approx(hand["mAP"], abs=1e-9)
    assert figures["Acc@5"] == pytest.approx(hand["Acc"], abs=1e-9)
    assert payload["evaluation"][task]["n_queries"] == len(_held_out(out, model_id, TASKS[task])[0])


def test_prototype_accuracy_matches_a_hand_computation(demo):
    _, out, payload = demo
    model_id = payload["models"]["trained"]
    train_vectors, _, train_labels = _held_out(out, model_id, "expression", cohort="train")
    slides, _, truth = _held_out(out, model_id, "slides")
    classes = sorted(set(train_labels))
    prototypes = _unit(np.stack([train_vectors[train_labels == c].mean(axis=0) for c in classes]))
    predicted = np.array(classes)[np.argmax(slides @ prototypes.T, axis=1)]
    balanced = np.mean([np.mean(predicted[truth == c] == c) for c in sorted(set(truth))])
    prototypes_report = payload["prototypes"]
    assert prototypes_report["balanced_accuracy"] == pytest.approx(balanced, abs=1e-6)
    assert prototypes_report["classes"] == classes
    assert prototypes_report["members"] == [int((train_labels == c).sum()) for c in classes]
    assert prototypes_report["chance"] == pytest.approx(1 / len(classes))
    assert payload["summary"]["prototype_balanced_accuracy"] == prototypes_report["balanced_accuracy"]


def test_rare_case_search_queries_a_held_out_slide_of_the_rarest_subtype(demo):
    _, out, payload = demo
    search, cohort = payload["search"], payload["cohort"]
    counts = cohort["subtype_counts"]
    assert search["subtype"] == min(counts, key=lambda name: counts[name])
    assert search["slide_id"].split("-")[1] in {s.replace("site", "S") for s in cohort["heldout_sites"]}
    query_patient = "-".join(search["slide_id"].split("-")[:3])
    hits = search["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["patient_id"] != query_patient for h in hits)
    assert {h["cohort"] for h in hits} <= {"train", "heldout"}
    assert search["n_relevant_hits"] == sum(h["subtype"] == search["subtype"] for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_rerun_of_a_finished_demo_shows_it_without_recomputing(demo):
    _, out, payload = demo
    report = out / "report" / "demo.json"
    before = report.stat().st_mtime_ns
    result = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "already holds this finished demo" in result.output
    assert f"{payload['summary']['slide_to_slide']['trained']['mAP@5']:.3f}" in result.output
    assert report.stat().st_mtime_ns == before


def test_rerun_with_other_settings_is_refused_in_one_line(demo):
    _, out, _ = demo
    before = (out / "report" / "demo.json").read_bytes()
    result = runner.invoke(app, ["demo", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: --out {out}: holds a finished --quick demo, seed 0, not a full demo, seed 1; "
                     "choose another --out or delete the folder"]
    assert (out / "report" / "demo.json").read_bytes() == before


def test_a_folder_that_is_not_a_demo_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--quick"])
    assert result.exit_code == 2
    assert "is not empty and holds no threads-search demo" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_interrupted_demo_is_started_over_removing_only_demo_folders(tmp_path):
    out = tmp_path / "run"
    layout, finished, restarted = prepare_folder(out, quick=True, seed=0)
    assert (finished, restarted) == (None, False) and layout.marker.is_file()
    for name in ("cohort", "atlas", "report"):
        (out / name).mkdir()
        (out / name / "partial.bin").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    layout, finished, restarted = prepare_folder(out, quick=False, seed=3)
    assert (finished, restarted) == (None, True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER_NAME, "notes.txt"])
    assert json.loads(layout.marker.read_text())["settings"] == {"quick": False, "seed": 3}


def test_out_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        prepare_folder(path, quick=True, seed=0)
