"""Typed command-line options shared by the commands: choice enums and flags.

Each choice list comes from the module that owns the names (modalities from the atlas schema,
index kinds from the indexer), so a typo exits 2 listing the real choices.
"""

from __future__ import annotations

import enum

import typer

from threads_search.atlas.schema import MODALITIES, PROFILE_MODALITIES
from threads_search.indexer.kind_names import KIND_NAMES, PATCH_KIND_NAMES


def _choices(name: str, values) -> type[enum.Enum]:
    return enum.Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


Modality = _choices("Modality", MODALITIES)
ProfileModality = _choices("ProfileModality", PROFILE_MODALITIES)
# One --kind for both levels; `index` refuses a kind its level does not have (ivfsq: patches only, hnsw: slides only).
IndexKind = _choices("IndexKind", ("auto", *dict.fromkeys(KIND_NAMES + PATCH_KIND_NAMES)))
OutputFormat = _choices("OutputFormat", ("table", "json", "csv"))
Scale = _choices("Scale", ("auto", "counts", "tpm", "log"))
# One device vocabulary everywhere; `cuda` is accepted as a synonym of `gpu`.
Device = _choices("Device", ("auto", "cpu", "gpu", "cuda"))


def device_name(device) -> str:
    """'auto' | 'cpu' | 'gpu' from a Device choice (cuda -> gpu)."""
    value = getattr(device, "value", device)
    return "gpu" if value == "cuda" else value


def torch_device_name(device) -> str:
    """'auto' | 'cpu' | 'cuda' for torch from a Device choice (gpu -> cuda)."""
    value = device_name(device)
    return "cuda" if value == "gpu" else value


def choice(default, *names: str, help: str) -> typer.models.OptionInfo:
    """A choice option: case-insensitive, the enum's values listed in --help."""
    return typer.Option(default, *names, help=help, case_sensitive=False)


def flag(*names: str, help: str) -> typer.models.OptionInfo:
    """An on/off option shown as a bare flag in --help."""
    return typer.Option(False, *names, help=help, metavar="")


QUIET = flag("--quiet", "-q", help="No progress bar or narration.")


def value(option) -> str | None:
    """The plain string of a choice (or None)."""
    return None if option is None else getattr(option, "value", option)
