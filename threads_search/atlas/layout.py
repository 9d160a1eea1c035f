"""Where everything lives inside an atlas folder: the one place that names its paths.

    ATLAS/
      atlas.duckdb            the tables (schema.py)
      features/               copied patch-feature files (`ingest slides --copy`)
      profiles/               expression / mutation matrices as Parquet, one file per ingest batch
      models/<model_id>/      config.json + model.safetensors
      embeddings/<model_id>/  <modality>-<part>.parquet
      indexes/                <model_id>-<modality>-<build>.faiss + .json sidecar; <model_id>-<modality>-shard<s>-<build>.*
                              (index --shards); patches-<build>.* (region search)

Paths stored in the tables are relative to the atlas root (except referenced feature files,
which are absolute). Ids are turned into file names with `safe_file_name`, never used as paths.
"""

from __future__ import annotations

import re
import uuid

DATABASE_NAME = "atlas.duckdb"
FOLDERS = ("features", "profiles", "models", "embeddings", "indexes")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


def safe_file_name(name: str) -> str:
    """A file-system-safe rendering of an id (ids may contain '/', '..' or spaces)."""
    cleaned = _UNSAFE.sub("_", name).lstrip(".")
    return cleaned or "_"


def _checked_model_id(model_id: str) -> str:
    if not _HEX.match(model_id):
        raise ValueError(f"not a model id: {model_id!r}")
    return model_id


def copied_features(slide_id: str, fingerprint: str, suffix: str) -> str:
    """A copied feature file; the fingerprint in the name keeps a replaced copy from overwriting the old."""
    return f"features/{safe_file_name(slide_id)}-{safe_file_name(fingerprint)[:12]}{suffix}"


def profile_batch(batch_id: str) -> str:
    return f"profiles/{safe_file_name(batch_id)}.parquet"


def model_folder(model_id: str) -> str:
    return f"models/{_checked_model_id(model_id)}"


def new_embedding_part(model_id: str, modality: str) -> str:
    return f"embeddings/{_checked_model_id(model_id)}/{modality}-{uuid.uuid4().hex[:12]}.parquet"


def new_index_stem(model_id: str, modality: str) -> str:
    """A fresh name for index files, without extension (`<stem>.faiss`, `<stem>.json`).

    Each build or change gets new files, so the recorded index is never overwritten in place.
    """
    return f"indexes/{_checked_model_id(model_id)}-{modality}-{uuid.uuid4().hex[:8]}"


def new_index_shard_stem(model_id: str, modality: str, shard: int) -> str:
    """A fresh name for one shard's index files (`index --shards N`), named per build like `new_index_stem`."""
    return f"indexes/{_checked_model_id(model_id)}-{modality}-shard{int(shard):04d}-{uuid.uuid4().hex[:8]}"


PATCH_INDEX_SUFFIXES = (".faiss", ".ids.npy", ".json", ".slides.parquet")


def new_patch_index_stem() -> str:
    """Fresh names for the files of a patch index build (`<stem>` + PATCH_INDEX_SUFFIXES)."""
    return f"indexes/patches-{uuid.uuid4().hex[:8]}"
