"""The training config (SPEC §6): every setting that decides a training run, in one typed record.

Each field carries its unit, bounds, CLI flag and help in its metadata, so the CLI (`train
--learning-rate ...`), the TOML file (`train --config FILE.toml`), the model's stored record
and `info` all read one definition. `check_config` validates every field in one place and
raises a one-line InputError naming the field.

    >>> config = TrainingConfig.from_toml("recipe.toml")
    >>> print(config.to_toml())
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from threads_search.errors import InputError

DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("auto", "cosine", "wsd")


def setting(default: Any, help: str, *, unit: str = "", low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False, flag: str | None = None, none: str | None = None,
            choices: tuple[str, ...] = ()) -> Any:
    """A config field: `low`/`high` bound it (`open_*`: the bound itself is excluded); `none`
    is the word that stands for None in TOML and on the command line (e.g. 'all')."""
    metadata = {"help": help, "unit": unit, "low": low, "high": high, "open_low": open_low, "open_high": open_high,
                "flag": flag, "none": none, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides a training run (stored beside the model; `info` shows it).

    The defaults differ from the demo's recipe (demo/recipe.toml: 2e-3 for 8 epochs) in three
    settings: learning rate 5e-3, up to 24 epochs, stop after 4 without a validation gain.
    On four generated cohorts (benchmarks/README.md, "Training on four cohorts") the demo's
    fixed 8 epochs stopped the hard cohort while its validation mAP was still rising (0.061 at
    epoch 8, 0.12-0.13 by epoch 12-19), and 5e-3 gave the higher validation figure on every
    cohort; the longer schedule costs little where validation plateaus early (the demo's),
    since training stops there. Issue 10 measured the first CLI defaults (30 epochs of 2048
    patches at 2e-4) at held-out slide -> slide mAP@5 0.585 on the demo cohort.
    """

    recipe: str = setting("threads-abmil", "Model recipe (threads-abmil: THREADS-sized, for a GPU; "
                          "threads-abmil-cpu: CPU-sized). The CLI picks by device when neither flag nor file sets it.")
    model: Mapping[str, Any] = setting({}, "Overrides of the recipe's model config (KEY=VALUE, TOML values).",
                                       flag="--model-option")
    epochs: int = setting(24, "Maximum epochs (one epoch = one pass over the training patients).",
                          unit="epochs", low=1, high=10_000)
    batch_size: int = setting(32, "Patients per optimiser step (the contrastive batch).", unit="patients",
                              low=2, high=100_000, flag="--patients-per-step")
    patches_per_slide: int = setting(512, "Patches sampled per slide per step (without replacement).",
                                     unit="patches", low=1, high=10_000_000)
    learning_rate: float | None = setting(5e-3, "Peak AdamW learning rate (after warm-up, then cosine decay); "
                                          "'auto': a short seeded sweep on the validation split picks it.",
                                          low=0.0, high=1.0, open_low=True, none="auto")
    schedule: str = setting("auto", "Learning-rate schedule after the warm-up. cosine: decay over the planned "
                            "epochs (early stopping keeps the best epoch). auto: cosine over 8 epochs and cosine over "
                            "--epochs, the longer kept only when it beats the shorter on the validation split by more "
                            "than one standard error. wsd (warm-up, stable, decay): the peak rate until validation "
                            "stops improving, then the best epoch's weights decay linearly to 0 over --decay-epochs. "
                            "(train --slide-encoder always uses cosine.)", choices=SCHEDULES)
    decay_epochs: int | None = setting(None, "wsd: epochs of the final linear decay ('auto': a quarter of the "
                                       "epochs up to the best one, at least 2).", unit="epochs", low=1, high=10_000,
                                       none="auto")
    batch_by: str | None = setting(None, "Metadata column (e.g. site) whose value all patients of a step share, so "
                                   "that negatives come from the same site and the site cannot tell pairs apart "
                                   "('off': batches mix everything).", none="off")
    weight_decay: float = setting(0.01, "AdamW weight decay on weight matrices.", low=0.0, high=10.0)
    warmup_fraction: float = setting(0.1, "Linear warm-up length.", unit="fraction of all planned steps",
                                     low=0.0, high=1.0, open_high=True, flag="--warmup")
    max_logit_scale: float = setting(100.0, "Upper clamp of the learnable logit scale (1 / minimum temperature).",
                                     low=1.0, high=1e4, open_low=True)
    grad_clip_norm: float | None = setting(1.0, "Gradient clipping by global L2 norm ('off': none).",
                                           low=0.0, high=1e6, open_low=True, none="off")
    val_fraction: float = setting(0.2, "Share of paired patients held out for validation and model selection "
                                  "(0: none, the last epoch is kept).", unit="fraction of patients",
                                  low=0.0, high=1.0, open_high=True)
    patience: int = setting(4, "Epochs without a validation gain before training stops.", unit="epochs",
                            low=1, high=10_000)
    eval_k: int = setting(5, "K of the validation mAP@K that selects the best epoch.", unit="items", low=1, high=10_000)
    n_top_genes: int | None = setting(2000, "Most variable training genes kept for expression ('all': every gene).",
                                      unit="genes", low=1, high=10_000_000, none="all")
    max_mutation_genes: int | None = setting(None, "Most frequently mutated genes kept ('all': every gene).",
                                             unit="genes", low=1, high=10_000_000, none="all")
    seed: int = setting(0, "Seed of the split, the sampling and the initial weights.", low=0, high=2**32 - 1)
    device: str = setting("auto", "auto | cpu | cuda (bf16 autocast on CUDA).", choices=DEVICES)
    threads: int | None = setting(1, "Intra-op torch threads while training ('torch': leave torch's own "
                                  "setting, one per core). One by default: the CPU recipe's matmuls are small, and "
                                  "on a shared machine a second thread made them wait (benchmarks/README.md).",
                                  unit="threads", low=1, high=4096, none="torch")

    def check(self) -> None:
        check_config(self)

    def to_toml(self, comments: bool = True) -> str:
        """This config as flat TOML, one `name = value` per field (with its help as a comment)."""
        lines = ["# threads-search training config: threads-search train ATLAS --config FILE.toml"] if comments else []
        for spec in fields(self):
            if comments:
                lines.append(f"# {describe(spec.name)}")
            lines.append(f"{spec.name} = {_toml_value(getattr(self, spec.name), spec.metadata['none'])}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainingConfig":
        """Read a flat TOML file (missing keys keep their defaults); one-line InputError on a bad file."""
        return cls.from_values(read_toml_values(path), source=str(path))

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "") -> "TrainingConfig":
        """A checked config from {field: value} (TOML types; the `none` words stand for None)."""
        config = replace(cls(), **{name: parse_value(name, value, source) for name, value in values.items()})
        check_config(config, source)
        return config


FIELDS = {spec.name: spec for spec in fields(TrainingConfig)}


def flag_of(name: str) -> str:
    """The command-line flag of a field: its metadata's, else --name-with-dashes."""
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


def describe(name: str) -> str:
    """Help text of a field with its unit, bounds and None word, e.g. for --help and TOML comments."""
    meta = FIELDS[name].metadata
    parts = [meta["unit"]] if meta["unit"] else []
    if meta["low"] is not None:
        parts.append(f"range {_interval(meta)}")
    if meta["choices"]:
        parts.append("one of " + ", ".join(meta["choices"]))
    if meta["none"]:
        parts.append(f"or '{meta['none']}'")
    return meta["help"] + (f" ({', '.join(parts)})" if parts else "")


def read_toml_values(path: str | Path) -> dict[str, Any]:
    """The {field: value} of a flat TOML config file; unknown keys and bad TOML are one-line errors."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"{path}: cannot read the training config ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a valid TOML file ({error})") from None
    unknown = [key for key in values if key not in FIELDS]
    if unknown:
        raise InputError(f"{path}: unknown training setting '{unknown[0]}' (known: {', '.join(FIELDS)})")
    return values


def layered_config(path: str | Path | None, given: Mapping[str, Any],
                   default_recipe: Callable[[str], str] | None = None) -> TrainingConfig:
    """The effective config: a setting given (not None) > the file at `path` > the default.

    `given` holds command-line values by field name (text for the None-able fields, the model
    overrides as KEY=VALUE strings, merged over the file's). `default_recipe(device)` names the
    recipe when neither sets one. The file is checked on its own first, so that an error names it.
    """
    values = dict(read_toml_values(path)) if path is not None else {}
    if values:
        TrainingConfig.from_values(values, source=str(path))
    flags = {name: value for name, value in given.items() if value is not None and value != [] and value != ()}
    if "model" in flags:
        flags["model"] = {**dict(values.get("model", {})), **parse_model_options(list(flags["model"]))}
    merged = {**values, **flags}
    if "recipe" not in merged and default_recipe is not None:
        merged["recipe"] = default_recipe(str(merged.get("device", FIELDS["device"].default)))
    return TrainingConfig.from_values(merged)


def parse_value(name: str, value: Any, source: str = "") -> Any:
    """A TOML or command-line value as the field's Python value: the field's `none` word -> None,
    an int where a float is expected -> float, text of a number -> the number (CLI)."""
    meta, kind = FIELDS[name].metadata, _kind(name)
    if meta["none"] is not None and value == meta["none"]:
        return None
    if name == "model":
        return dict(value) if isinstance(value, Mapping) else value
    if isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            _fail(name, source, f"expects {'an integer' if kind is int else 'a number'}"
                  + (f" or '{meta['none']}'" if meta["none"] else ""), value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_config(config: TrainingConfig, source: str = "") -> None:
    """Every field's type, bounds and choices, and that the recipe is trainable; raises a
    one-line InputError naming the field (and `source`, the file it came from)."""
    for name, spec in FIELDS.items():
        value, meta, kind = getattr(config, name), spec.metadata, _kind(name)
        if value is None and meta["none"] is not None:
            continue
        if kind is dict:
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                _fail(name, source, "expects a table of KEY = value", value)
            continue
        if not _is_kind(value, kind):
            _fail(name, source, f"expects {'an integer' if kind is int else 'a number' if kind is float else 'text'}", value)
        if meta["choices"] and value not in meta["choices"]:
            _fail(name, source, f"must be one of {', '.join(meta['choices'])}", value)
        if meta["low"] is not None:
            low_ok = value > meta["low"] if meta["open_low"] else value >= meta["low"]
            high_ok = value < meta["high"] if meta["open_high"] else value <= meta["high"]
            if not (low_ok and high_ok and math.isfinite(value)):
                _fail(name, source, f"must be in {_interval(meta)}", value)
    from threads_search.encoders.registry import get_model_spec

    if not get_model_spec(config.recipe).trainable:
        _fail("recipe", source, f"is not trainable: a baseline or published encoder needs no training (embed it with "
              f"`threads-search embed ATLAS --model {config.recipe}`)", config.recipe)


def parse_model_options(pairs: list[str]) -> dict[str, Any]:
    """['hidden_dim=256', 'patch_encoder=uni'] -> {'hidden_dim': 256, 'patch_encoder': 'uni'} (TOML values,
    bare words as text)."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise InputError(f"{flag_of('model')} {pair!r}: expected KEY=VALUE, e.g. hidden_dim=256")
        try:
            options[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = text.strip()
    return options


def _interval(meta: Mapping[str, Any]) -> str:
    low, high = (f"{v:g}" if isinstance(v, float) else str(v) for v in (meta["low"], meta["high"]))
    return f"{'(' if meta['open_low'] else '['}{low}, {high}{')' if meta['open_high'] else ']'}"


def _kind(name: str) -> type:
    annotation = str(FIELDS[name].type)
    return {"str": str, "int": int, "float": float}.get(annotation.split(" |")[0], dict)


def _is_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _fail(name: str, source: str, why: str, value: Any) -> None:
    where = f"{source}: " if source else ""
    raise InputError(f"{where}training setting {name} ({flag_of(name)}) {why}, got {value!r}")


def _toml_value(value: Any, none_word: str | None) -> str:
    if value is None:
        return json.dumps(none_word)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v, None)}" for k, v in value.items()) + " }" if value else "{}"
    raise InputError(f"cannot write {value!r} to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
