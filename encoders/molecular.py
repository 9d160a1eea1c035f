"""Molecular encoders: expression and mutation MLPs, and the gene bookkeeping they need.

A molecular model only makes sense over the gene list it was trained on, so that list and
the normalisation (log1p or not, per-gene mean / std from the training cohort) are part of
the model. New profiles are aligned to it by gene *name* (any column order); genes the new
data lacks are filled with the training mean (0 after standardisation) and reported, and a
matrix lacking more than half of the model's genes is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from threads_search.errors import InputError, ModelMismatchError

EXPRESSION_SCALES = ("counts", "tpm", "log")
MAX_MISSING_FRACTION = 0.5
DEFAULT_TOP_GENES = 2000
_STD_FLOOR = 1e-6  # constant genes: divide by 1 instead of ~0 so they stay finite


@dataclass(frozen=True)
class AlignmentReport:
    """How a profile matrix matched a model's gene list."""

    n_model_genes: int
    n_missing: int
    missing_fraction: float
    missing_genes: tuple[str, ...]  # up to 10 examples
    n_unused: int  # input genes the model does not use

    def describe(self) -> str:
        """One line for logs and CLI output."""
        text = f"{self.n_model_genes - self.n_missing}/{self.n_model_genes} model genes found"
        if self.n_missing:
            text += f", {self.n_missing} missing ({self.missing_fraction:.1%}, filled with the training mean), e.g. {', '.join(self.missing_genes)}"
        return text + f"; {self.n_unused} input genes unused"


def _check_gene_names(genes: Sequence[str], what: str) -> list[str]:
    names = [str(g) for g in genes]
    seen: set[str] = set()
    for column, name in enumerate(names):
        if name in seen:
            raise InputError(f"{what}: gene '{name}' appears twice (column {column})")
        seen.add(name)
    return names


def _check_matrix(matrix: np.ndarray, genes: Sequence[str], what: str) -> np.ndarray:
    """Validate a (n_samples, n_genes) numeric matrix; returns it as float64."""
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise InputError(f"{what}: expected a 2-D (samples, genes) matrix, got shape {array.shape}")
    if array.shape[1] != len(genes):
        raise InputError(f"{what}: matrix has {array.shape[1]} columns but {len(genes)} gene names were given")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InputError(f"{what}: values must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(f"{what}: NaN or Inf at row {row}, gene '{genes[column]}'")
    return array


def align_to_genes(
    matrix: np.ndarray, genes: Sequence[str], model_genes: Sequence[str], fill: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray, AlignmentReport]:
    """Reorder the columns of `matrix` (named `genes`) to `model_genes`, by name.

    Args:
        matrix: (n_samples, len(genes)) values.
        fill: (len(model_genes),) value used for each model gene the input lacks.
    Returns:
        aligned (n_samples, len(model_genes)) float64, present (len(model_genes),) bool,
        and the report. Raises ModelMismatchError when more than half the genes are missing.
    """
    names = _check_gene_names(genes, what)
    array = _check_matrix(matrix, names, what)
    column_of = {name: i for i, name in enumerate(names)}
    source = np.array([column_of.get(g, -1) for g in model_genes], dtype=np.int64)
    present = source >= 0
    missing = [g for g, ok in zip(model_genes, present) if not ok]
    report = AlignmentReport(
        n_model_genes=len(model_genes),
        n_missing=len(missing),
        missing_fraction=len(missing) / max(len(model_genes), 1),
        missing_genes=tuple(missing[:10]),
        n_unused=len(names) - int(present.sum()),
    )
    if report.missing_fraction > MAX_MISSING_FRACTION:
        raise ModelMismatchError(
            f"{what}: {report.n_missing} of the model's {report.n_model_genes} genes are missing "
            f"({report.missing_fraction:.0%}, e.g. {', '.join(report.missing_genes[:5])}); "
            "check the gene naming (symbols vs Ensembl ids) or use a model trained on these genes")
    aligned = np.empty((array.shape[0], len(model_genes)), dtype=np.float64)
    aligned[:, present] = array[:, source[present]]
    aligned[:, ~present] = np.asarray(fill, dtype=np.float64)[~present]
    return aligned, present, report


class ExpressionNormaliser:
    """Gene selection + log1p + per-gene standardisation, fitted on a training cohort.

    Attributes:
        genes: the model's genes, in model column order.
        scale: 'counts' | 'tpm' (log1p applied) or 'log' (used as is).
        mean, std: (n_genes,) float64 statistics of the (logged) training values.
    """

    def __init__(self, genes: Sequence[str], scale: str, mean: np.ndarray, std: np.ndarray) -> None:
        if scale not in EXPRESSION_SCALES:
            raise InputError(f"expression scale must be one of {', '.join(EXPRESSION_SCALES)}, got '{scale}'")
        self.genes = list(genes)
        self.scale = scale
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if not (len(self.genes) == self.mean.shape[0] == self.std.shape[0]):
            raise ModelMismatchError(f"expression normaliser has {len(self.genes)} genes but "
                                     f"{self.mean.shape[0]} means and {self.std.shape[0]} stds")

    @property
    def applies_log1p(self) -> bool:
        return self.scale != "log"

    @classmethod
    def fit(cls, matrix: np.ndarray, genes: Sequence[str], scale: str, n_top_genes: int | None = DEFAULT_TOP_GENES
            ) -> "ExpressionNormaliser":
        """Fit on a training matrix (n_samples, n_genes); keeps the `n_top_genes` most
        variable genes after log1p (all genes when None or when there are fewer), in their
        input column order."""
        if scale not in EXPRESSION_SCALES:
            raise InputError(f"expression scale must be one of {', '.join(EXPRESSION_SCALES)}, got '{scale}'")
        names = _check_gene_names(genes, "training expression")
        values = _check_matrix(matrix, names, "training expression")
        if values.shape[0] < 2:
            raise InputError(f"training expression: need at least 2 samples to fit a normaliser, got {values.shape[0]}")
        if scale != "log":
            values = _log1p_checked(values, names, "training expression")
        variance = values.var(axis=0)
        keep = np.arange(len(names))
        if n_top_genes is not None and n_top_genes < len(names):
            # Stable sort: ties broken by column order, so the selection is deterministic.
            keep = np.sort(np.argsort(-variance, kind="stable")[:n_top_genes])
        selected = values[:, keep]
        std = selected.std(axis=0)
        return cls([names[i] for i in keep], scale, selected.mean(axis=0), np.where(std < _STD_FLOOR, 1.0, std))

    def align(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        """Columns reordered to the model genes, still on the input scale; missing genes are
        filled with the training mean (expressed on the input scale)."""
        fill = np.expm1(self.mean) if self.applies_log1p else self.mean
        aligned, _, report = align_to_genes(matrix, genes, self.genes, fill, "expression")
        return aligned, report

    def transform(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        """Aligned, logged and standardised (n_samples, n_model_genes) float32; missing genes
        are exactly 0 (the training mean)."""
        aligned, present, report = align_to_genes(matrix, genes, self.genes, self.mean, "expression")
        if self.applies_log1p:
            aligned[:, present] = _log1p_checked(aligned[:, present], [g for g, ok in zip(self.genes, present) if ok],
                                                 "expression")
        standardised = (aligned - self.mean) / self.std
        standardised[:, ~present] = 0.0
        return standardised.astype(np.float32), report

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable part (the per-gene stats go to `tensors()`)."""
        return {"genes": list(self.genes), "scale": self.scale}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy())}

    @classmethod
    def from_dict(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "ExpressionNormaliser":
        return cls(config["genes"], config["scale"], tensors["mean"].double().numpy(), tensors["std"].double().numpy())


def _log1p_checked(values: np.ndarray, genes: Sequence[str], what: str) -> np.ndarray:
    negative = values < 0
    if negative.any():
        row, column = np.argwhere(negative)[0]
        raise InputError(f"{what}: negative value {values[row, column]:g} at row {row}, gene '{genes[column]}' "
                         "on a counts/TPM scale (is the matrix already logged? then use scale 'log')")
    return np.log1p(values)


class MutationPanel:
    """The gene list of a mutation model; profiles are multi-hot (0/1) over it."""

    def __init__(self, genes: Sequence[str]) -> None:
        self.genes = _check_gene_names(genes, "mutation panel")

    @classmethod
    def fit(cls, matrix: np.ndarray, genes: Sequence[str], max_genes: int | None = None) -> "MutationPanel":
        """Keep the genes mutated in at least one training sample (never-mutated genes carry
        no signal), the `max_genes` most frequent when given, in input column order."""
        names = _check_gene_names(genes, "training mutations")
        values = _check_binary(_check_matrix(matrix, names, "training mutations"), names, "training mutations")
        counts = values.sum(axis=0)
        keep = np.flatnonzero(counts > 0)
        if keep.size == 0:
            raise InputError("training mutations: no gene is mutated in any training sample")
        if max_genes is not None and keep.size > max_genes:
            keep = np.sort(keep[np.argsort(-counts[keep], kind="stable")[:max_genes]])
        return cls([names[i] for i in keep])

    def transform(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        """Aligned multi-hot (n_samples, n_panel_genes) float32; genes the input lacks count as
        not mutated (and are reported)."""
        fill = np.zeros(len(self.genes))
        aligned, _, report = align_to_genes(matrix, genes, self.genes, fill, "mutations")
        return _check_binary(aligned, self.genes, "mutations").astype(np.float32), report

    align = transform  # a multi-hot matrix needs no further normalisation

    def to_dict(self) -> dict[str, Any]:
        return {"genes": list(self.genes)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "MutationPanel":
        return cls(config["genes"])


def _check_binary(values: np.ndarray, genes: Sequence[str], what: str) -> np.ndarray:
    bad = (values != 0) & (values != 1)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(f"{what}: value {values[row, column]:g} at row {row}, gene '{genes[column]}' is not 0/1")
    return values


class ProfileEncoder(nn.Module):
    """MLP on a profile vector: blocks Linear->LayerNorm->ReLU->Dropout, then Linear -> out_dim.

    Input (B, n_genes) float32, output (B, out_dim) (not normalised).
    """

    def __init__(self, n_genes: int, hidden_dim: int = 512, n_layers: int = 1, out_dim: int = 1024,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if min(n_genes, hidden_dim, n_layers, out_dim) < 1:
            raise InputError(f"profile encoder sizes must be positive, got n_genes={n_genes} hidden_dim={hidden_dim} "
                             f"n_layers={n_layers} out_dim={out_dim}")
        self.n_genes = n_genes
        widths = [n_genes] + [hidden_dim] * n_layers
        blocks = [nn.Sequential(nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(), nn.Dropout(dropout))
                  for a, b in zip(widths[:-1], widths[1:])]
        self.mlp = nn.Sequential(*blocks, nn.Linear(hidden_dim, out_dim))

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        if profiles.shape[-1] != self.n_genes:
            raise ModelMismatchError(f"profiles have {profiles.shape[-1]} genes but the encoder expects {self.n_genes}")
        return self.mlp(profiles)


class ExpressionEncoder(ProfileEncoder):
    """Expression MLP on standardised log-expression over the normaliser's genes."""


class MutationEncoder(ProfileEncoder):
    """Mutation MLP on multi-hot (0/1) vectors over the mutation panel's genes."""
