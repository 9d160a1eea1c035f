"""`ThreadsModel`: the trained bundle of a slide encoder and molecular encoders.

Every model used by the embed job (this one and the untrained baselines) offers the same
interface:
    in_dim, recipe, patch_encoder, modalities
    encode_slide(bag) -> (out_dim,) float32, L2-normalised
    encode_expression(matrix, genes) -> ((n, out_dim) float32 L2-normalised, AlignmentReport)
    encode_mutations(matrix, genes) -> ((n, out_dim) float32 L2-normalised, AlignmentReport)
    export() -> (JSON config, {name: tensor}); classmethods create(...) and from_export(...)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from threads_search.encoders.abmil import DEFAULT_CHUNK_SIZE, ABMILSlideEncoder
from threads_search.encoders.molecular import (
    AlignmentReport,
    ExpressionEncoder,
    ExpressionNormaliser,
    MutationEncoder,
    MutationPanel,
)
from threads_search.encoders.registry import register_model
from threads_search.errors import InputError, ModelMismatchError

INITIAL_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
_PROFILE_BATCH = 4096


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def check_feature_source(model: Any, feature_dim: int, patch_encoder: str | None = None) -> None:
    """Refuse features that do not come from the patch encoder the model was built for."""
    if feature_dim != model.in_dim:
        raise ModelMismatchError(f"model '{model.recipe}' expects {model.in_dim}-d patch features "
                                 f"({model.patch_encoder or 'unknown patch encoder'}) but got {feature_dim}-d features")
    from threads_search.encoders.patch.names import same_patch_encoder

    if patch_encoder and model.patch_encoder and not same_patch_encoder(patch_encoder, model.patch_encoder):
        raise ModelMismatchError(f"model '{model.recipe}' was built on '{model.patch_encoder}' patch features, "
                                 f"not '{patch_encoder}'")


def encode_slide_at(model: Any, features: np.ndarray, coords: np.ndarray | None = None,
                    patch_size_level0: int | None = None) -> np.ndarray:
    """`model.encode_slide(features)`; a model that `needs_coordinates` (TITAN) also gets the
    (n_patches, 2) level-0 coords and the patch size at level 0."""
    if getattr(model, "needs_coordinates", False):
        return model.encode_slide(features, coords=coords, patch_size_level0=patch_size_level0)
    return model.encode_slide(features)


class ConfiguredEncoder:
    """What every model offers from its config: sizes, the patch encoder, the feature check."""

    config: Any

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    @property
    def patch_encoder(self) -> str:
        return self.config.patch_encoder

    def check_features(self, feature_dim: int, patch_encoder: str | None = None) -> None:
        check_feature_source(self, feature_dim, patch_encoder)

    def check_bag(self, bag: np.ndarray | torch.Tensor) -> int:
        """Number of patches of a (n_patches, in_dim) bag; InputError for another shape or an empty bag."""
        if bag.ndim != 2:
            raise InputError(f"a bag of patch features must be 2-D (n_patches, dim), got shape {tuple(bag.shape)}")
        self.check_features(int(bag.shape[1]))
        if bag.shape[0] == 0:
            raise InputError("the bag of patch features is empty (0 patches)")
        return int(bag.shape[0])


def build_config(config_cls: type, values: dict[str, Any], recipe: str) -> Any:
    """A config dataclass from keyword values; unknown keys raise InputError naming them."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"model '{recipe}' has no option {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    return config_cls(**values)


@dataclass(frozen=True)
class ThreadsModelConfig:
    """Sizes of a ThreadsModel; recorded in the checkpoint's config.json."""

    in_dim: int = 768
    out_dim: int = 1024
    hidden_dim: int = 512
    n_layers: int = 1
    n_heads: int = 2
    attn_dim: int = 256
    dropout: float = 0.1
    attn_dropout: float = 0.25
    profile_hidden_dim: int = 512
    profile_n_layers: int = 1
    profile_dropout: float = 0.1
    centre_patches: bool = False  # each slide's mean patch subtracted before the MLP (site/stain offsets)
    patch_encoder: str = ""  # e.g. 'conch_v15'; '' when unknown


class ProfileBranches:
    """The expression / mutation encoders of a model (with their normaliser and gene panel),
    sized by `config.profile_*` and `config.out_dim`; the model holds `logit_scale`."""

    config: Any
    recipe: str
    expression_normaliser: ExpressionNormaliser | None
    expression_encoder: ExpressionEncoder | None
    mutation_panel: MutationPanel | None
    mutation_encoder: MutationEncoder | None

    @property
    def modalities(self) -> tuple[str, ...]:
        """slides, and the profile modalities with an encoder."""
        present = (True, self.expression_encoder is not None, self.mutation_encoder is not None)
        return tuple(name for name, ok in zip(("slides", "expression", "mutations"), present) if ok)

    def start_branches(self, expression_normaliser: ExpressionNormaliser | None,
                       mutation_panel: MutationPanel | None) -> None:
        """Set up the branches (fresh encoders for the normaliser / panel given, none otherwise)."""
        self.expression_normaliser = self.expression_encoder = None
        self.mutation_panel = self.mutation_encoder = None
        if expression_normaliser is not None:
            self.attach_expression(expression_normaliser)
        if mutation_panel is not None:
            self.attach_mutations(mutation_panel)

    def attach_expression(self, normaliser: ExpressionNormaliser) -> None:
        """Add a freshly initialised expression encoder over the normaliser's genes."""
        c = self.config
        self.expression_normaliser = normaliser
        self.expression_encoder = ExpressionEncoder(len(normaliser.genes), c.profile_hidden_dim, c.profile_n_layers,
                                                    c.out_dim, c.profile_dropout)

    def attach_mutations(self, panel: MutationPanel) -> None:
        """Add a freshly initialised mutation encoder over the panel's genes."""
        c = self.config
        self.mutation_panel = panel
        self.mutation_encoder = MutationEncoder(len(panel.genes), c.profile_hidden_dim, c.profile_n_layers,
                                                c.out_dim, c.profile_dropout)

    def profile_config(self) -> dict[str, Any]:
        """The JSON part of the profile branches (gene lists, scale), for `export`."""
        return {"expression": self.expression_normaliser.to_dict() if self.expression_normaliser else None,
                "mutations": self.mutation_panel.to_dict() if self.mutation_panel else None}

    def normaliser_tensors(self) -> dict[str, torch.Tensor]:
        if self.expression_normaliser is None:
            return {}
        return {f"expression_normaliser.{name}": t for name, t in self.expression_normaliser.tensors().items()}

    @staticmethod
    def profiles_from_export(config: dict[str, Any], tensors: dict[str, torch.Tensor]
                             ) -> tuple[ExpressionNormaliser | None, MutationPanel | None, dict[str, torch.Tensor]]:
        """(normaliser, panel, the other tensors) from what `profile_config` and `normaliser_tensors` wrote."""
        normaliser = None
        if config.get("expression"):
            stats = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("expression_normaliser.")}
            normaliser = ExpressionNormaliser.from_dict(config["expression"], stats)
        panel = MutationPanel.from_dict(config["mutations"]) if config.get("mutations") else None
        return normaliser, panel, {k: v for k, v in tensors.items() if not k.startswith("expression_normaliser.")}

    def encode_expression(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        """(n_samples, n_genes) expression on the training scale -> (n, out_dim) unit vectors."""
        if self.expression_encoder is None or self.expression_normaliser is None:
            raise ModelMismatchError(f"model '{self.recipe}' has no expression encoder (trained without expression)")
        profiles, report = self.expression_normaliser.transform(matrix, genes)
        return self._encode_profiles(self.expression_encoder, profiles), report

    def encode_mutations(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        """(n_samples, n_genes) 0/1 mutation matrix -> (n, out_dim) unit vectors."""
        if self.mutation_encoder is None or self.mutation_panel is None:
            raise ModelMismatchError(f"model '{self.recipe}' has no mutation encoder (trained without mutations)")
        profiles, report = self.mutation_panel.transform(matrix, genes)
        return self._encode_profiles(self.mutation_encoder, profiles), report

    @torch.no_grad()
    def _encode_profiles(self, encoder: Callable[[torch.Tensor], torch.Tensor], profiles: np.ndarray) -> np.ndarray:
        was_training = self.training
        self.eval()
        try:
            device = self.logit_scale.device
            out = [encoder(torch.from_numpy(profiles[i:i + _PROFILE_BATCH]).to(device)).float().cpu().numpy()
                   for i in range(0, profiles.shape[0], _PROFILE_BATCH)]
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, self.out_dim), dtype=np.float32)
        return l2_normalise(np.concatenate(out))


_THREADS_DESCRIPTION = ("gated-attention MIL slide encoder + expression / mutation MLPs, trained contrastively "
                        "(THREADS/TANGLE recipe: hidden 512, 2 heads, output 1024)")


@register_model("threads-abmil", trainable=True, description=_THREADS_DESCRIPTION)
@register_model("threads-abmil-cpu", trainable=True,
                description="the threads-abmil recipe sized for CPU training (hidden 128, attention 64)",
                default_config={"hidden_dim": 128, "attn_dim": 64, "profile_hidden_dim": 256})
class ThreadsModel(ProfileBranches, ConfiguredEncoder, nn.Module):
    """Slide encoder + optional expression encoder (with its normaliser) + optional mutation
    encoder (with its gene panel) + the learnable CLIP temperature."""

    has_patch_attention = True  # encode_slide(..., return_attention=True) weighs patches (heatmaps)

    def __init__(self, config: ThreadsModelConfig, recipe: str = "threads-abmil",
                 expression_normaliser: ExpressionNormaliser | None = None,
                 mutation_panel: MutationPanel | None = None) -> None:
        super().__init__()
        self.config = config
        self.recipe = recipe
        self.slide_encoder = ABMILSlideEncoder(
            config.in_dim, config.hidden_dim, config.n_layers, config.n_heads, config.attn_dim, config.out_dim,
            config.dropout, config.attn_dropout, config.centre_patches)
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))
        self.start_branches(expression_normaliser, mutation_panel)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def create(cls, recipe: str = "threads-abmil", **config: Any) -> "ThreadsModel":
        return cls(build_config(ThreadsModelConfig, config, recipe), recipe)

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-serialisable config, tensors) that `from_export` turns back into this model."""
        config = {"model": dataclasses.asdict(self.config), **self.profile_config()}
        tensors = {name: t.detach() for name, t in self.state_dict().items()}
        return config, {**tensors, **self.normaliser_tensors()}

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "ThreadsModel":
        normaliser, panel, weights = ProfileBranches.profiles_from_export(config, tensors)
        model = cls(build_config(ThreadsModelConfig, config["model"], recipe), recipe, normaliser, panel)
        model.load_state_dict(weights, strict=True)
        model.eval()
        return model

    # -- the common encoding interface ---------------------------------------------------
    def encode_slide(self, bag: np.ndarray | torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     return_attention: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """(n_patches, in_dim) features -> (out_dim,) float32 unit vector; with
        `return_attention`, also the (n_heads, n_patches) attention weights."""
        if bag.ndim == 2 and bag.shape[1] != self.in_dim:
            check_feature_source(self, int(bag.shape[1]))
        result = self.slide_encoder.encode_bag(bag, chunk_size=chunk_size, return_attention=return_attention)
        if return_attention:
            embedding, attention = result
            return l2_normalise(embedding.numpy()), attention.numpy()
        return l2_normalise(result.numpy())
