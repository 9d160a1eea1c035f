"""Published slide encoders, loaded from a local weights file in their exact published layout.

Nothing is downloaded: the user passes the file (`--weights FILE`: safetensors, or a torch
checkpoint read with `weights_only=True`). Both layouts here are gated-attention poolers
(Linear -> ReLU on each patch, then tanh x sigmoid gated scores, softmax over the patches):

- `feather` (MIL-Lab ABMIL, FEATHER pc108 on CONCH v1.5 / UNI2): keys `model.patch_embed.0.*`
  (embed 512), `model.global_attn.attention_{a,b}.0.*` (attn 384), `model.global_attn.attention_c.*`
  (1 head). The slide embedding is the attention-pooled *embedded* patches (512-d), i.e. MIL-Lab's
  `forward_features`; the classifier (`model.classifier.*`) is not used.
- `chief` (CHIEF's attention pooling, CTransPath 768-d): keys `attention_net.0.*` (embed 512),
  `attention_net.3.attention_{a,b}.0.*` (attn 256), `attention_net.3.attention_c.*`. CHIEF's
  `WSI_feature` is the attention-weighted mean of the *raw* patch features (768-d); the
  classifier, instance classifiers, text and organ-embedding branches are not used.

Any other key or a tensor of another shape is refused naming the first bad key with the expected
and actual shape. `threads` is registered so that asking for it says the weights are not
released. The stored copy (atlas `models/<id>/`) keeps the published key names.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from threads_search.encoders.abmil import DEFAULT_CHUNK_SIZE
from threads_search.encoders.model import ConfiguredEncoder, build_config, l2_normalise
from threads_search.encoders.molecular import AlignmentReport
from threads_search.encoders.registry import register_model
from threads_search.errors import InputError, ModelMismatchError


@dataclass(frozen=True)
class AttentionLayout:
    """Where a published gated-attention pooler keeps its tensors, and what it pools."""

    name: str
    embed: str  # prefix of the patch Linear: <embed>.weight (embed_dim, in_dim)
    attention: str  # prefix of the gated attention: <attention>.attention_{a,b}.0, .attention_c
    embed_dim: int
    attn_dim: int
    n_heads: int
    pools_raw_features: bool  # CHIEF: weights applied to the raw patch features
    unused_prefixes: tuple[str, ...]  # heads and branches the slide embedding does not use
    default_in_dim: int
    patch_encoders: str  # what its published weights were trained on

    def expected_shapes(self, in_dim: int) -> dict[str, tuple[int, ...]]:
        e, a, h = self.embed_dim, self.attn_dim, self.n_heads
        return {
            f"{self.embed}.weight": (e, in_dim), f"{self.embed}.bias": (e,),
            f"{self.attention}.attention_a.0.weight": (a, e), f"{self.attention}.attention_a.0.bias": (a,),
            f"{self.attention}.attention_b.0.weight": (a, e), f"{self.attention}.attention_b.0.bias": (a,),
            f"{self.attention}.attention_c.weight": (h, a), f"{self.attention}.attention_c.bias": (h,),
        }

    def out_dim(self, in_dim: int) -> int:
        return in_dim if self.pools_raw_features else self.embed_dim * self.n_heads


LAYOUTS = {
    "feather": AttentionLayout("feather", "model.patch_embed.0", "model.global_attn", 512, 384, 1, False,
                               ("model.classifier.",), 768, "conch_v15 (768-d) or uni_v2 (1536-d)"),
    "chief": AttentionLayout("chief", "attention_net.0", "attention_net.3", 512, 256, 1, True,
                             ("classifiers.", "instance_classifiers.", "att_head.", "text_to_vision.",
                              "organ_embedding"), 768, "ctranspath (768-d)"),
}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_layout(layout: AttentionLayout, tensors: Mapping[str, torch.Tensor], in_dim: int | None,
                 source: str) -> dict[str, torch.Tensor]:
    """The layout's tensors (float32), or ModelMismatchError naming the first bad key.

    `in_dim` is the patch-feature dimension the encoder must take (None: read from the file).
    Keys under the layout's unused prefixes are dropped; any other unknown key is refused.
    """
    embed_key = f"{layout.embed}.weight"
    if in_dim is None:
        weight = tensors.get(embed_key)
        in_dim = int(weight.shape[1]) if weight is not None and weight.ndim == 2 else layout.default_in_dim
    expected = layout.expected_shapes(in_dim)
    for key, shape in expected.items():
        if key not in tensors:
            raise ModelMismatchError(f"{source}: key '{key}' is missing; the {layout.name} layout expects it with "
                                     f"shape {shape} (found keys such as {_examples(tensors)})")
        actual = tuple(tensors[key].shape)
        if actual != shape:
            hint = f" on {in_dim}-d patch features" if key == embed_key else ""
            raise ModelMismatchError(f"{source}: key '{key}' has shape {actual}, the {layout.name} layout{hint} "
                                     f"expects {shape}")
    for key in sorted(tensors):
        if key not in expected and not key.startswith(layout.unused_prefixes):
            raise ModelMismatchError(f"{source}: unexpected key '{key}' {tuple(tensors[key].shape)} for the "
                                     f"{layout.name} layout (expected {', '.join(list(expected)[:2])}, ...)")
    out = {}
    for key in expected:
        tensor = tensors[key]
        if not tensor.is_floating_point():
            raise ModelMismatchError(f"{source}: key '{key}' holds {tensor.dtype} values, expected floats")
        out[key] = tensor.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(out[key]).all()):
            raise ModelMismatchError(f"{source}: key '{key}' holds NaN or Inf")
    return out


def _examples(tensors: Mapping[str, torch.Tensor]) -> str:
    keys = sorted(tensors)
    return ", ".join(f"'{k}'" for k in keys[:3]) + (" ..." if len(keys) > 3 else "") if keys else "none"


@dataclass(frozen=True)
class AttentionPoolConfig:
    in_dim: int = 768
    out_dim: int = 512
    patch_encoder: str = ""
    weights_file: str = ""  # name of the file it was loaded from (provenance)
    weights_sha256: str = ""


class PublishedAttentionPool(ConfiguredEncoder):
    """A frozen published gated-attention slide encoder (FEATHER or CHIEF layout); slides only."""

    has_patch_attention = True

    def __init__(self, recipe: str, config: AttentionPoolConfig, tensors: Mapping[str, torch.Tensor]) -> None:
        self.recipe = recipe
        self.layout = LAYOUTS[recipe]
        self.tensors = check_layout(self.layout, tensors, config.in_dim, f"model '{recipe}'")
        self.config = config
        expected_out = self.layout.out_dim(config.in_dim)
        if config.out_dim != expected_out:
            raise ModelMismatchError(f"model '{recipe}': out_dim {config.out_dim} does not match its layout ({expected_out})")

    @classmethod
    def create(cls, recipe: str, **config: Any) -> "PublishedAttentionPool":
        raise InputError(f"model '{recipe}' is a published checkpoint: pass its weights file "
                         f"(`embed ATLAS --model {recipe} --weights FILE`); nothing is downloaded")

    @classmethod
    def from_file(cls, recipe: str, path: str | Path | None, in_dim: int | None = None,
                  patch_encoder: str = "") -> "PublishedAttentionPool":
        """Load `path` (safetensors or a weights_only torch checkpoint) in the recipe's layout."""
        from threads_search.encoders.patch.local_weights import load_state_dict_file

        if path is None:
            return cls.create(recipe)
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such weights file")
        layout = LAYOUTS[recipe]
        tensors = check_layout(layout, load_state_dict_file(path), in_dim, str(path))
        in_dim = int(tensors[f"{layout.embed}.weight"].shape[1])
        config = AttentionPoolConfig(in_dim=in_dim, out_dim=layout.out_dim(in_dim), patch_encoder=patch_encoder,
                                     weights_file=path.name, weights_sha256=file_sha256(path))
        return cls(recipe, config, tensors)

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"model": dataclasses.asdict(self.config)}, dict(self.tensors)

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "PublishedAttentionPool":
        return cls(recipe, build_config(AttentionPoolConfig, config["model"], recipe), tensors)

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("slides",)

    def _scores_and_hidden(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, layout = self.tensors, self.layout
        hidden = torch.relu(chunk @ t[f"{layout.embed}.weight"].T + t[f"{layout.embed}.bias"])
        a = torch.tanh(hidden @ t[f"{layout.attention}.attention_a.0.weight"].T + t[f"{layout.attention}.attention_a.0.bias"])
        b = torch.sigmoid(hidden @ t[f"{layout.attention}.attention_b.0.weight"].T + t[f"{layout.attention}.attention_b.0.bias"])
        scores = (a * b) @ t[f"{layout.attention}.attention_c.weight"].T + t[f"{layout.attention}.attention_c.bias"]
        return scores, hidden

    @torch.no_grad()
    def encode_slide(self, bag: np.ndarray | torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     return_attention: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """(n_patches, in_dim) -> (out_dim,) float32 unit vector (512 FEATHER, in_dim CHIEF);
        with `return_attention`, also the (n_heads, n_patches) softmax weights. Streams the bag
        in chunks with an online softmax, so memory is bounded by `chunk_size`."""
        n_patches = self.check_bag(bag)
        heads = self.layout.n_heads
        pooled_dim = self.in_dim if self.layout.pools_raw_features else self.layout.embed_dim
        running_max = torch.full((heads,), float("-inf"))
        running_sum = torch.zeros(heads)
        running_pool = torch.zeros(heads, pooled_dim)
        all_scores = []
        for start in range(0, n_patches, chunk_size):
            chunk = bag[start:start + chunk_size]
            chunk = chunk.float() if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.asarray(chunk, np.float32))
            if not bool(torch.isfinite(chunk).all()):
                row = start + int((~torch.isfinite(chunk)).any(dim=1).nonzero()[0, 0])
                raise InputError(f"patch features contain NaN or Inf (first at row {row})")
            scores, hidden = self._scores_and_hidden(chunk)
            pooled_rows = chunk if self.layout.pools_raw_features else hidden
            new_max = torch.maximum(running_max, scores.max(dim=0).values)
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(scores - new_max)
            running_sum = running_sum * rescale + weights.sum(dim=0)
            running_pool = running_pool * rescale[:, None] + weights.T @ pooled_rows
            running_max = new_max
            if return_attention:
                all_scores.append(scores)
        embedding = l2_normalise((running_pool / running_sum[:, None]).flatten().numpy())
        if not return_attention:
            return embedding
        scores = torch.cat(all_scores).T
        attention = torch.exp(scores - running_max[:, None]) / running_sum[:, None]
        return embedding, attention.numpy().astype(np.float32)

    def encode_expression(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        raise ModelMismatchError(f"model '{self.recipe}' encodes slides only; align an expression encoder to it "
                                 f"with `train ATLAS --slide-encoder MODEL_ID`")

    def encode_mutations(self, matrix: np.ndarray, genes: Sequence[str]) -> tuple[np.ndarray, AlignmentReport]:
        raise ModelMismatchError(f"model '{self.recipe}' encodes slides only; align a mutation encoder to it "
                                 f"with `train ATLAS --slide-encoder MODEL_ID`")


for _name, _layout in LAYOUTS.items():
    register_model(_name, trainable=False, frozen=True,
                   description=f"published {_name} attention pooling from a local weights file "
                               f"(--weights FILE; trained on {_layout.patch_encoders})")(PublishedAttentionPool)


class UnreleasedModel:
    """A published name whose weights cannot be had; asking for it says so."""

    @classmethod
    def create(cls, recipe: str, **config: Any) -> Any:
        raise InputError(f"model '{recipe}': the THREADS slide encoder weights are not released (TRIDENT's 'threads' "
                         "entry is a stub too); train one on paired data with `train`, or use a published encoder: "
                         "--model feather|chief --weights FILE")

    @classmethod
    def from_file(cls, recipe: str, path: str | Path, in_dim: int | None = None, patch_encoder: str = "") -> Any:
        return cls.create(recipe)

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
        return cls.create(recipe)


register_model("threads", trainable=False, frozen=True,
               description="THREADS (Vaidya et al. 2025) published slide encoder: weights not released")(UnreleasedModel)


def load_published(recipe: str, weights: str | Path, in_dim: int | None = None, patch_encoder: str = "") -> Any:
    """The published model `recipe` built from a local weights file or snapshot folder."""
    from threads_search.encoders.registry import get_model_spec

    spec = get_model_spec(recipe)
    loader = getattr(spec.cls, "from_file", None)
    if loader is None:
        raise InputError(f"model '{recipe}' takes no weights file; published encoders: {', '.join(published_recipes())}")
    return loader(recipe, weights, in_dim=in_dim, patch_encoder=patch_encoder)


def published_recipes() -> list[str]:
    from threads_search.encoders.registry import get_model_spec, list_models

    return [name for name in list_models() if hasattr(get_model_spec(name).cls, "from_file")]
