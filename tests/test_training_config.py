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


# --- the `train` command ---------------------------------------------------------------------

import re  # noqa: E402

import typer.main  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from threads_search.cli.app import app  # noqa: E402
from threads_search.training.config import FIELDS  # noqa: E402

runner = CliRunner()
# A value unlike the default for every field, as given on the command line -> as the config holds it.
CLI_VALUES = {
    "recipe": (["threads-abmil"], "threads-abmil"),
    "model": (["hidden_dim=64", "--model-option", "patch_encoder=uni"], {"hidden_dim": 64, "patch_encoder": "uni"}),
    "epochs": (["3"], 3), "batch_size": (["12"], 12), "patches_per_slide": (["64"], 64),
    "learning_rate": (["0.0007"], 7e-4), "weight_decay": (["0.05"], 0.05), "warmup_fraction": (["0.25"], 0.25),
    "max_logit_scale": (["50"], 50.0), "grad_clip_norm": (["off"], None), "val_fraction": (["0.3"], 0.3),
    "patience": (["2"], 2), "eval_k": (["10"], 10), "n_top_genes": (["all"], None), "max_mutation_genes": (["40"], 40),
    "seed": (["11"], 11), "device": (["cpu"], "cpu"), "threads": (["3"], 3),
    "schedule": (["wsd"], "wsd"), "decay_epochs": (["3"], 3), "batch_by": (["site"], "site"),
}


def printed_config(*args: str) -> TrainingConfig:
    result = runner.invoke(app, ["train", "unused-atlas", "--print-config", *args])
    assert result.exit_code == 0, result.output
    return TrainingConfig.from_values(tomllib.loads(result.stdout))


def test_every_config_field_is_a_train_flag():
    command = typer.main.get_command(app).commands["train"]
    flags = {opt for param in command.params for opt in param.opts}
    assert {flag_of(name) for name in FIELDS} <= flags
    assert set(CLI_VALUES) == set(FIELDS)  # a new field must be added here, and so tested below


@pytest.mark.parametrize("name", list(CLI_VALUES))
def test_each_flag_sets_its_field_and_nothing_else(name):
    args, expected = CLI_VALUES[name]
    config = printed_config(flag_of(name), *args, "--recipe", "threads-abmil-cpu") if name != "recipe" \
        else printed_config(flag_of(name), *args)
    assert getattr(config, name) == expected
    assert config == replace(TrainingConfig(), **{"recipe": "threads-abmil-cpu", name: expected})


def test_batch_size_is_an_alias_of_patients_per_step():
    assert printed_config("--batch-size", "7").batch_size == 7
    assert printed_config("--patients-per-step", "7").batch_size == 7


def test_a_flag_given_beats_the_file_which_beats_the_default(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('recipe = "threads-abmil"\nepochs = 3\nlearning_rate = 0.001\nmodel = { hidden_dim = 32 }\n')
    config = printed_config("--config", str(path), "--epochs", "5", "--model-option", "n_heads=2")
    assert config == replace(TrainingConfig(), recipe="threads-abmil", epochs=5, learning_rate=1e-3,
                             model={"hidden_dim": 32, "n_heads": 2})


def test_without_recipe_the_device_picks_it():
    assert printed_config("--device", "cpu").recipe == "threads-abmil-cpu"


def test_print_config_reads_back_to_the_same_config(tmp_path):
    result = runner.invoke(app, ["train", "unused", "--print-config", "--device", "cpu", "--learning-rate", "0.003"])
    path = tmp_path / "printed.toml"
    path.write_text(result.stdout)
    assert TrainingConfig.from_toml(path) == replace(TrainingConfig(), recipe="threads-abmil-cpu", device="cpu",
                                                     learning_rate=3e-3)
    assert result.stdout.startswith("# threads-search training config")


@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "0"], "error: training setting learning_rate (--learning-rate) must be in (0, 1], got 0.0"),
    (["--n-top-genes", "lots"], "error: training setting n_top_genes (--n-top-genes) expects an integer or 'all'"),
    (["--model-option", "hidden_dim"], "error: --model-option 'hidden_dim': expected KEY=VALUE"),
])
def test_a_bad_flag_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, ["train", "unused", "--print-config", *args])
    assert result.exit_code == 2
    assert result.output.strip().startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_bad_file_names_the_file_not_the_flags(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("epochs = 0\n")
    result = runner.invoke(app, ["train", "unused", "--print-config", "--config", str(path), "--epochs", "3"])
    assert result.exit_code == 2
    assert f"{path}: training setting epochs (--epochs) must be in [1, 10000], got 0" in result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A quick cohort trained from a config file through the CLI: (atlas, file config, train stdout)."""
    from conftest import ingest_quick_cohort

    root = tmp_path_factory.mktemp("trained")
    atlas, _ = ingest_quick_cohort(root)
    config = TrainingConfig(recipe="threads-abmil-cpu", epochs=2, batch_size=8, patches_per_slide=32,
                            learning_rate=2e-3, n_top_genes=300, seed=5, device="cpu")
    path = root / "run.toml"
    path.write_text(config.to_toml())
    result = runner.invoke(app, ["train", str(atlas), "--config", str(path), "--where", "cohort = 'train'",
                                 "--label", "subtype", "--quiet"])
    assert result.exit_code == 0, result.output
    return atlas, config, result.stdout


def test_the_config_round_trips_file_model_info_file(trained, tmp_path):
    atlas, config, stdout = trained
    model_id = re.search(r"trained model (\w+)", stdout).group(1)
    info = runner.invoke(app, ["info", str(atlas)])
    assert info.exit_code == 0, info.output
    lines = info.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"training config of model {model_id}"))
    assert "--where \"cohort = 'train'\"" in lines[start] and "--label 'subtype'" in lines[start]
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        block.append(line[2:])
    path = tmp_path / "from_info.toml"
    path.write_text("\n".join(block) + "\n")
    assert TrainingConfig.from_toml(path) == config
    as_json = runner.invoke(app, ["info", str(atlas), "--json"])
    import json

    stored = next(m for m in json.loads(as_json.stdout)["models"] if m["model_id"] == model_id)
    assert TrainingConfig.from_values(stored["training"]["config"]) == config


def test_the_validation_line_says_what_is_queried_and_what_counts_as_relevant(trained):
    _, _, stdout = trained
    assert re.search(r"^validation mAP@5 \(expression->slide, relevant = same subtype\): "
                     r"\d\.\d{3} before training -> \d\.\d{3}$", stdout, re.MULTILINE), stdout


def test_validation_line_without_a_label_is_same_patient_and_names_both_modalities():
    from threads_search.training.summary import validation_line
    from threads_search.training.trainer import EpochRecord

    history = [EpochRecord(1, 1.0, 0.2, 0.5, 1e-3, 0.07, 1.0), EpochRecord(2, 0.9, 0.35, 0.6, 1e-3, 0.07, 1.0)]
    assert validation_line(0.01, history, ["expression", "mutations"], None, 10) == (
        "validation mAP@10 (mean of expression->slide and mutations->slide, relevant = same patient): "
        "0.010 before training -> 0.350")
    assert validation_line(None, history, ["expression"], "subtype", 5) is None


def test_train_with_the_demo_recipe_file_reproduces_the_demo_model_id(tmp_path):
    """The quick demo trains from demo/recipe-quick.toml; `train --config` with that file on the
    demo's own atlas gives the same weights, hence the same content-hash model id."""
    import torch

    from threads_search.demo.run import LABEL, TRAIN_SQL, demo_recipe_path, run_demo

    report = run_demo(tmp_path / "demo", quick=True, seed=0)
    demo_model = report.payload["models"]["trained"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo trains (run_demo's torch_threads)
    try:
        result = runner.invoke(app, ["train", str(report.atlas_dir), "--config", str(demo_recipe_path(quick=True)),
                                     "--where", TRAIN_SQL, "--label", LABEL, "--quiet"])
    finally:
        torch.set_num_threads(previous)
    assert result.exit_code == 0, result.output
    assert re.search(r"trained model (\w+)", result.stdout).group(1) == demo_model
    assert TrainingConfig.from_toml(demo_recipe_path(quick=True)).learning_rate == 2e-3


def test_the_defaults_are_the_demo_recipe_but_for_the_recipe_and_the_schedule():
    """The no-flag schedule is the demo's with a higher rate and early stopping over up to 24
    epochs (chosen on four cohorts, benchmarks/README.md); every other setting is the demo's."""
    from threads_search.demo.run import demo_recipe_path

    demo = TrainingConfig.from_toml(demo_recipe_path())
    defaults = TrainingConfig()
    assert (defaults.learning_rate, defaults.epochs, defaults.patience, defaults.schedule) == (5e-3, 24, 4, "auto")
    assert demo.schedule == "cosine"
    assert (demo.learning_rate, demo.epochs, demo.patience) == (2e-3, 8, 8)
    schedule = {"recipe": defaults.recipe, "learning_rate": 5e-3, "epochs": 24, "patience": 4, "schedule": "auto"}
    assert replace(demo, **schedule) == defaults


def test_learning_rate_auto_is_a_flag_value_and_a_toml_word(tmp_path):
    config = printed_config("--learning-rate", "auto")
    assert config.learning_rate is None
    assert tomllib.loads(config.to_toml())["learning_rate"] == "auto"


@pytest.mark.parametrize("threads", [3, None])
def test_threads_reach_torch_while_training_and_the_callers_setting_comes_back(threads):
    """`--threads N` is torch.set_num_threads(N) around training; 'torch' (None) leaves the caller's."""
    import torch
    from test_training import config as tiny_config
    from test_training import paired_cohort

    from threads_search.training.trainer import train_model

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    try:
        train_model(paired_cohort(n_patients=24), replace(tiny_config(epochs=2), threads=threads),
                    on_epoch=lambda record: seen.append(torch.get_num_threads()))
        assert seen == [threads or 2] * 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert TrainingConfig().threads == 1
    assert tomllib.loads(TrainingConfig(threads=None).to_toml())["threads"] == "torch"


def test_batch_by_an_unknown_column_is_one_line_and_trains_nothing(trained):
    atlas, _, _ = trained
    before = runner.invoke(app, ["info", str(atlas), "--json"]).stdout
    result = runner.invoke(app, ["train", str(atlas), "--where", "cohort = 'train'", "--batch-by", "no_such_column",
                                 "--epochs", "1", "--quiet"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "no_such_column" in message and len(message.splitlines()) == 1
    assert runner.invoke(app, ["info", str(atlas), "--json"]).stdout == before


def test_batch_by_site_trains_and_is_stored_with_the_model(trained, tmp_path):
    atlas, config, _ = trained
    path = tmp_path / "by_site.toml"
    path.write_text(replace(config, batch_by="site", epochs=1).to_toml())
    result = runner.invoke(app, ["train", str(atlas), "--config", str(path), "--where", "cohort = 'train'", "--quiet"])
    assert result.exit_code == 0, result.output
    model_id = re.search(r"trained model (\w+)", result.stdout).group(1)
    import json

    stored = next(m for m in json.loads(runner.invoke(app, ["info", str(atlas), "--json"]).stdout)["models"]
                  if m["model_id"] == model_id)
    assert stored["training"]["config"]["batch_by"] == "site"
