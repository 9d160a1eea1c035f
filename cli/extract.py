"""`extract WSI... --out DIR`: patch features from raw slides, in TRIDENT's layout; `heatmap`: their attention."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from threads_search.cli.options import QUIET, flag
from threads_search.cli.render import table


@contextlib.contextmanager
def _slide_and_patch_bars(quiet: bool) -> Iterator[Callable | None]:
    """A progress callback drawing two bars on stderr (slides, patches of the current slide)."""
    if quiet or not (sys.stderr.isatty() or os.environ.get("THREADS_SEARCH_PROGRESS") == "1"):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bars:
        slides = bars.add_task("slides", total=None)
        patches = bars.add_task("patches", total=None)

        def update(event) -> None:
            bars.update(slides, total=event.n_slides, completed=event.slide_index)
            bars.update(patches, description=f"{event.slide_id}", total=event.patches_total or None,
                        completed=event.patches_done)
            if event.status in ("done", "skipped", "failed"):
                bars.update(slides, completed=event.slide_index + 1)

        yield update


def extract(
    wsi: list[Path] = typer.Argument(..., help="Slide files OpenSlide reads (.svs, .tiff, .ndpi, .mrxs, DICOM ...)."),
    out: Path = typer.Option(..., "--out", help="Folder for <slide_id>.h5 and thumbnails/<slide_id>.png."),
    patch_encoder: str = typer.Option(
        "builtin_stain_texture", "--patch-encoder", help="Registered patch encoder (builtin_stain_texture, uni_v1 ...)."
    ),
    weights: Path | None = typer.Option(None, "--weights", help="Local weights file for encoders that need one."),
    mag: float = typer.Option(20.0, "--mag", help="Target magnification (10 / microns per pixel)."),
    patch_size: int = typer.Option(512, "--patch-size", help="Patch side in pixels at the target magnification."),
    mpp: float | None = typer.Option(None, "--mpp", help="Microns per pixel at level 0, for slides that lack it."),
    keep_going: bool = flag("--keep-going", help="Record a slide that fails and go on to the next."),
    ray: str | None = typer.Option(None, "--ray", help="Extract on a Ray cluster: auto, HOST:PORT or local "
                                                       "(slides and --out on storage every node sees). Needs the `ray` extra."),
    workers: int = typer.Option(2, "--workers", help="With --ray: actors in the pool (each creates the encoder once)."),
    num_cpus: float = typer.Option(1.0, "--num-cpus", help="With --ray: CPUs per actor."),
    num_gpus: float = typer.Option(0.0, "--num-gpus", help="With --ray: GPUs per actor."),
    quiet: bool = QUIET,
) -> None:
    """Tissue-segment, tile and encode slides into TRIDENT-layout patch-feature files (resumable)."""
    from threads_search.wsi.extract import extract_slides

    runner = None
    if ray is not None:
        from threads_search.distributed.cluster import RayConfig
        from threads_search.distributed.extract import ray_extraction

        runner = ray_extraction(RayConfig(address=ray, workers=workers, num_cpus=num_cpus, num_gpus=num_gpus).checked())
    with _slide_and_patch_bars(quiet) as progress:
        results = extract_slides(
            wsi, out, patch_encoder=patch_encoder, weights=weights, target_mag=mag, patch_size=patch_size,
            mpp=mpp, progress=progress, keep_going=keep_going, runner=runner,
        )
    rows = [[r.slide_id, r.status, r.n_patches, f"{r.seconds:.1f}", r.error or r.h5_path] for r in results]
    typer.echo(table(rows, ["slide", "status", "patches", "seconds", "file / error"]))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        typer.echo(f"error: {len(failed)} of {len(results)} slides failed", err=True)
        raise typer.Exit(code=2)


def heatmap(
    atlas: Path = typer.Argument(..., help="Atlas folder."),
    wsi: Path | None = typer.Option(
        None, "--wsi", help="A raw slide, extracted like the atlas's slides; with --slide-id only its picture is used."
    ),
    slide_id: str | None = typer.Option(None, "--slide-id", help="An atlas slide (features and coords from its file)."),
    out: Path = typer.Option(..., "--out", help="PNG to write: attention over the thumbnail, with a colour bar."),
    model: str | None = typer.Option(None, "--model", help="Model id or prefix (default: the newest trained model)."),
    mpp: float | None = typer.Option(None, "--mpp", help="Microns per pixel at level 0, for --wsi files that lack it."),
    weights: Path | None = typer.Option(None, "--weights", help="With --wsi: local weights file of the atlas's patch encoder."),
) -> None:
    """The slide encoder's attention over the tissue: which regions made the match."""
    from threads_search.atlas.store import open_atlas
    from threads_search.cli.render import warn
    from threads_search.search.heatmap import attention_heatmap

    with open_atlas(atlas, read_only=True) as opened:
        result = attention_heatmap(opened, out, slide_id=slide_id, wsi=wsi, model_id=model, mpp=mpp,
                                   patch_weights=weights)
    warn(result.notes)
    top = ", ".join(f"({x}, {y}) {weight:.3f}" for x, y, weight in result.top_patches)
    typer.echo(f"heatmap of {result.slide_id}: {result.n_patches} patches, mean of {result.n_heads} attention heads of "
               f"model {result.model_id} ({result.recipe}) over the {result.background} -> {result.path} "
               f"({result.size[0]} x {result.size[1]} px)")
    low, high = result.weight_range
    uniform = 1 / result.n_patches
    typer.echo(f"attention per patch from {low:.4f} to {high:.4f} (uniform: {uniform:.4f}); colours show attention / "
               f"the slide's mean on a log2 scale from 1/{2 ** result.scale_limit}x to {2 ** result.scale_limit}x")
    typer.echo(f"most attended patches, level-0 (x, y) and weight: {top}")
