"""Slide models that need no training, registered in an atlas on first use.

`meanpool` (the mean of a slide's patch features, under a fixed seeded orthogonal map) needs
neither pairs nor profiles, so `embed --model meanpool` makes any atlas of patch features
searchable. Its id is the content hash of its config and projection, so the same atlas
dimension and patch encoder give the same model id everywhere.
"""

from __future__ import annotations

from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import list_models, store_model
from threads_search.errors import AtlasError

BUILTIN_SLIDE_MODELS = ("meanpool",)


def builtin_meanpool(atlas: Atlas):
    """A fresh (profile-less) mean-pooling model for the atlas's patch features."""
    from threads_search.encoders.patch.names import canonical_patch_encoder
    from threads_search.encoders.registry import create_model

    feature_dim = atlas.meta("feature_dim")
    if not feature_dim:
        raise AtlasError(f"{atlas.root}: no patch features ingested, so there is nothing to mean-pool; "
                         f"run `threads-search ingest slides` first (slide embeddings come in with "
                         f"`ingest slide-embeddings` and need no embed step)")
    return create_model("meanpool", in_dim=int(feature_dim),
                        patch_encoder=canonical_patch_encoder(atlas.meta("patch_encoder")) or "")


def ensure_builtin_model(atlas: Atlas, name: str) -> tuple[str, list[str]]:
    """The stored model `name` means (its newest), registering the built-in one when absent."""
    stored = [model_id for model_id, recipe in list_models(atlas) if recipe == name]
    if stored:
        return stored[0], []
    model_id = store_model(atlas, builtin_meanpool(atlas), {"baseline": True, "builtin": True, "frozen": True})
    return model_id, [f"registered the built-in {name} model {model_id} (no training, no profiles needed)"]


def refuse_training_without_profiles(atlas: Atlas) -> None:
    """`train` pairs slides with profiles; an atlas of slides alone is searched without training."""
    from threads_search.atlas.items import count_items
    from threads_search.errors import TrainingError

    if atlas.meta("feature_dim") and not count_items(atlas, "expression") and not count_items(atlas, "mutations"):
        raise TrainingError(f"{atlas.root}: no expression or mutation profiles to pair with the slides; a slides-only "
                            f"atlas needs no training: `threads-search embed {atlas.root} --model meanpool`, then index")
