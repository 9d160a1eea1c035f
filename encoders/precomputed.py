"""`precomputed`: a frozen slide space whose vectors were made elsewhere (TRIDENT, Patho-Bench ...).

The model holds no weights: its slide embeddings are ingested as they are (L2-normalised) by
`ingest slide-embeddings --encoder NAME`, and index / search / eval / prototypes read them like
any model's stored embeddings. Its id is the content hash of (name, dimension, patch encoder),
so further files of the same encoder join the same model; the files it was made from (names and
fingerprints) are its provenance in the atlas's `models` table. It cannot encode new patch
features, and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from threads_search.encoders.model import ConfiguredEncoder, build_config
from threads_search.encoders.registry import register_model
from threads_search.errors import ModelMismatchError


@dataclass(frozen=True)
class PrecomputedConfig:
    encoder: str = ""  # the --encoder it was ingested under: titan, feather, chief, prism ...
    out_dim: int = 0
    in_dim: int = 0  # no patch features go in
    patch_encoder: str = ""


@register_model("precomputed", trainable=False, frozen=True,
                description="precomputed slide embeddings ingested with `ingest slide-embeddings --encoder NAME`")
class PrecomputedSlideModel(ConfiguredEncoder):
    """Stored slide vectors only; `encode_slide` refuses (nothing here can compute them)."""

    has_patch_attention = False
    precomputed = True
    modalities = ("slides",)

    def __init__(self, config: PrecomputedConfig, recipe: str = "precomputed") -> None:
        self.config = config
        self.recipe = recipe

    @classmethod
    def create(cls, recipe: str = "precomputed", **config: Any) -> "PrecomputedSlideModel":
        return cls(build_config(PrecomputedConfig, config, recipe), recipe)

    @property
    def name(self) -> str:
        return self.config.encoder

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        # safetensors wants a tensor; the dimension is the one fact the vectors must agree with
        return {"model": dataclasses.asdict(self.config)}, {"out_dim": torch.tensor([self.config.out_dim], dtype=torch.int64)}

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "PrecomputedSlideModel":
        model = cls(build_config(PrecomputedConfig, config["model"], recipe), recipe)
        if int(tensors["out_dim"][0]) != model.out_dim:
            raise ModelMismatchError(f"precomputed model '{model.name}': stored dimension does not match its config")
        return model

    def _refusal(self) -> ModelMismatchError:
        return ModelMismatchError(f"model '{self.name}' ({self.out_dim}-d) holds precomputed slide embeddings and cannot "
                                  f"encode patch features; query by --slide-id, or add the slide's embedding with "
                                  f"`ingest slide-embeddings --encoder {self.name}`")

    def check_features(self, feature_dim: int, patch_encoder: str | None = None) -> None:
        raise self._refusal()

    def encode_slide(self, bag, chunk_size: int = 0, return_attention: bool = False) -> np.ndarray:
        raise self._refusal()

    def encode_expression(self, matrix, genes):
        raise ModelMismatchError(f"model '{self.name}' has slide embeddings only; no expression encoder")

    encode_mutations = encode_expression
