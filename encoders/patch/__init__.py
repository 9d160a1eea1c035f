"""Patch encoders for `extract`: a registry of names, each a spec plus a builder.

    from threads_search.encoders.patch import create_patch_encoder, list_patch_encoders
    encoder = create_patch_encoder("builtin_stain_texture")
    features = encoder.encode(patches)  # (b, h, w, 3) uint8 -> (b, 384) float32

Importing this package is cheap; torch and the entries load on first lookup.
"""

from threads_search.encoders.patch.registry import (
    PatchEncoderSpec,
    create_patch_encoder,
    get_patch_encoder_spec,
    list_patch_encoder_families,
    list_patch_encoders,
    register_patch_encoder,
    register_patch_encoder_family,
)

__all__ = [
    "PatchEncoderSpec",
    "create_patch_encoder",
    "get_patch_encoder_spec",
    "list_patch_encoder_families",
    "list_patch_encoders",
    "register_patch_encoder",
    "register_patch_encoder_family",
]
