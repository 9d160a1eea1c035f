"""`ingest slides | expression | mutations`."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.render import progress_bar, warn

_METADATA = typer.Option(None, "--metadata", help="CSV keyed by slide_id / sample_id / patient_id, any other columns.")
_REPLACE = typer.Option(False, "--replace", help="Replace items whose id exists from a different file.")
_STRICT = typer.Option(False, "--strict", help="Refuse (instead of warn) when metadata rows and files do not match.")


def _summarise(report, what: str) -> None:
    warn(report.warnings)
    typer.echo(f"{what}: {report.added} added, {report.replaced} replaced, {report.unchanged} unchanged"
               + (f"; metadata matched {report.metadata_rows_matched} rows" if report.metadata_rows_matched else ""))


def slides(atlas: Path = typer.Argument(..., help="Atlas folder."),
           features: list[str] = typer.Argument(..., help="TRIDENT/CLAM .h5 or .pt files, folders or globs."),
           metadata: Path = _METADATA,
           copy: bool = typer.Option(False, "--copy", help="Copy the files into the atlas instead of referencing them."),
           replace: bool = _REPLACE, strict: bool = _STRICT,
           wsi_dir: Path = typer.Option(None, "--wsi-dir", help="Folder of raw slides (searched recursively), paired "
                                        "with the features by slide id / file stem, so `serve` can show them."),
           quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Ingest patch-feature files (one per slide; slide id = file stem)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.slides import ingest_slides

    with open_atlas(atlas) as opened, progress_bar("checking feature files", quiet) as progress:
        report = ingest_slides(opened, features, metadata, copy=copy, replace=replace, strict=strict, progress=progress,
                               wsi_dir=wsi_dir)
    _summarise(report, "slides")


def expression(atlas: Path = typer.Argument(..., help="Atlas folder."),
               file: Path = typer.Argument(..., help="CSV / TSV / Parquet / .h5ad expression matrix."),
               metadata: Path = _METADATA,
               genes_as_rows: bool = typer.Option(False, "--genes-as-rows", help="Genes are rows, samples columns (TCGA/Xena)."),
               scale: str = typer.Option("auto", "--scale", help="auto | counts | tpm | log."),
               replace: bool = _REPLACE, strict: bool = _STRICT) -> None:
    """Ingest an expression matrix; its scale is detected (or given) and recorded."""
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.profiles import ingest_expression

    with open_atlas(atlas) as opened:
        report = ingest_expression(opened, file, metadata, genes_as_rows=genes_as_rows, scale=scale, replace=replace, strict=strict)
        scale_row = opened.sql("SELECT scale, scale_reason FROM profile_batches WHERE modality = 'expression' "
                               "ORDER BY ingested_at DESC LIMIT 1").fetchone()
    _summarise(report, "expression profiles")
    if scale_row:
        typer.echo(f"scale: {scale_row[0]} ({scale_row[1]})")


def mutations(atlas: Path = typer.Argument(..., help="Atlas folder."),
              file: Path = typer.Argument(..., help="MAF, or a samples x genes 0/1 matrix."),
              metadata: Path = _METADATA, replace: bool = _REPLACE, strict: bool = _STRICT) -> None:
    """Ingest mutations as multi-hot profiles over genes."""
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.profiles import ingest_mutations

    with open_atlas(atlas) as opened:
        report = ingest_mutations(opened, file, metadata, replace=replace, strict=strict)
    _summarise(report, "mutation profiles")
