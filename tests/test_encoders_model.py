"""ThreadsModel bundle, mean-pool baseline, registry and safetensors checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.decomposition import PCA

from threads_search.encoders.baselines import MeanPoolModel, random_orthogonal_projection
from threads_search.encoders.checkpoint import load_model, model_id, read_model_id, save_model
from threads_search.encoders.model import ThreadsModel
from threads_search.encoders.molecular import ExpressionNormaliser, MutationPanel
from threads_search.encoders.registry import create_model, get_model_spec, list_models
from threads_search.errors import InputError, ModelMismatchError

torch.set_num_threads(1)
TINY = {"hidden_dim": 16, "attn_dim": 8, "profile_hidden_dim": 16}
GENES = [f"G{i}" for i in range(30)]


def expression(seed: int = 0, n: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 5.0, size=(n, 30))


def threads_model(in_dim: int = 24, seed: int = 0) -> ThreadsModel:
    torch.manual_seed(seed)
    model = create_model("threads-abmil", in_dim=in_dim, patch_encoder="conch_v15", **TINY)
    model.attach_expression(ExpressionNormaliser.fit(expression(), GENES, "tpm", n_top_genes=20))
    model.attach_mutations(MutationPanel(["TP53", "IDH1", "KRAS"]))
    return model.eval()


def bag(n: int = 40, dim: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_threads_model_outputs_unit_float32_vectors():
    model = threads_model()
    slide = model.encode_slide(bag())
    assert slide.shape == (1024,) and slide.dtype == np.float32
    assert np.linalg.norm(slide) == pytest.approx(1.0, abs=1e-6)
    profiles, report = model.encode_expression(expression(seed=2, n=3), GENES)
    assert profiles.shape == (3, 1024) and profiles.dtype == np.float32 and report.n_missing == 0
    np.testing.assert_allclose(np.linalg.norm(profiles, axis=1), 1.0, atol=1e-6)
    mutations, report = model.encode_mutations(np.array([[1, 0], [0, 0]]), ["IDH1", "TP53"])
    assert mutations.shape == (2, 1024) and report.n_missing == 1
    slide_again, attention = model.encode_slide(bag(), return_attention=True)
    np.testing.assert_array_equal(slide_again, slide)
    assert attention.shape == (2, 40)
    assert model.modalities == ("slides", "expression", "mutations")


def test_wrong_feature_dimension_names_expected_and_got():
    model = threads_model(in_dim=24)
    with pytest.raises(ModelMismatchError, match="expects 24-d patch features .* got 32-d"):
        model.encode_slide(bag(dim=32))
    with pytest.raises(ModelMismatchError, match="built on 'conch_v15' patch features, not 'uni_v1'"):
        model.check_features(24, "uni_v1")
    with pytest.raises(ModelMismatchError, match="no expression encoder"):
        create_model("threads-abmil", in_dim=8, **TINY).encode_expression(expression(), GENES)


def test_save_load_gives_identical_embeddings_and_the_same_id(tmp_path):
    model = threads_model()
    identifier = save_model(model, tmp_path / "m")
    assert identifier == model_id(model) == read_model_id(tmp_path / "m")
    assert len(identifier) == 16 and int(identifier, 16) >= 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert not list(tmp_path.glob("*.tmp-*"))
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, ThreadsModel) and model_id(loaded) == identifier
    np.testing.assert_array_equal(loaded.encode_slide(bag()), model.encode_slide(bag()))
    np.testing.assert_array_equal(loaded.encode_expression(expression(3), GENES)[0],
                                  model.encode_expression(expression(3), GENES)[0])
    np.testing.assert_array_equal(loaded.encode_mutations(np.eye(3), ["TP53", "IDH1", "KRAS"])[0],
                                  model.encode_mutations(np.eye(3), ["TP53", "IDH1", "KRAS"])[0])
    assert save_model(loaded, tmp_path / "m") == identifier  # same content: no-op


def test_model_id_is_a_content_hash(tmp_path):
    assert model_id(threads_model(seed=0)) == model_id(threads_model(seed=0))
    changed = threads_model(seed=0)
    with torch.no_grad():
        changed.slide_encoder.projection.bias[0] += 1e-3
    assert model_id(changed) != model_id(threads_model(seed=0))
    save_model(threads_model(seed=0), tmp_path / "a")
    with pytest.raises(ModelMismatchError, match="refusing to overwrite"):
        save_model(changed, tmp_path / "a")


def test_tampered_or_incomplete_checkpoints_are_refused(tmp_path):
    save_model(threads_model(), tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ModelMismatchError, match="does not match the recorded model id"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="unreadable safetensors"):
        load_model(tmp_path / "m")
    with pytest.raises(InputError, match="config.json: not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError, match="not a threads-search model config"):
        load_model(tmp_path / "bad")


def test_checkpoint_for_other_features_is_refused_after_loading(tmp_path):
    save_model(threads_model(in_dim=24), tmp_path / "m")
    with pytest.raises(ModelMismatchError, match="expects 24-d"):
        load_model(tmp_path / "m").encode_slide(bag(dim=1536))


def test_meanpool_projection_preserves_cosines_of_mean_features():
    projection = random_orthogonal_projection(24, 1024, seed=0)
    np.testing.assert_allclose(projection @ projection.T, np.eye(24), atol=1e-5)
    tall = random_orthogonal_projection(1536, 1024, seed=0)
    np.testing.assert_allclose(tall.T @ tall, np.eye(1024), atol=1e-5)
    model = create_model("meanpool", in_dim=24)
    a, b = bag(seed=1) + 0.5, bag(seed=2) + 0.5
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    expected_cosine = mean_a @ mean_b / np.linalg.norm(mean_a) / np.linalg.norm(mean_b)
    assert model.encode_slide(a) @ model.encode_slide(b) == pytest.approx(expected_cosine, abs=1e-5)
    embedding = model.encode_slide(a, chunk_size=7)
    np.testing.assert_allclose(embedding, mean_a @ projection / np.linalg.norm(mean_a @ projection), atol=1e-6)


def test_meanpool_expression_is_pca_of_standardised_profiles():
    model = create_model("meanpool", in_dim=24, out_dim=8)
    training = expression(n=40)
    model.fit_expression(training, GENES, "tpm", n_top_genes=None)
    standardised, _ = model.expression_normaliser.transform(training, GENES)
    reference = PCA(n_components=8, svd_solver="full").fit(standardised).transform(standardised)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    embedded, _ = model.encode_expression(training, GENES)
    # Components are defined up to sign: compare the cosine geometry.
    np.testing.assert_allclose(embedded @ embedded.T, reference @ reference.T, atol=1e-4)
    model.fit_mutations(np.array([[1, 0, 1], [0, 1, 1]]), ["A", "B", "C"])
    mutations, _ = model.encode_mutations(np.array([[1, 0, 0]]), ["A", "B", "C"])
    # 3 genes <= 8: centred on the training mean (0.5, 0.5, 1), zero-padded, normalised
    np.testing.assert_allclose(mutations, [[0.5, -0.5, -1, 0, 0, 0, 0, 0] / np.sqrt(1.5)], atol=1e-6)


def test_meanpool_round_trips_through_a_checkpoint(tmp_path):
    model = create_model("meanpool", in_dim=24)
    model.fit_expression(expression(n=20), GENES, "tpm")
    identifier = save_model(model, tmp_path / "baseline")
    loaded = load_model(tmp_path / "baseline")
    assert isinstance(loaded, MeanPoolModel) and model_id(loaded) == identifier
    np.testing.assert_array_equal(loaded.encode_slide(bag()), model.encode_slide(bag()))
    np.testing.assert_array_equal(loaded.encode_expression(expression(4), GENES)[0],
                                  model.encode_expression(expression(4), GENES)[0])


def test_registry_lists_creates_and_suggests():
    assert {"threads-abmil", "threads-abmil-cpu", "meanpool"} <= set(list_models())
    assert list_models("threads-*") == ["threads-abmil", "threads-abmil-cpu"]
    assert list_models(trainable=False) == ["aligned", "chief", "feather", "meanpool", "precomputed", "prism", "threads", "titan"]  # not by `train --recipe`
    assert get_model_spec("threads-abmil-cpu").default_config["hidden_dim"] == 128
    cpu_model = create_model("threads-abmil-cpu", in_dim=24)
    assert cpu_model.config.hidden_dim == 128 and cpu_model.recipe == "threads-abmil-cpu"
    with pytest.raises(InputError, match="did you mean threads-abmil"):
        create_model("thread-abmil")
    with pytest.raises(InputError, match="no option hiden_dim"):
        create_model("threads-abmil", hiden_dim=3)


def test_encoders_never_import_faiss_or_duckdb():
    code = ("import sys, threads_search.encoders.model, threads_search.encoders.baselines, "
            "threads_search.encoders.checkpoint, threads_search.encoders.registry; "
            "print(sorted(m for m in ('faiss', 'duckdb') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_meanpool_mutation_profile_without_panel_mutations_is_not_the_zero_vector():
    from threads_search.encoders.checkpoint import load_model, save_model
    from threads_search.encoders.registry import create_model

    genes = ["TP53", "KRAS", "PIK3CA"]
    training = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.float32)
    baseline = create_model("meanpool", in_dim=8)
    baseline.fit_mutations(training, genes)
    vectors, _ = baseline.encode_mutations(np.zeros((1, 3), np.float32), genes)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    expected = -training.mean(axis=0) / np.linalg.norm(training.mean(axis=0))  # centred, zero-padded, normalised
    np.testing.assert_allclose(vectors[0, :3], expected, atol=1e-6)


def test_meanpool_mutation_mean_survives_a_checkpoint(tmp_path):
    from threads_search.encoders.checkpoint import load_model, save_model
    from threads_search.encoders.registry import create_model

    genes = ["TP53", "KRAS"]
    baseline = create_model("meanpool", in_dim=8)
    baseline.fit_mutations(np.array([[1, 0], [0, 1], [1, 1]], np.float32), genes)
    save_model(baseline, tmp_path / "m")
    restored = load_model(tmp_path / "m")
    probe = np.array([[0, 0], [1, 0]], np.float32)
    np.testing.assert_array_equal(restored.encode_mutations(probe, genes)[0], baseline.encode_mutations(probe, genes)[0])
