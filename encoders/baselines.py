"""Untrained baselines, so that every comparison has a reference.

"meanpool": a slide is the mean of its patch features, mapped to out_dim by a fixed seeded
random matrix with orthonormal rows (inner products, hence cosines, are preserved exactly
when in_dim <= out_dim, approximately otherwise). Expression is the standardised profile
over the normaliser's genes, reduced by PCA fitted on the training cohort when it has more
genes than out_dim, zero-padded otherwise; mutations likewise on the multi-hot vectors.
Its slide and profile spaces are unrelated, so its cross-modal retrieval is chance level
by construction, while slide->slide retrieval is the classic mean-pooling reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from threads_search.encoders.abmil import DEFAULT_CHUNK_SIZE
from threads_search.encoders.model import ConfiguredEncoder, build_config, l2_normalise
from threads_search.encoders.molecular import DEFAULT_TOP_GENES, AlignmentReport, ExpressionNormaliser, MutationPanel
from threads_search.encoders.registry import register_model
from threads_search.errors import InputError, ModelMismatchError


@dataclass(frozen=True)
class MeanPoolConfig:
    in_dim: int = 768
    out_dim: int = 1024
    seed: int = 0
    patch_encoder: str = ""


def random_orthogonal_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """(in_dim, out_dim) float32 matrix P with orthonormal rows (P P^T = I) when
    in_dim <= out_dim, orthonormal columns otherwise; deterministic in `seed`."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))  # fix the signs so the result does not depend on the LAPACK build
    projection = q.T if in_dim <= out_dim else q
    return projection.numpy().astype(np.float32)


def fit_reduction(training_profiles: np.ndarray, out_dim: int) -> np.ndarray | None:
    """PCA components (k, n_features), k <= out_dim, fitted on centred training profiles;
    None when the profiles already fit in out_dim (then they are zero-padded instead)."""
    if training_profiles.shape[1] <= out_dim:
        return None
    centred = training_profiles - training_profiles.mean(axis=0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    return vt[:out_dim].astype(np.float32)


def _reduce(profiles: np.ndarray, components: np.ndarray | None, out_dim: int) -> np.ndarray:
    reduced = profiles if components is None else profiles @ components.T
    padded = np.zeros((profiles.shape[0], out_dim), dtype=np.float32)
    padded[:, : reduced.shape[1]] = reduced
    return l2_normalise(padded)


@register_model("meanpool", trainable=False, frozen=True,
                description="untrained reference: mean of patch features, fixed random orthogonal map to 1024; "
                            "profiles standardised and PCA-reduced / zero-padded")
class MeanPoolModel(ConfiguredEncoder):
    """Mean pooling baseline with the same interface as ThreadsModel."""

    has_patch_attention = False  # a mean weighs every patch alike

    def __init__(self, config: MeanPoolConfig, recipe: str = "meanpool", projection: np.ndarray | None = None) -> None:
        self.config = config
        self.recipe = recipe
        self.projection = (random_orthogonal_projection(config.in_dim, config.out_dim, config.seed)
                           if projection is None else np.asarray(projection, dtype=np.float32))
        self.expression_normaliser: ExpressionNormaliser | None = None
        self.expression_components: np.ndarray | None = None
        self.mutation_panel: MutationPanel | None = None
        self.mutation_components: np.ndarray | None = None
        # Training mean of the multi-hot vectors: centring keeps a sample without panel
        # mutations from encoding to the zero vector, which has no direction to compare.
        self.mutation_mean: np.ndarray | None = None

    @classmethod
    def create(cls, recipe: str = "meanpool", **config: Any) -> "MeanPoolModel":
        return cls(build_config(MeanPoolConfig, config, recipe), recipe)

    # -- fitting the profile branches on a training cohort ------------------------------
    def fit_expression(self, matrix: np.ndarray, genes: Sequence[str], scale: str,
                       n_top_genes: int | None = DEFAULT_TOP_GENES) -> None:
        """Fit the normaliser and the PCA on training expression (n_samples, n_genes)."""
        self.expression_normaliser = ExpressionNormaliser.fit(matrix, genes, scale, n_top_genes)
        standardised, _ = self.expression_normaliser.transform(matrix, genes)
        self.expression_components = fit_reduction(standardised, self.out_dim)

    def fit_mutations(self, matrix: np.ndarray, genes: Sequence[str], max_genes: int | None = None) -> None:
        """Fit the gene panel (and the PCA when it is wider than out_dim) on training mutations."""
        self.mutation_panel = MutationPanel.fit(matrix, genes, max_genes)
        multi_hot, _ = self.mutation_panel.transform(matrix, genes)
        self.mutation_mean = multi_hot.mean(axis=0).astype(np.float32)
        self.mutation_components = fit_reduction(multi_hot - self.mutation_mean, self.out_dim)

    # -- checkpoint ------------------------------------------------------------------------
    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        config = {
            "model": dataclasses.asdict(self.config),
            "expression": self.expression_normaliser.to_dict() if self.expression_normaliser else None,
            "mutations": self.mutation_panel.to_dict() if self.mutation_panel else None,
        }
        tensors = {"projection": torch.from_numpy(self.projection)}
        if self.expression_normaliser is not None:
            tensors.update({f"expression_normaliser.{k}": v for k, v in self.expression_normaliser.tensors().items()})
        if self.expression_components is not None:
            tensors["expression_components"] = torch.from_numpy(self.expression_components)
        if self.mutation_components is not None:
            tensors["mutation_components"] = torch.from_numpy(self.mutation_components)
        if self.mutation_mean is not None:
            tensors["mutation_mean"] = torch.from_numpy(self.mutation_mean)
        return config, tensors

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "MeanPoolModel":
        model = cls(build_config(MeanPoolConfig, config["model"], recipe), recipe, tensors["projection"].numpy())
        if config.get("expression"):
            stats = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("expression_normaliser.")}
            model.expression_normaliser = ExpressionNormaliser.from_dict(config["expression"], stats)
            if "expression_components" in tensors:
                model.expression_components = tensors["expression_components"].numpy()
        if config.get("mutations"):
            model.mutation_panel = MutationPanel.from_dict(config["mutations"])
            if "mutation_components" in tensors:
                model.mutation_components = tensors["mutation_components"].numpy()
            if "mutation_mean" in tensors:
                model.mutation_mean = tensors["mutation_mean"].numpy()
        return model

    # -- the common encoding interface ---------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        present = (True, self.expression_normaliser is not None, self.mutation_panel is not None)
        return tuple(name for name, ok in zip(("slides", "expression", "mutations"), present) if ok)

    def encode_slide(self, bag: np.ndarray | torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     return_attention: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """(n_patches, in_dim) -> (out_dim,) float32 unit vector; the "attention" of a mean is
        uniform, (1, n_patches)."""
        n_patches = self.check_bag(bag)
        total = np.zeros(self.in_dim, dtype=np.float64)
        for start in range(0, n_patches, chunk_size):  # chunks: float16 bags are never copied whole
            chunk = bag[start:start + chunk_size]
            chunk = chunk.double().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk, dtype=np.float64)
            if not np.isfinite(chunk).all():
                raise InputError(f"patch features contain NaN or Inf (in rows {start}..{start + len(chunk) - 1})")
            total += chunk.sum(axis=0)
        embedding = l2_normalise((total / n_patches).astype(np.float32) @ self.projection)
        if return_attention:
            return embedding, np.full((1, n_patches), 1.0 / n_patches, dtype=np.float32)
        return embedding

    def encode_expression(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        if self.expression_normaliser is None:
            raise ModelMismatchError("meanpool baseline has no expression branch; call fit_expression on training data")
        profiles, report = self.expression_normaliser.transform(matrix, genes)
        return _reduce(profiles, self.expression_components, self.out_dim), report

    def encode_mutations(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        if self.mutation_panel is None:
            raise ModelMismatchError("meanpool baseline has no mutation branch; call fit_mutations on training data")
        profiles, report = self.mutation_panel.transform(matrix, genes)
        if self.mutation_mean is not None:
            profiles = profiles - self.mutation_mean
        return _reduce(profiles, self.mutation_components, self.out_dim), report
