"""The training config (threads_search/training/config.py): one typed record with bounds, a flat
TOML file that round-trips through a trained model and `info`, and every field a `train` flag."""

from __future__ import annotations

import tomllib
from dataclasses import fields, replace

import pytest

from threads_search.errors import InputError
from threads_search.training.config import TrainingConfig, flag_of


def test_toml_round_trip_keeps_every_field_including_none_words_and_model_overrides(tmp_path):
    config = TrainingConfig(recipe="threads-abmil-cpu", model={"hidden_dim": 64, "patch_encoder": "conch v1.5"},
                            epochs=3, learning_rate=3e-3, grad_clip_norm=None, n_top_genes=None, max_mutation_genes=40,
                            seed=7, device="cpu")
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    assert TrainingConfig.from_toml(path) == config
    assert tomllib.loads(config.to_toml())["grad_clip_norm"] == "off"
    assert tomllib.loads(config.to_toml())["n_top_genes"] == "all"


def test_a_partial_file_keeps_the_defaults_and_an_int_counts_as_a_float(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epochs = 4\nmax_logit_scale = 50\n")
    config = TrainingConfig.from_toml(path)
    assert config == replace(TrainingConfig(), epochs=4, max_logit_scale=50.0)
    assert isinstance(config.max_logit_scale, float)


@pytest.mark.parametrize("text, message", [
    ("epochs = 0", "run.toml: training setting epochs (--epochs) must be in [1, 10000], got 0"),
    ("learning_rate = -0.1", "training setting learning_rate (--learning-rate) must be in (0, 1], got -0.1"),
    ("warmup_fraction = 1.0", "training setting warmup_fraction (--warmup) must be in [0, 1), got 1.0"),
    ("batch_size = 1", "training setting batch_size (--patients-per-step) must be in [2, 100000], got 1"),
    ("epochs = 2.5", "training setting epochs (--epochs) expects an integer, got 2.5"),
    ("n_top_genes = 'many'", "training setting n_top_genes (--n-top-genes) expects an integer or 'all', got 'many'"),
    ("device = 'gpu'", "training setting device (--device) must be one of auto, cpu, cuda, got 'gpu'"),
    ("recipe = 'meanpool'", "training setting recipe (--recipe) is not trainable"),
    ("learning_rat = 0.1", "run.toml: unknown training setting 'learning_rat' (known: recipe, model, epochs"),
    ("epochs = [", "run.toml: not a valid TOML file"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_setting(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text + "\n")
    with pytest.raises(InputError) as raised:
        TrainingConfig.from_toml(path)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_bounds_are_checked_in_the_python_api_too():
    with pytest.raises(InputError, match=r"eval_k \(--eval-k\) must be in \[1, "):
        TrainingConfig(eval_k=0).check()
    TrainingConfig().check()


def test_every_field_has_help_and_a_unique_flag():
    specs = fields(TrainingConfig)
    assert all(spec.metadata["help"] for spec in specs)
    assert len({flag_of(spec.name) for spec in specs}) == len(specs)
