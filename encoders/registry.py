"""Model registry: one place per model name (the "recipe" a checkpoint records).

A registered class provides `create(recipe, **config)` (a fresh model),
`from_export(recipe, config, tensors)` (a model rebuilt from a checkpoint) and `export()`.
The built-in models register themselves when their module is imported; the registry
imports those modules lazily, so `import threads_search.encoders.registry` stays cheap.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from threads_search.errors import InputError

_BUILTIN_MODULES = ("threads_search.encoders.model", "threads_search.encoders.baselines", "threads_search.encoders.published",
                    "threads_search.encoders.aligned", "threads_search.encoders.hf_slide",
                    "threads_search.encoders.precomputed")


@dataclass(frozen=True)
class ModelSpec:
    """What a model name stands for. `frozen`: an untrained reference or a published encoder,
    never picked as an atlas's default model when a trained one exists."""

    name: str
    cls: type
    trainable: bool
    description: str
    default_config: Mapping[str, Any] = field(default_factory=dict)
    frozen: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, trainable: bool, description: str, default_config: Mapping[str, Any] | None = None,
                   frozen: bool = False) -> Callable[[type], type]:
    """Class decorator: `@register_model("threads-abmil", trainable=True, description=...)`.

    Several names may register the same class with different default configs (variants).
    """

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name '{name}' is already registered by {_REGISTRY[name].cls.__qualname__}")
        _REGISTRY[name] = ModelSpec(name, cls, trainable, description, dict(default_config or {}), frozen)
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; unknown names raise InputError with close matches."""
    _load_builtins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"unknown model '{name}'; {hint}known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_models(filter: str | None = None, trainable: bool | None = None) -> list[str]:
    """Registered names, sorted; `filter` is a shell pattern ('threads-*')."""
    _load_builtins()
    names = sorted(_REGISTRY)
    if filter is not None:
        names = fnmatch.filter(names, filter)
    if trainable is not None:
        names = [n for n in names if _REGISTRY[n].trainable == trainable]
    return names


def create_model(name: str, **config: Any) -> Any:
    """A fresh model of recipe `name`; `config` overrides the spec's default config."""
    spec = get_model_spec(name)
    merged = {**spec.default_config, **config}
    return spec.cls.create(recipe=name, **merged)
