"""Patch-encoder names as TRIDENT, CLAM, Patho-Bench, Hugging Face and this project spell them.

One table: each canonical name (this project's registry name where it has one, else TRIDENT's)
with the other spellings of the same weights. Feature files, atlases and models compare
encoders through `canonical_patch_encoder`, so `resnet50` (TRIDENT) and `resnet50_trunc`
(CLAM, here) are one encoder, as are `uni_v2` / `uni2_h` and `conch_v15` / `conch_v1_5`.
Spellings are compared case-insensitively with '-', '.' and ' ' read as '_'
(`MahmoodLab/UNI2-h` -> `mahmoodlab/uni2_h`).
"""

from __future__ import annotations

PATCH_ENCODER_ALIASES: dict[str, tuple[str, ...]] = {
    "builtin_stain_texture": ("builtin",),
    "resnet50_trunc": ("resnet50", "resnet50trunc"),
    "conch_v1": ("conch", "mahmoodlab/conch"),
    "conch_v15": ("conch_v1_5", "conchv1_5", "conchv15", "mahmoodlab/conchv1_5"),
    "uni_v1": ("uni", "mahmoodlab/uni"),
    "uni2_h": ("uni_v2", "uni2h", "mahmoodlab/uni2_h"),
    "gigapath": ("prov_gigapath", "prov_gigapath/prov_gigapath"),
    "hoptimus0": ("h_optimus_0", "bioptimus/h_optimus_0"),
    "hoptimus1": ("h_optimus_1", "bioptimus/h_optimus_1"),
    "virchow": ("paige_ai/virchow",),
    "virchow2": ("paige_ai/virchow2",),
    "phikon": ("owkin/phikon",),
    "phikon_v2": ("phikonv2", "owkin/phikon_v2"),
}

_CANONICAL_OF = {alias: name for name, aliases in PATCH_ENCODER_ALIASES.items() for alias in aliases}


def _spelling(name: str) -> str:
    key = name.strip().lower()
    for separator in "-. ":
        key = key.replace(separator, "_")
    return key


def canonical_patch_encoder(name: str | None) -> str | None:
    """The canonical name of a patch encoder spelling; None / '' stay None. A family name such as
    `timm:vit_base_patch16_224.augreg_in21k` is kept as written (its dots are significant); other
    unknown names are returned in the normalised spelling."""
    if name is None or not str(name).strip():
        return None
    name = str(name).strip()
    if ":" in name:
        return name
    key = _spelling(name)
    return _CANONICAL_OF.get(key, key)


def same_patch_encoder(first: str | None, second: str | None) -> bool:
    """Whether two spellings name the same encoder (both must be given)."""
    return bool(first) and bool(second) and canonical_patch_encoder(first) == canonical_patch_encoder(second)


def registry_aliases() -> dict[str, str]:
    """alias -> canonical name, as the patch-encoder registry resolves them."""
    return dict(_CANONICAL_OF)
