"""Patch encoders from a user's local weights file.

Two kinds of file:
* TorchScript (`torch.jit.save` of a traced or scripted model): the architecture travels with
  the weights. The generic entry `torchscript` reads an optional JSON sidecar
  `<weights>.json` with `input_size`, `mean`, `std`, `output_dim`; named entries (uni_v1 ...)
  declare those on their spec. A dry run on one blank patch checks the output dimension.
* State dicts (`.safetensors`, or `.pt`/`.pth`/`.bin` read with `torch.load(weights_only=True)`)
  for an architecture we build ourselves (`resnet50_trunc`) or via timm.

`torch.export` archives (`.pt2`) are deliberately not accepted: `torch.export.load` unpickles
their constants with `weights_only=False`, i.e. it can run code from the file.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from threads_search.encoders.patch.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchEncoderSpec,
    register_patch_encoder,
)
from threads_search.errors import InputError, ModelMismatchError


def is_torchscript_file(path: Path) -> bool:
    """True for a TorchScript archive (a zip holding `code/` and `constants.pkl` entries)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_torchscript(path: Path) -> torch.nn.Module:
    """Load a TorchScript model on the CPU; InputError naming the file if it is not one."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise InputError(f"{path}: not a TorchScript model ({_first_line(error)})") from None


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch checkpoint (weights_only=True, never pickle).

    A checkpoint that nests its weights under 'state_dict' or 'model' is unwrapped.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise many types for a bad file
        raise InputError(f"{path}: cannot read weights ({type(error).__name__}: {error})".splitlines()[0]) from None
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{path}: expected a mapping of tensor names to tensors")
    return dict(loaded)


def _describe(keys: Iterable[str], limit: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_matching_state_dict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: Path,
    encoder_name: str,
    ignored_prefixes: tuple[str, ...] = (),
) -> None:
    """Load `state_dict` into `module`, requiring every parameter to be present with its shape.

    Keys starting with `ignored_prefixes` (heads a truncated model drops) are skipped.
    Raises ModelMismatchError naming the file and the first offending keys.
    """
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    expected = module.state_dict()
    relevant = {k: v for k, v in state_dict.items() if not k.startswith(ignored_prefixes)}
    missing = [k for k in expected if k not in relevant and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in relevant if k not in expected]
    wrong_shape = [
        f"{k} {tuple(relevant[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in relevant and relevant[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if wrong_shape:
            problems.append(f"wrong shapes: {_describe(wrong_shape)}")
        if missing:
            problems.append(f"missing: {_describe(missing)}")
        if unexpected:
            problems.append(f"unexpected: {_describe(unexpected)}")
        raise ModelMismatchError(f"{path}: weights do not fit '{encoder_name}' ({'; '.join(problems)})")
    module.load_state_dict(relevant, strict=False)


def check_output_dim(module: torch.nn.Module, spec: PatchEncoderSpec, path: Path) -> int:
    """Run one blank patch through `module`; return its output dimension.

    Raises ModelMismatchError when it differs from `spec.output_dim` (if declared) or the
    model cannot take a (1, 3, input_size, input_size) batch.
    """
    probe = torch.zeros(1, 3, spec.input_size, spec.input_size)
    try:
        with torch.inference_mode():
            output = module.eval()(probe)
    except Exception as error:  # any failure here means the file does not fit the declared input
        raise ModelMismatchError(
            f"{path}: model fails on a (1, 3, {spec.input_size}, {spec.input_size}) input ({_first_line(error)})"
        ) from None
    if isinstance(output, (tuple, list)):
        output = output[0]
    output = output.flatten(1) if output.ndim > 2 else output
    dim = int(output.shape[-1])
    if spec.output_dim is not None and dim != spec.output_dim:
        raise ModelMismatchError(f"{path}: model outputs {dim} features, '{spec.name}' expects {spec.output_dim}")
    return dim


def read_sidecar(weights: Path) -> dict:
    """Optional `<weights>.json` declaring input_size / mean / std / output_dim."""
    sidecar = weights.with_name(weights.name + ".json")
    if not sidecar.is_file():
        return {}
    try:
        declared = json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{sidecar}: not valid JSON ({error})") from None
    allowed = {"input_size", "mean", "std", "output_dim"}
    unknown = set(declared) - allowed
    if unknown:
        raise InputError(f"{sidecar}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return declared


def build_from_torchscript(spec: PatchEncoderSpec, weights: Path) -> tuple[PatchEncoderSpec, torch.nn.Module]:
    """Load a TorchScript file for `spec` and fix its output dimension by a dry run."""
    module = load_torchscript(weights)
    dim = check_output_dim(module, spec, weights)
    return replace(spec, output_dim=dim), module


@register_patch_encoder(
    "torchscript",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output_dim=None,
    description=(
        "your own TorchScript model (--weights FILE); input size, mean/std and output dim from an "
        "optional FILE.json sidecar (defaults: 224 px, ImageNet mean/std, dim from a dry run)"
    ),
    needs_weights=True,
)
def build_generic_torchscript(spec: PatchEncoderSpec, weights: Path) -> tuple[PatchEncoderSpec, torch.nn.Module]:
    declared = read_sidecar(weights)
    spec = replace(
        spec,
        name=f"torchscript[{weights.name}]",
        input_size=int(declared.get("input_size", spec.input_size)),
        mean=tuple(declared.get("mean", spec.mean)),
        std=tuple(declared.get("std", spec.std)),
        output_dim=declared.get("output_dim"),
    )
    return build_from_torchscript(spec, weights)
