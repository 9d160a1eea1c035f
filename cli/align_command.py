"""`train --slide-encoder MODEL`: molecular encoders aligned to a frozen slide space."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.render import progress_bar, warn


def train_aligned(atlas: Path, slide_encoder: str, config, where: str | None, label: str | None, out: Path | None,
                  quiet: bool) -> None:
    from threads_search.atlas.store import open_atlas
    from threads_search.training.frozen import train_aligned_model

    with open_atlas(atlas) as opened, progress_bar("aligning (epochs)", quiet) as progress:
        def on_epoch(record) -> None:
            progress(record.epoch, config.epochs, "")
            if not quiet:
                val = f"{record.val_map:.3f}" if record.val_map is not None else "-"
                typer.echo(f"  epoch {record.epoch}: loss {record.train_loss:.4f}, validation mAP@5 {val}", err=True)

        result = train_aligned_model(opened, slide_encoder, config, where, label, on_epoch=on_epoch)
    warn(result.notes)
    if out is not None:
        from threads_search.encoders.checkpoint import save_model

        save_model(result.model, out)
    typer.echo(f"aligned model {result.model_id}: {', '.join(result.model.modalities[1:])} encoder(s) trained into the "
               f"frozen slide space of {result.slide_model_id} ({result.model.config.slide_recipe}, "
               f"{result.model.out_dim}-d) on {len(result.train_patients) + len(result.val_patients)} patients, "
               f"{result.n_slides} slides; best epoch {result.best_epoch} of {len(result.history)}")
    best = max((r.val_map for r in result.history if r.val_map is not None), default=None)
    if best is not None and result.initial_val_map is not None:
        typer.echo(f"validation mAP@5: {result.initial_val_map:.3f} before training -> {best:.3f}")
    typer.echo(f"next: threads-search embed {atlas} --model {result.model_id} (slide vectors are copied from "
               f"{result.slide_model_id})")
    if out is not None:
        typer.echo(f"checkpoint written to {out}")
