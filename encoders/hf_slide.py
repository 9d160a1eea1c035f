"""TITAN / PRISM slide encoders from a LOCAL Hugging Face snapshot (optional extra `hf`).

Both ship their architecture as remote code in their model repositories, so they are loaded with
`transformers.AutoModel.from_pretrained(folder, trust_remote_code=True, local_files_only=True)`
from a folder the user downloaded (e.g. `huggingface-cli download paige-ai/Prism --local-dir DIR`):
the code that runs is the code in that folder, and nothing is fetched (HF_HUB_OFFLINE is set).
Without `transformers` the names answer with the extra to install.

The atlas stores the snapshot's path and a fingerprint of its files (not a copy of the weights):
the model is re-loaded from that folder, and refused if its files changed.

PRISM (Virchow tile embeddings, 2560-d) -> `slide_representations(x)['image_embedding']`, 1280-d.
TITAN (CONCH v1.5, 768-d) -> `encode_slide_from_patch_features(x, coords, patch_size_level0)`, 768-d,
as TRIDENT calls it: the model says `needs_coordinates`, and the embed job and `search --features`
pass each slide's level-0 coords and patch size.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from threads_search.encoders.abmil import DEFAULT_CHUNK_SIZE
from threads_search.encoders.model import ConfiguredEncoder, build_config, l2_normalise
from threads_search.encoders.registry import register_model
from threads_search.errors import InputError, ModelMismatchError

SNAPSHOTS = {"prism": {"in_dim": 2560, "out_dim": 1280, "patch_encoder": "virchow"},
             "titan": {"in_dim": 768, "out_dim": 768, "patch_encoder": "conch_v15"}}


def import_transformers(recipe: str):
    try:
        import transformers
    except ImportError:
        raise InputError(f"model '{recipe}' loads a local Hugging Face snapshot with `transformers`, which is not "
                         "installed: pip install 'threads-search[hf]' (nothing is downloaded at run time)") from None
    return transformers


def snapshot_fingerprint(folder: Path) -> str:
    """sha256 over the names, sizes and modification times of the snapshot's files (cheap, no full read)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class SnapshotConfig:
    in_dim: int = 2560
    out_dim: int = 1280
    patch_encoder: str = ""
    snapshot: str = ""  # absolute path of the local snapshot folder
    fingerprint: str = ""


@register_model("prism", trainable=False, frozen=True,
                description="PRISM (Paige) slide encoder from a local Hugging Face snapshot (--weights FOLDER; extra hf)")
@register_model("titan", trainable=False, frozen=True,
                description="TITAN (MahmoodLab) from a local Hugging Face snapshot (--weights FOLDER; extra hf; "
                            "uses the patches' coordinates)")
class SnapshotSlideEncoder(ConfiguredEncoder):
    def __init__(self, recipe: str, config: SnapshotConfig) -> None:
        self.recipe, self.config = recipe, config
        transformers = import_transformers(recipe)
        folder = Path(config.snapshot)
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: not a Hugging Face snapshot folder (no config.json)")
        if config.fingerprint and snapshot_fingerprint(folder) != config.fingerprint:
            raise ModelMismatchError(f"{folder}: the snapshot's files changed since the model was stored")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            self.module = transformers.AutoModel.from_pretrained(str(folder), trust_remote_code=True,
                                                                 local_files_only=True).eval()
        except Exception as error:  # remote code raises anything
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelMismatchError(f"{folder}: cannot load '{recipe}' from this snapshot ({first})") from None

    @classmethod
    def create(cls, recipe: str, **config: Any) -> "SnapshotSlideEncoder":
        raise InputError(f"model '{recipe}' loads from a local Hugging Face snapshot: "
                         f"`embed ATLAS --model {recipe} --weights FOLDER` (nothing is downloaded)")

    @classmethod
    def from_file(cls, recipe: str, path, in_dim: int | None = None, patch_encoder: str = "") -> "SnapshotSlideEncoder":
        if path is None:
            return cls.create(recipe)
        import_transformers(recipe)
        folder = Path(path).resolve()
        if not folder.is_dir():
            raise InputError(f"{path}: '{recipe}' takes the folder of a local Hugging Face snapshot")
        sizes = SNAPSHOTS[recipe]
        if in_dim is not None and in_dim != sizes["in_dim"]:
            raise ModelMismatchError(f"model '{recipe}' takes {sizes['in_dim']}-d {sizes['patch_encoder']} patch "
                                     f"features; the atlas holds {in_dim}-d features")
        config = SnapshotConfig(sizes["in_dim"], sizes["out_dim"], patch_encoder or sizes["patch_encoder"], str(folder),
                                snapshot_fingerprint(folder))
        return cls(recipe, config)

    def export(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        from dataclasses import asdict

        return {"model": asdict(self.config)}, {}

    @classmethod
    def from_export(cls, recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "SnapshotSlideEncoder":
        return cls(recipe, build_config(SnapshotConfig, config["model"], recipe))

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("slides",)

    @property
    def needs_coordinates(self) -> bool:
        """TITAN places patches on a grid: callers pass `coords` and `patch_size_level0`."""
        return self.recipe == "titan"

    @torch.no_grad()
    def encode_slide(self, bag, chunk_size: int = DEFAULT_CHUNK_SIZE, return_attention: bool = False,
                     coords: np.ndarray | None = None, patch_size_level0: int | None = None):
        """PRISM: (n_patches, 2560) Virchow features -> (1280,); TITAN: (n_patches, 768) CONCH v1.5
        features + (n_patches, 2) level-0 coords + the patch size at level 0 -> (768,). Unit length."""
        if return_attention:
            raise InputError(f"model '{self.recipe}' exposes no per-patch attention here")
        n_patches = self.check_bag(bag)
        features = torch.as_tensor(np.asarray(bag, dtype=np.float32))[None]
        if self.needs_coordinates:
            if coords is None or patch_size_level0 is None or len(coords) != n_patches:
                raise InputError(f"model '{self.recipe}' needs each patch's level-0 coordinates and the patch size at "
                                 "level 0 (TRIDENT's `coords` and `patch_size_level0`); this slide's file lacks them")
            embedding = self.module.encode_slide_from_patch_features(
                features, torch.as_tensor(np.asarray(coords, np.int64))[None], int(patch_size_level0))
        else:
            embedding = self.module.slide_representations(features)["image_embedding"]
        return l2_normalise(embedding.float().reshape(-1).numpy())

    def encode_expression(self, matrix, genes):
        raise ModelMismatchError(f"model '{self.recipe}' encodes slides only; align an expression encoder to it "
                                 "with `train ATLAS --slide-encoder MODEL_ID`")

    encode_mutations = encode_expression
