"""Checkpoints: `config.json` + `model.safetensors` in one directory, never pickle.

The model id is a content hash: the first 16 hex digits of sha256 over the canonical JSON of
the model's config (recipe included) followed by every tensor (name, dtype, shape, bytes) in
sorted name order. Same weights and config -> same id, on any machine; the package version
and the save time are recorded beside the hashed part and do not change the id.
"""

from __future__ import annotations

import hashlib
import json
import os

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from threads_search.encoders.registry import get_model_spec
from threads_search.atomic import atomic_directory
from threads_search.errors import InputError, ModelMismatchError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "threads-search-model/1"

def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

def _content_id(recipe: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(_canonical_json({"recipe": recipe, "config": config}))
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(_canonical_json([name, str(tensor.dtype), list(tensor.shape)]))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

def model_id(model: Any) -> str:
    """The content id of a model (as `save_model` would record it), without writing anything."""
    config, tensors = model.export()
    return _content_id(model.recipe, config, tensors)

def save_model(model: Any, directory: str | os.PathLike[str]) -> str:
    """Write `model` to `directory` (created; must not hold another model) and return its id.

    The files are written in a sibling temp directory that is renamed into place, so an
    interrupted save leaves nothing half-written. Saving the same model again is a no-op.
    """
    target = Path(directory)
    config, tensors = model.export()
    identifier = _content_id(model.recipe, config, tensors)
    if target.exists():
        existing = _read_config(target) if (target / CONFIG_FILE).exists() else None
        if existing is not None and existing.get("model_id") == identifier:
            return identifier
        raise ModelMismatchError(f"{target} already exists and does not hold model {identifier}; refusing to overwrite")
    from threads_search import __version__

    document = {"format": FORMAT, "model_id": identifier, "recipe": model.recipe, "config": config,
                "saved_with": f"threads-search {__version__}, torch {torch.__version__}"}
    with atomic_directory(target) as temp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temp / WEIGHTS_FILE),
                  metadata={"model_id": identifier, "format": FORMAT})
        (temp / CONFIG_FILE).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return identifier

def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found; a model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InputError(f"{path}: not a threads-search model config (format should be '{FORMAT}')")
    return document

def load_model(directory: str | os.PathLike[str], verify: bool = True) -> Any:
    """Rebuild a model saved by `save_model` (safetensors only; nothing is unpickled).

    With `verify`, the content hash is recomputed and a checkpoint whose files no longer
    match their recorded id is refused.
    """
    target = Path(directory)
    document = _read_config(target)
    weights_path = target / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except FileNotFoundError:
        raise InputError(f"{weights_path}: not found") from None
    except (SafetensorError, OSError) as error:
        raise InputError(f"{weights_path}: unreadable safetensors file ({error})") from None
    recipe = document["recipe"]
    spec = get_model_spec(recipe)
    if verify:
        actual = _content_id(recipe, document["config"], tensors)
        if actual != document["model_id"]:
            raise ModelMismatchError(f"{target}: content hash {actual} does not match the recorded model id "
                                     f"{document['model_id']} (files modified or corrupt)")
    try:
        model = spec.cls.from_export(recipe, document["config"], tensors)
    except (KeyError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelMismatchError(f"{target}: tensors do not fit recipe '{recipe}' ({first_line})") from None
    return model

def read_model_id(directory: str | os.PathLike[str]) -> str:
    """The id recorded in a checkpoint, without loading its tensors."""
    return _read_config(Path(directory))["model_id"]
