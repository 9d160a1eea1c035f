"""`train`: one flag per training setting (threads_search/training/config.py), a TOML file, or both.

Precedence: a flag given > the --config file > the default. Every setting option defaults to
None ("not given"), so the merge can tell a flag from its default.
"""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.options import QUIET, flag
from threads_search.cli.render import progress_bar
from threads_search.training.config import FIELDS, describe, flag_of


def setting(name: str, *aliases: str) -> typer.models.OptionInfo:
    """The option of a training setting: its flag and help from the config's metadata."""
    return typer.Option(None, flag_of(name), *aliases, help=describe(name), show_default=False)


def train(ctx: typer.Context,
          atlas: Path = typer.Argument(..., help="Atlas folder."),
          where: str = typer.Option(None, "--where", help="SQL over metadata selecting the training slides, e.g. \"cohort = 'train'\"."),
          label: str = typer.Option(None, "--label", help="Metadata column for validation relevance (same label = relevant; "
                                                        "default: same patient)."),
          config_file: Path = typer.Option(None, "--config", help="TOML file of training settings (see --print-config); "
                                                                 "flags given override it."),
          print_config: bool = flag("--print-config", help="Print the effective config as TOML and exit (nothing is trained)."),
          recipe: str = setting("recipe"),
          model: list[str] = setting("model"),
          epochs: int = setting("epochs"),
          batch_size: int = setting("batch_size", "--batch-size"),
          patches_per_slide: int = setting("patches_per_slide"),
          learning_rate: str = setting("learning_rate"),
          schedule: str = setting("schedule"),
          decay_epochs: str = setting("decay_epochs"),
          batch_by: str = setting("batch_by"),
          weight_decay: float = setting("weight_decay"),
          warmup_fraction: float = setting("warmup_fraction"),
          max_logit_scale: float = setting("max_logit_scale"),
          grad_clip_norm: str = setting("grad_clip_norm"),
          val_fraction: float = setting("val_fraction"),
          patience: int = setting("patience"),
          eval_k: int = setting("eval_k"),
          n_top_genes: str = setting("n_top_genes"),
          max_mutation_genes: str = setting("max_mutation_genes"),
          seed: int = setting("seed"),
          device: str = setting("device"),
          threads: str = setting("threads"),
          out: Path = typer.Option(None, "--out", help="Also write the checkpoint (config.json + model.safetensors) here."),
          slide_encoder: str = typer.Option(None, "--slide-encoder", help="Keep this stored model's slide embeddings "
                                            "frozen (id, prefix or recipe: meanpool, feather ...) and train only the "
                                            "molecular encoders into its space."),
          quiet: bool = QUIET) -> None:
    """Train the slide and molecular encoders contrastively on paired slides and profiles."""
    from threads_search.training.config import layered_config
    from threads_search.training.job import default_recipe

    given = {name: value for name, value in ctx.params.items() if name in FIELDS}

    def build_config():
        return layered_config(config_file, given, default_recipe)

    if print_config:
        typer.echo(build_config().to_toml(), nl=False)
        return
    if slide_encoder is not None:
        from threads_search.cli.align_command import train_aligned

        train_aligned(atlas, slide_encoder, build_config(), where, label, out, quiet)
        return
    _train_model(atlas, build_config, where, label, out, quiet)


def epoch_reporter(progress, config, quiet: bool):
    """on_epoch for the trainers: advance the progress bar and print the epoch's line to stderr."""
    def on_epoch(record) -> None:
        progress(record.epoch, config.epochs, "")
        if not quiet:
            val = f"{record.val_map:.3f}" if record.val_map is not None else "-"
            typer.echo(f"  epoch {record.epoch}: loss {record.train_loss:.4f}, validation mAP@{config.eval_k} {val}", err=True)

    return on_epoch


def _train_model(atlas: Path, build_config, where: str | None, label: str | None, out: Path | None, quiet: bool) -> None:
    """Train and report; a slides-only atlas is answered (with its route) before the settings are checked."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.builtin_models import refuse_training_without_profiles
    from threads_search.training.job import train_atlas_model
    from threads_search.training.summary import kept_epoch_text, learning_rate_line, schedule_line, validation_line

    with open_atlas(atlas) as opened:
        refuse_training_without_profiles(opened)
        config = build_config()
        with progress_bar("training (epochs)", quiet) as progress:
            result = train_atlas_model(opened, config, where, label, on_epoch=epoch_reporter(progress, config, quiet))
    training = result.training
    if out is not None:
        from threads_search.encoders.checkpoint import save_model

        save_model(training.model, out)
    typer.echo(f"trained model {result.model_id} ({config.recipe}) on {result.n_slides} slides of {result.n_patients} "
               f"patients; {kept_epoch_text(training)}, device {training.device}")
    for line in (learning_rate_line(training, config.eval_k), schedule_line(training, config.eval_k),
                 validation_line(training.initial_val_map, training.history, training.val_modalities, label, config.eval_k,
                                 kept_epoch=training.best_epoch)):
        if line:
            typer.echo(line)
    typer.echo(f"baseline model {result.baseline_id} (meanpool) fitted on the same selection")
    if out is not None:
        typer.echo(f"checkpoint written to {out}")
