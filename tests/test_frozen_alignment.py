"""`train --slide-encoder`: molecular encoders trained into a frozen slide space.

A seeded cohort where mean pooling separates the four subtypes (the class shifts every patch)
and expression carries the same subtype through a gene program: aligning an expression encoder
to the frozen mean-pooling space must make expression -> slide retrieval on held-out patients
clearly better than chance, while the aligned model's slide vectors stay the frozen model's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import store_fitted_baseline, write_csv, write_trident
from threads_search.cli.app import app

runner = CliRunner()
CLASSES = ["A", "B", "C", "D"]
DIM, GENES = 32, 60


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    rng = np.random.default_rng(11)
    centroids = rng.normal(size=(4, DIM)) * 1.5
    programs = rng.normal(size=(4, GENES)) * 1.2
    (root / "features").mkdir()
    slides, samples, expression = [], [], []
    for p in range(48):
        label = p % 4
        cohort = "heldout" if p >= 36 else "train"
        for s in range(1 + (p % 3 == 0)):
            bag = centroids[label] + rng.normal(size=DIM) * 0.5 + rng.normal(size=(int(rng.integers(15, 40)), DIM))
            write_trident(root / "features" / f"P{p:02d}-S{s}.h5", bag.astype(np.float32))
            slides.append([f"P{p:02d}-S{s}", f"P{p:02d}", CLASSES[label], cohort])
        samples.append([f"P{p:02d}-R", f"P{p:02d}", CLASSES[label], cohort])
        expression.append([f"P{p:02d}-R"] + list(np.exp(2 + programs[label] + rng.normal(size=GENES) * 0.8).round(4)))
    write_csv(root / "slides.csv", ["slide_id", "patient_id", "subtype", "cohort"], slides)
    write_csv(root / "samples.csv", ["sample_id", "patient_id", "subtype", "cohort"], samples)
    write_csv(root / "expression.csv", ["sample_id"] + [f"G{i}" for i in range(GENES)], expression)
    path = root / "atlas"
    for args in (("init", path), ("ingest", "slides", path, root / "features", "--metadata", root / "slides.csv"),
                 ("ingest", "expression", path, root / "expression.csv", "--metadata", root / "samples.csv")):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    meanpool = store_fitted_baseline(path, "cohort = 'train'")
    assert cli("embed", path, "--model", meanpool, "--quiet").exit_code == 0
    return path, meanpool, root


def _heldout_expression_map(path, model, tmp_path):
    out = tmp_path / f"{model}.json"
    result = cli("eval", path, "--label", "subtype", "--queries", "cohort = 'heldout'", "--database",
                 "cohort = 'heldout'", "--query-modality", "expression", "-k", "5", "--bootstrap", "0",
                 "--model", model, "--json", out)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    return payload["metrics"]["mAP@5"], payload["baselines"]["chance"]["mAP@5"]


def test_aligned_expression_encoder_beats_chance_and_keeps_the_frozen_slide_vectors(atlas, tmp_path):
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas

    path, meanpool, _ = atlas
    trained = cli("train", path, "--slide-encoder", "meanpool", "--where", "cohort = 'train'", "--label", "subtype",
                  "--epochs", 30, "--batch-size", 12, "--device", "cpu", "--quiet")
    assert trained.exit_code == 0, trained.output
    model_id = trained.output.split("aligned model ")[1].split(":")[0]
    embedded = cli("embed", path, "--model", model_id, "--quiet")
    assert embedded.exit_code == 0 and "copied from the frozen slide model" in embedded.output
    with open_atlas(path, read_only=True) as opened:
        frozen_ids, frozen = load_embeddings(opened, meanpool, "slides")
        aligned_ids, aligned = load_embeddings(opened, model_id, "slides")
    assert np.array_equal(frozen_ids, aligned_ids) and np.array_equal(frozen, aligned)  # bit for bit

    aligned_map, chance = _heldout_expression_map(path, model_id, tmp_path)
    baseline_map, _ = _heldout_expression_map(path, meanpool, tmp_path)
    assert aligned_map > chance + 0.3, (aligned_map, chance)
    assert aligned_map > baseline_map + 0.2, (aligned_map, baseline_map)  # mean pooling's profile side is unrelated


def test_an_aligned_model_encodes_new_slides_like_the_frozen_model_and_round_trips(atlas, tmp_path):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import load_atlas_model
    from threads_search.encoders.checkpoint import load_model, model_id, save_model
    from threads_search.readers.patch_features import read_bag
    from threads_search.training.frozen import train_aligned_model
    from threads_search.training.trainer import TrainingConfig

    path, meanpool, root = atlas
    config = TrainingConfig(epochs=3, batch_size=12, device="cpu", seed=4)
    with open_atlas(path) as opened:
        first = train_aligned_model(opened, meanpool, config, "cohort = 'train'", "subtype")
        second = train_aligned_model(opened, meanpool[:6], config, "cohort = 'train'", "subtype")
        frozen = load_atlas_model(opened, meanpool)
    assert first.model_id == second.model_id  # seeded: the same model, bit for bit
    bag = read_bag(root / "features" / "P40-S0.h5")
    np.testing.assert_array_equal(first.model.encode_slide(bag), frozen.encode_slide(bag))
    save_model(first.model, tmp_path / "aligned")
    loaded = load_model(tmp_path / "aligned")
    assert model_id(loaded) == first.model_id and loaded.frozen_slide_model_id == meanpool
    genes = [f"G{i}" for i in range(GENES)]
    profiles = np.exp(np.random.default_rng(0).normal(2, 1, size=(3, GENES)))
    np.testing.assert_allclose(loaded.encode_expression(profiles, genes)[0], first.model.encode_expression(profiles, genes)[0])
    assert not any(name.startswith("slide_model") for name in first.model.state_dict())


def test_alignment_needs_the_frozen_models_slide_embeddings(atlas, tmp_path):
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import store_model
    from threads_search.encoders.registry import create_model

    path, _, _ = atlas
    with open_atlas(path) as opened:
        unembedded = store_model(opened, create_model("meanpool", in_dim=DIM, seed=9))
    result = cli("train", path, "--slide-encoder", unembedded, "--device", "cpu")
    assert result.exit_code != 0 and "has no slide embeddings" in result.output and f"--model {unembedded}" in result.output
    unknown = cli("train", path, "--slide-encoder", "nosuchmodel", "--device", "cpu")
    assert unknown.exit_code != 0 and "--model nosuchmodel" in unknown.output
