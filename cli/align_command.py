"""`train --slide-encoder MODEL`: molecular encoders aligned to a frozen slide space."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.render import progress_bar, warn


def train_aligned(atlas: Path, slide_encoder: str, config, where: str | None, label: str | None, out: Path | None,
                  quiet: bool) -> None:
    from threads_search.atlas.store import open_atlas
    from threads_search.training.frozen import train_aligned_model
    from threads_search.cli.train_command import epoch_reporter
    from threads_search.training.summary import validation_line

    with open_atlas(atlas) as opened, progress_bar("aligning (epochs)", quiet) as progress:
        result = train_aligned_model(opened, slide_encoder, config, where, label,
                                     on_epoch=epoch_reporter(progress, config, quiet))
    warn(result.notes)
    if out is not None:
        from threads_search.encoders.checkpoint import save_model

        save_model(result.model, out)
    typer.echo(f"aligned model {result.model_id}: {', '.join(result.model.modalities[1:])} encoder(s) trained into the "
               f"frozen slide space of {result.slide_model_id} ({result.model.config.slide_recipe}, "
               f"{result.model.out_dim}-d) on {len(result.train_patients) + len(result.val_patients)} patients, "
               f"{result.n_slides} slides; best epoch {result.best_epoch} of {len(result.history)}")
    line = validation_line(result.initial_val_map, result.history, result.model.modalities[1:], label, config.eval_k)
    if line:
        typer.echo(line)
    typer.echo(f"next: threads-search embed {atlas} --model {result.model_id} (slide vectors are copied from "
               f"{result.slide_model_id})")
    if out is not None:
        typer.echo(f"checkpoint written to {out}")
