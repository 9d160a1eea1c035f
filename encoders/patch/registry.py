"""Patch-encoder registry: one spec per name, found by `create_patch_encoder(name)`.

An entry is a builder function decorated with `@register_patch_encoder(name, ...)`; the
decorator's arguments make its `PatchEncoderSpec` (input size, normalisation, output
dimension, whether it needs a local weights file, which optional package it needs). A
builder takes `(spec, weights_path)` and returns `(spec, torch.nn.Module)`; it may refine the
spec (a TorchScript sidecar declares its own input size). Families of names that share a
builder, such as `timm:<architecture>`, register a prefix with `register_patch_encoder_family`.

Nothing here downloads anything: encoders that need weights take them from a local file.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from threads_search.errors import InputError

if TYPE_CHECKING:
    from threads_search.encoders.patch.runtime import PatchEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Modules whose import registers entries; imported on first lookup so that importing the
# registry stays cheap and no entry is defined in two places.
_ENTRY_MODULES = (
    "threads_search.encoders.patch.builtin",
    "threads_search.encoders.patch.local_weights",
    "threads_search.encoders.patch.resnet_trunc",
    "threads_search.encoders.patch.pathology_models",
    "threads_search.encoders.patch.timm_adapter",
)


@dataclass(frozen=True)
class PatchEncoderSpec:
    """What the extraction job needs to know about a patch encoder.

    `input_size` is the square side (px) patches are resized to; `mean` / `std` normalise
    RGB scaled to [0, 1]; `output_dim` is the feature length (None when only the weights
    file tells, e.g. a generic TorchScript model).
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_dim: int | None
    description: str
    needs_weights: bool = False
    requires_package: str | None = None
    aliases: tuple[str, ...] = ()


Builder = Callable[[PatchEncoderSpec, "Path | None"], tuple[PatchEncoderSpec, object]]
FamilyBuilder = Callable[[str, "Path | None"], tuple[PatchEncoderSpec, object]]

_SPECS: dict[str, PatchEncoderSpec] = {}
_BUILDERS: dict[str, Builder] = {}
_ALIASES: dict[str, str] = {}
_FAMILIES: dict[str, tuple[FamilyBuilder, str]] = {}
_entries_loaded = False


def register_patch_encoder(
    name: str,
    *,
    input_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    output_dim: int | None,
    description: str,
    needs_weights: bool = False,
    requires_package: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(spec, weights) -> (spec, module)` under `name`."""
    spec = PatchEncoderSpec(
        name=name,
        input_size=input_size,
        mean=tuple(mean),
        std=tuple(std),
        output_dim=output_dim,
        description=description,
        needs_weights=needs_weights,
        requires_package=requires_package,
        aliases=tuple(aliases),
    )

    def decorate(builder: Builder) -> Builder:
        for key in (name, *aliases):
            if key in _SPECS or key in _ALIASES:
                raise ValueError(f"patch encoder name '{key}' is registered twice")
        _SPECS[name] = spec
        _BUILDERS[name] = builder
        _ALIASES.update({alias: name for alias in aliases})
        return builder

    return decorate


def register_patch_encoder_family(prefix: str, description: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Decorator registering `builder(suffix, weights)` for every name `'<prefix>:<suffix>'`."""

    def decorate(builder: FamilyBuilder) -> FamilyBuilder:
        if prefix in _FAMILIES:
            raise ValueError(f"patch encoder family '{prefix}:' is registered twice")
        _FAMILIES[prefix] = (builder, description)
        return builder

    return decorate


def _load_entries() -> None:
    global _entries_loaded
    if not _entries_loaded:
        for module in _ENTRY_MODULES:
            importlib.import_module(module)
        from threads_search.encoders.patch.names import registry_aliases

        # The spellings of registered encoders come from the one alias table (names.py).
        _ALIASES.update({alias: name for alias, name in registry_aliases().items()
                         if name in _SPECS and alias not in _SPECS})
        _entries_loaded = True


def _unknown_name_error(name: str) -> InputError:
    known = sorted({*_SPECS, *_ALIASES})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    families = "".join(f", {prefix}:<name>" for prefix in sorted(_FAMILIES))
    return InputError(f"unknown patch encoder '{name}'; {hint}known: {', '.join(sorted(_SPECS))}{families}")


def get_patch_encoder_spec(name: str) -> PatchEncoderSpec:
    """Spec of a registered name or alias; InputError with close matches otherwise."""
    from threads_search.encoders.patch.names import canonical_patch_encoder

    _load_entries()
    canonical = _ALIASES.get(name, name)
    if canonical not in _SPECS:
        canonical = canonical_patch_encoder(name) or name
    if canonical not in _SPECS:
        raise _unknown_name_error(name)
    return _SPECS[canonical]


def list_patch_encoders(filter: str | None = None) -> list[PatchEncoderSpec]:
    """Specs of all registered names (not aliases), sorted; `filter` keeps names containing it."""
    _load_entries()
    return [_SPECS[name] for name in sorted(_SPECS) if filter is None or filter in name]


def list_patch_encoder_families() -> dict[str, str]:
    """Registered name prefixes (e.g. 'timm') and their descriptions."""
    _load_entries()
    return {prefix: description for prefix, (_, description) in sorted(_FAMILIES.items())}


def create_patch_encoder(name: str, weights: Path | str | None = None, device: str = "cpu") -> PatchEncoder:
    """Build the patch encoder `name` (a registered name, alias or `'<family>:<suffix>'`).

    `weights` is a local file for entries that need one (TorchScript, safetensors or a
    torch state dict). Raises InputError for unknown names or a missing weights file,
    ModelMismatchError when the file does not fit the architecture.
    """
    from threads_search.encoders.patch.runtime import PatchEncoder

    _load_entries()
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise InputError(f"{weights_path}: no such weights file")
    prefix, separator, suffix = name.partition(":")
    if separator and prefix in _FAMILIES:
        builder, _ = _FAMILIES[prefix]
        spec, module = builder(suffix, weights_path)
        return PatchEncoder(spec, module, device=device)
    spec = get_patch_encoder_spec(name)
    if spec.needs_weights and weights_path is None:
        raise InputError(
            f"patch encoder '{spec.name}' needs a local weights file: pass --weights FILE (nothing is downloaded)"
        )
    spec, module = _BUILDERS[spec.name](spec, weights_path)
    return PatchEncoder(spec, module, device=device)
