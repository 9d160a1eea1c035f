"""Pathology foundation models (CONCH v1.5, UNI, UNI2-h) from weights the user already has.

They cannot be downloaded here (gated models, no network), so each needs `--weights FILE`:
* a TorchScript export (any of them; checked against the declared input size and output
  dimension by a dry run), or
* for UNI and UNI2-h, the released state dict (`pytorch_model.bin` or a safetensors
  conversion), built as the timm ViT the model cards describe (needs timm).
CONCH v1.5's vision tower (iBOT ViT-L/16 + attentional pooler) is not rebuilt here: export it
to TorchScript where the CONCH / TRIDENT code is installed, then pass that file.

Input sizes, output dimensions and normalisation follow TRIDENT's loaders: CONCH v1.5 448 px
-> 768, UNI 224 px -> 1024, UNI2-h 224 px -> 1536, all with ImageNet mean / std.
"""

from __future__ import annotations

from pathlib import Path

import torch

from threads_search.encoders.patch.local_weights import build_from_torchscript, is_torchscript_file
from threads_search.encoders.patch.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchEncoderSpec,
    register_patch_encoder,
)
from threads_search.encoders.patch.timm_adapter import create_timm_model, import_timm, load_timm_weights
from threads_search.errors import InputError


@register_patch_encoder(
    "conch_v15",
    input_size=448,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output_dim=768,
    description="CONCH v1.5 (MahmoodLab, THREADS' patch encoder), 768-d; --weights: a TorchScript export",
    needs_weights=True,
)
def build_conch_v15(spec: PatchEncoderSpec, weights: Path) -> tuple[PatchEncoderSpec, torch.nn.Module]:
    if not is_torchscript_file(weights):
        raise InputError(
            f"{weights}: conch_v15 loads from a TorchScript export of the CONCH v1.5 vision tower "
            "(input (b, 3, 448, 448)); its state dict alone cannot be rebuilt here"
        )
    return build_from_torchscript(spec, weights)


@register_patch_encoder(
    "uni_v1",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output_dim=1024,
    description="UNI (ViT-L/16, MahmoodLab), 1024-d; --weights: state dict (needs timm) or TorchScript",
    needs_weights=True,
    requires_package="timm",
)
def build_uni_v1(spec: PatchEncoderSpec, weights: Path) -> tuple[PatchEncoderSpec, torch.nn.Module]:
    if is_torchscript_file(weights):
        return build_from_torchscript(spec, weights)
    model = create_timm_model(
        "vit_large_patch16_224",
        purpose=f"loading {weights.name} as {spec.name}",
        img_size=224,
        patch_size=16,
        init_values=1e-5,
        dynamic_img_size=True,
    )
    return spec, load_timm_weights(model, weights, spec.name)


@register_patch_encoder(
    "uni2_h",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output_dim=1536,
    description="UNI2-h (ViT-H/14, MahmoodLab), 1536-d; --weights: state dict (needs timm) or TorchScript",
    needs_weights=True,
    requires_package="timm",
)
def build_uni2_h(spec: PatchEncoderSpec, weights: Path) -> tuple[PatchEncoderSpec, torch.nn.Module]:
    if is_torchscript_file(weights):
        return build_from_torchscript(spec, weights)
    purpose = f"loading {weights.name} as {spec.name}"
    timm = import_timm(purpose)
    model = create_timm_model(
        "vit_giant_patch14_224",
        purpose=purpose,
        img_size=224,
        patch_size=14,
        depth=24,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        no_embed_class=True,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        reg_tokens=8,
        dynamic_img_size=True,
    )
    return spec, load_timm_weights(model, weights, spec.name)
