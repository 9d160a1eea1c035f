"""timm architectures with local weights: the `timm:<architecture>` family of patch encoders.

timm is optional and imported only when such an encoder is built; without it the error
names the package to install. Models are created with `pretrained=False` (nothing is
downloaded) and `num_classes=0` (pooled features), then the user's weights file is loaded
strictly, ignoring only the classifier head that `num_classes=0` removes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from threads_search.encoders.patch.local_weights import (
    build_from_torchscript,
    is_torchscript_file,
    load_matching_state_dict,
    load_state_dict_file,
)
from threads_search.encoders.patch.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchEncoderSpec,
    register_patch_encoder_family,
)
from threads_search.errors import InputError


def import_timm(purpose: str) -> Any:
    """The timm module, or InputError naming `pip install timm` and what needed it."""
    try:
        import timm
    except ImportError:
        raise InputError(f"{purpose} needs timm, which is not installed: pip install timm") from None
    return timm


def create_timm_model(architecture: str, purpose: str, **kwargs: Any) -> torch.nn.Module:
    """`timm.create_model(architecture, pretrained=False, num_classes=0, **kwargs)`."""
    timm = import_timm(purpose)
    try:
        return timm.create_model(architecture, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as error:  # timm raises RuntimeError for an unknown architecture
        raise InputError(f"timm has no architecture '{architecture}' ({error})") from None


def classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier head(s) that `num_classes=0` dropped (e.g. 'head.', 'fc.')."""
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    classifier = config.get("classifier", "head")
    names = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    return tuple(f"{name}." for name in names)


def load_timm_weights(model: torch.nn.Module, weights: Path, encoder_name: str) -> torch.nn.Module:
    """Load a state-dict file into a timm model (strict except for the dropped head)."""
    state_dict = load_state_dict_file(weights)
    load_matching_state_dict(model, state_dict, weights, encoder_name, ignored_prefixes=classifier_prefixes(model))
    return model


def _normalisation(model: torch.nn.Module) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    config = getattr(model, "pretrained_cfg", None) or {}
    input_size = config.get("input_size", (3, 224, 224))[-1]
    return int(input_size), tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))


@register_patch_encoder_family(
    "timm", "timm:<architecture> with --weights FILE (state dict or TorchScript); needs `pip install timm`"
)
def build_timm_family(architecture: str, weights: Path | None) -> tuple[PatchEncoderSpec, torch.nn.Module]:
    name = f"timm:{architecture}"
    if not architecture:
        raise InputError("name a timm architecture after 'timm:', e.g. timm:vit_small_patch16_224")
    if weights is None:
        raise InputError(
            f"patch encoder '{name}' needs a local weights file: pass --weights FILE (nothing is downloaded)"
        )
    model = create_timm_model(architecture, purpose=f"patch encoder '{name}'")
    input_size, mean, std = _normalisation(model)
    spec = PatchEncoderSpec(
        name=name,
        input_size=input_size,
        mean=mean,
        std=std,
        output_dim=int(model.num_features),
        description=f"timm {architecture} with local weights",
        needs_weights=True,
        requires_package="timm",
    )
    if is_torchscript_file(weights):
        return build_from_torchscript(spec, weights)
    return spec, load_timm_weights(model, weights, name)
