"""Expression normaliser, gene alignment by name, mutation panel, profile MLPs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from threads_search.encoders.molecular import ExpressionEncoder, ExpressionNormaliser, MutationEncoder, MutationPanel
from threads_search.errors import InputError, ModelMismatchError

GENES = [f"G{i}" for i in range(8)]


def counts(seed: int = 0, n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Gene i has log-scale spread proportional to i, so the variance ranking is known.
    return rng.poisson(np.exp(2.0 + rng.normal(size=(n, 8)) * np.linspace(0.1, 1.5, 8))).astype(float)


def test_fit_logs_counts_and_records_training_mean_and_std():
    matrix = counts()
    normaliser = ExpressionNormaliser.fit(matrix, GENES, "counts", n_top_genes=None)
    logged = np.log1p(matrix)
    np.testing.assert_allclose(normaliser.mean, logged.mean(axis=0))
    np.testing.assert_allclose(normaliser.std, logged.std(axis=0))
    standardised, report = normaliser.transform(matrix, GENES)
    assert standardised.dtype == np.float32 and report.n_missing == 0
    np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(standardised.std(axis=0), 1, atol=1e-5)


def test_log_scale_is_used_as_is():
    matrix = np.random.default_rng(3).normal(size=(6, 8))  # logged values may be negative
    normaliser = ExpressionNormaliser.fit(matrix, GENES, "log", n_top_genes=None)
    np.testing.assert_allclose(normaliser.mean, matrix.mean(axis=0))


def test_top_variable_genes_are_kept_in_input_order():
    matrix = counts()
    normaliser = ExpressionNormaliser.fit(matrix, GENES, "tpm", n_top_genes=3)
    variances = np.log1p(matrix).var(axis=0)
    expected = [GENES[i] for i in sorted(np.argsort(-variances)[:3])]
    assert normaliser.genes == expected
    assert ExpressionNormaliser.fit(matrix, GENES, "tpm", n_top_genes=100).genes == GENES


def test_alignment_by_name_shuffled_and_missing_genes():
    matrix = counts()
    normaliser = ExpressionNormaliser.fit(matrix, GENES, "counts", n_top_genes=None)
    reference, _ = normaliser.transform(matrix, GENES)
    order = np.random.default_rng(1).permutation(8)
    shuffled, report = normaliser.transform(matrix[:, order], [GENES[i] for i in order])
    np.testing.assert_allclose(shuffled, reference, atol=1e-6)
    # Drop G1 and G6, add an unknown gene: missing columns become the training mean (0).
    keep = [0, 2, 3, 4, 5, 7]
    extra = np.ones((12, 1))
    partial, report = normaliser.transform(np.hstack([matrix[:, keep], extra]), [GENES[i] for i in keep] + ["XYZ"])
    assert (report.n_missing, report.n_unused, report.missing_genes) == (2, 1, ("G1", "G6"))
    assert report.missing_fraction == pytest.approx(0.25)
    np.testing.assert_allclose(partial[:, [1, 6]], 0.0)
    np.testing.assert_allclose(partial[:, keep], reference[:, keep], atol=1e-6)
    assert "2 missing" in report.describe()
    raw, _ = normaliser.align(matrix[:, keep], [GENES[i] for i in keep])
    np.testing.assert_allclose(np.log1p(raw[:, 1]), normaliser.mean[1])  # filled with the training mean


def test_refuses_when_more_than_half_of_the_genes_are_missing():
    normaliser = ExpressionNormaliser.fit(counts(), GENES, "counts", n_top_genes=None)
    half = counts()[:, :4]
    normaliser.transform(half, GENES[:4])  # exactly half missing is still accepted
    with pytest.raises(ModelMismatchError, match="5 of the model's 8 genes are missing"):
        normaliser.transform(half[:, :3], GENES[:3])


@pytest.mark.parametrize(
    "matrix, genes, message",
    [
        (np.array([[1.0, -2.0]]), ["A", "B"], "negative value -2 at row 0, gene 'B'"),
        (np.array([[1.0, np.nan]]), ["A", "B"], "NaN or Inf at row 0, gene 'B'"),
        (np.array([[1.0, 2.0]]), ["A", "A"], "gene 'A' appears twice"),
        (np.array([[1.0, 2.0]]), ["A"], "2 columns but 1 gene names"),
        (np.array([["x", "y"]]), ["A", "B"], "numeric"),
    ],
)
def test_bad_expression_is_refused_with_the_offending_cell(matrix, genes, message):
    normaliser = ExpressionNormaliser(["A", "B"], "counts", np.zeros(2), np.ones(2))
    with pytest.raises(InputError, match=message):
        normaliser.transform(matrix, genes)


def test_normaliser_round_trips_through_json_and_tensors():
    normaliser = ExpressionNormaliser.fit(counts(), GENES, "tpm", n_top_genes=5)
    config = json.loads(json.dumps(normaliser.to_dict()))
    restored = ExpressionNormaliser.from_dict(config, normaliser.tensors())
    assert restored.genes == normaliser.genes and restored.scale == "tpm"
    np.testing.assert_array_equal(restored.transform(counts(5), GENES)[0], normaliser.transform(counts(5), GENES)[0])


def test_mutation_panel_keeps_mutated_genes_and_aligns_by_name():
    matrix = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    panel = MutationPanel.fit(matrix, ["TP53", "EGFR", "IDH1", "KRAS"])
    assert panel.genes == ["TP53", "IDH1", "KRAS"]  # EGFR never mutated in training
    assert MutationPanel.fit(matrix, ["TP53", "EGFR", "IDH1", "KRAS"], max_genes=1).genes == ["KRAS"]
    multi_hot, report = panel.transform(np.array([[1, 1], [0, 1]]), ["KRAS", "TP53"])
    np.testing.assert_array_equal(multi_hot, [[1, 0, 1], [1, 0, 0]])
    assert report.n_missing == 1 and report.missing_genes == ("IDH1",)
    with pytest.raises(InputError, match="value 2 at row 0, gene 'KRAS' is not 0/1"):
        panel.transform(np.array([[2, 1]]), ["KRAS", "TP53"])
    with pytest.raises(ModelMismatchError, match="2 of the model's 3 genes are missing"):
        panel.transform(np.array([[1]]), ["KRAS"])


def test_profile_encoders_map_gene_vectors_to_out_dim():
    torch.manual_seed(0)
    expression = ExpressionEncoder(n_genes=8, hidden_dim=16, n_layers=2, out_dim=1024)
    mutations = MutationEncoder(n_genes=3, hidden_dim=4)
    assert expression(torch.randn(5, 8)).shape == (5, 1024)
    assert mutations(torch.ones(2, 3)).shape == (2, 1024)
    blocks = [type(m).__name__ for m in expression.mlp[0]]
    assert blocks == ["Linear", "LayerNorm", "ReLU", "Dropout"]
    with pytest.raises(ModelMismatchError, match="7 genes but the encoder expects 8"):
        expression(torch.randn(1, 7))
