"""`AlignedModel`: molecular encoders trained into the space of a FROZEN slide encoder.

The slide side is another model (mean pooling, a published FEATHER / CHIEF checkpoint, a
trained model, or any model an atlas stores): it is carried inside the checkpoint unchanged
(its config and tensors under `slide_model.`), never trained, and the atlas copies its stored
slide embeddings verbatim (`frozen_slide_model_id`), so the aligned model's slide vectors are
exactly the frozen model's. Only the expression / mutation MLPs and the CLIP temperature are
learned (`threads_search.training.frozen`), mapping profiles into that fixed space, so
expression -> slide search and molecular prompting work on top of any slide encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from threads_search.encoders.abmil import DEFAULT_CHUNK_SIZE
from threads_search.encoders.model import INITIAL_LOGIT_SCALE, ConfiguredEncoder, ProfileBranches, build_config
from threads_search.encoders.molecular import ExpressionNormaliser, MutationPanel
from threads_search.encoders.registry import get_model_spec, register_model
from threads_search.errors import InputError, ModelMismatchError

SLIDE_PREFIX = "slide_model."


@dataclass(frozen=True)
class AlignedConfig:
    in_dim: int = 768
    out_dim: int = 1024  # the frozen slide model's dimension
    patch_encoder: str = ""
    slide_model_id: str = ""  # the frozen model, as the atlas records it
    slide_recipe: str = ""
    profile_hidden_dim: int = 512
    profile_n_layers: int = 1
    profile_dropout: float = 0.1


@register_model("aligned", trainable=False,
                description="molecular encoders aligned to a frozen slide encoder's space "
                            "(made by `train ATLAS --slide-encoder MODEL`)")
class AlignedModel(ProfileBranches, ConfiguredEncoder, nn.Module):
    """A frozen slide model + trained expression / mutation encoders + the CLIP temperature."""

    def __init__(self, config: AlignedConfig, slide_model: Any, recipe: str = "aligned",
                 expression_normaliser: ExpressionNormaliser | None = None,
                 mutation_panel: MutationPanel | None = None) -> None:
        super().__init__()
        self.config = config
        self.recipe = recipe
        # Kept outside the module tree: its tensors are neither trained nor in this state_dict.
        self.__dict__["slide_model"] = slide_model
        self.logit_scale = nn.Parameter(torch.tensor(INITIAL_LOGIT_SCALE))
        self.start_branches(expression_normaliser, mutation_panel)

    @classmethod
    def create(cls, recipe: str = "aligned", **config: Any) -> "AlignedModel":
        raise InputError("an aligned model is made by `train ATLAS --slide-encoder MODEL` from a stored slide model")

    @classmethod
    def on_slide_model(cls, slide_model: Any, slide_model_id: str, out_dim: int, **options: Any) -> "AlignedModel":
        """A fresh aligned model over `slide_model` (recorded under `slide_model_id`), whose
        embeddings are `out_dim`-d; `options` size the profile MLPs (profile_hidden_dim ...)."""
        model_out = getattr(slide_model, "out_dim", out_dim)
        if model_out != out_dim:
            raise ModelMismatchError(f"slide model {slide_model_id} encodes {model_out}-d vectors but its stored "
                                     f"embeddings are {out_dim}-d")
        config = build_config(AlignedConfig, {
            "in_dim": int(getattr(slide_model, "in_dim", 0) or 0), "out_dim": int(out_dim),
            "patch_encoder": getattr(slide_model, "patch_encoder", "") or "", "slide_model_id": slide_model_id,
            "slide_recipe": slide_model.recipe, **options}, "aligned")
        return cls(config, slide_model)

    @property
    def has_patch_attention(self) -> bool:
        return bool(getattr(self.slide_model, "has_patch_attention", False))

    @property
    def frozen_slide_model_id(self) -> str:
        """The model whose stored slide embeddings are this model's slide embeddings."""
        return self.config.slide_model_id

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        slide_config, slide_tensors = self.slide_model.export()
        config = {"model": dataclasses.asdict(self.config), "slide_model": slide_config, **self.profile_config()}
        tensors = {name: t.detach() for name, t in self.state_dict().items()}
        tensors.update({SLIDE_PREFIX + name: t for name, t in slide_tensors.items()})
        return config, {**tensors, **self.normaliser_tensors()}

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "AlignedModel":
        model_config = build_config(AlignedConfig, config["model"], recipe)
        slide_tensors = {k[len(SLIDE_PREFIX):]: v for k, v in tensors.items() if k.startswith(SLIDE_PREFIX)}
        spec = get_model_spec(model_config.slide_recipe)
        slide_model = spec.cls.from_export(model_config.slide_recipe, config["slide_model"], slide_tensors)
        own = {k: v for k, v in tensors.items() if not k.startswith(SLIDE_PREFIX)}
        normaliser, panel, weights = ProfileBranches.profiles_from_export(config, own)
        model = cls(model_config, slide_model, recipe, normaliser, panel)
        model.load_state_dict(weights, strict=True)
        model.eval()
        return model

    def check_features(self, feature_dim: int, patch_encoder: str | None = None) -> None:
        self.slide_model.check_features(feature_dim, patch_encoder)

    def encode_slide(self, bag: np.ndarray | torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     return_attention: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The frozen slide model's embedding of the bag (its attention too, if asked)."""
        return self.slide_model.encode_slide(bag, chunk_size=chunk_size, return_attention=return_attention)
