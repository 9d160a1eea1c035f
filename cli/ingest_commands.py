"""`ingest slides | expression | mutations`."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.options import QUIET, Scale, choice, flag, value
from threads_search.cli.render import progress_bar, warn

_METADATA = typer.Option(None, "--metadata", help="CSV keyed by slide_id / sample_id / patient_id, any other columns.")
_REPLACE = flag("--replace", help="Replace items whose id exists from a different file.")
_STRICT = flag("--strict", help="Refuse (instead of warn) when metadata rows and files do not match.")


def _summarise(report, what: str) -> None:
    warn(report.warnings)
    typer.echo(f"{what}: {report.added} added, {report.replaced} replaced, {report.unchanged} unchanged"
               + (f"; metadata matched {report.metadata_rows_matched} rows" if report.metadata_rows_matched else ""))


def slides(atlas: Path = typer.Argument(..., help="Atlas folder."),
           features: list[str] = typer.Argument(..., help="TRIDENT/CLAM .h5 or .pt files, folders, globs or TRIDENT "
                                                "job folders (their features_<encoder> folder is read)."),
           metadata: Path = _METADATA,
           copy: bool = flag("--copy", help="Copy the files into the atlas instead of referencing them."),
           replace: bool = _REPLACE, strict: bool = _STRICT,
           wsi_dir: Path = typer.Option(None, "--wsi-dir", help="Folder of raw slides (searched recursively), paired "
                                        "with the features by slide id / file stem, so `serve` can show them."),
           encoder: str = typer.Option(None, "--encoder", help="Patch encoder of files that name none (CLAM), e.g. "
                                       "uni_v1; recorded, and files that name another are refused. Chooses the "
                                       "features_<encoder> folder of a TRIDENT job folder that holds several."),
           quiet: bool = QUIET) -> None:
    """Ingest patch-feature files (one per slide; slide id = file stem)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.slides import ingest_slides

    with open_atlas(atlas) as opened, progress_bar("checking feature files", quiet) as progress:
        report = ingest_slides(opened, features, metadata, copy=copy, replace=replace, strict=strict, progress=progress,
                               wsi_dir=wsi_dir, encoder=encoder)
    _summarise(report, "slides")


def expression(atlas: Path = typer.Argument(..., help="Atlas folder."),
               files: list[Path] = typer.Argument(..., help="CSV / TSV / Parquet / .h5ad expression matrices (one batch each)."),
               metadata: Path = _METADATA,
               genes_as_rows: bool = flag("--genes-as-rows", help="Genes are rows, samples columns (TCGA/Xena)."),
               layer: str = typer.Option(None, "--layer", help="AnnData .h5ad: read layers/NAME instead of X."),
               scale: Scale = choice(Scale.auto, "--scale", help="Value scale (auto: detected and stated)."),
               replace: bool = _REPLACE, strict: bool = _STRICT, quiet: bool = QUIET) -> None:
    """Ingest expression matrices; their scale is detected (or given) and recorded.

    An AnnData file's obs columns become sample metadata; --metadata overrides them for the samples it lists.
    """
    from threads_search.atlas.profiles import expression_scale
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.profiles import ingest_expression

    with open_atlas(atlas) as opened:
        report = ingest_expression(opened, files, metadata, genes_as_rows=genes_as_rows, scale=value(scale), replace=replace,
                                   strict=strict, layer=layer)
        scale_row = expression_scale(opened)
    _summarise(report, "expression profiles")
    if scale_row and not quiet:
        typer.echo(f"scale: {scale_row[0]} ({scale_row[1]})")


def mutations(atlas: Path = typer.Argument(..., help="Atlas folder."),
              files: list[Path] = typer.Argument(..., help="MAFs, or samples x genes 0/1 matrices (one batch each)."),
              metadata: Path = _METADATA, replace: bool = _REPLACE, strict: bool = _STRICT, quiet: bool = QUIET) -> None:
    """Ingest mutations as multi-hot profiles over genes."""
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.profiles import ingest_mutations

    with open_atlas(atlas) as opened:
        report = ingest_mutations(opened, files, metadata, replace=replace, strict=strict)
    _summarise(report, "mutation profiles")


def slide_embeddings(atlas: Path = typer.Argument(..., help="Atlas folder."),
                     files: list[str] = typer.Argument(..., help="TRIDENT slide_features_<enc>/*.h5, Patho-Bench pooled "
                                                          ".h5 ((D,) or (1, D)), one .npy (with --ids) or Parquet files, folders, "
                                                          "globs or TRIDENT job folders."),
                     encoder: str = typer.Option(None, "--encoder", help="The slide encoder that made them (titan, feather, "
                                                 "chief, prism ...): one frozen model per name and dimension. Default: "
                                                 "<enc> of a TRIDENT slide_features_<enc> folder; chooses one in a job "
                                                 "folder that holds several."),
                     metadata: Path = _METADATA,
                     ids: Path = typer.Option(None, "--ids", help="For a .npy file: its slide ids, one per line in row order."),
                     patch_encoder: str = typer.Option(None, "--patch-encoder", help="Patch features they were computed "
                                                       "from (recorded, e.g. conch_v15)."),
                     strict: bool = _STRICT, quiet: bool = QUIET) -> None:
    """Ingest precomputed slide embeddings as a frozen model (no training; unknown ids become slides)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.ingest.slide_embeddings import ingest_slide_embeddings

    with open_atlas(atlas) as opened:
        report, model_id, name = ingest_slide_embeddings(opened, files, encoder, metadata, ids, patch_encoder, strict)
    _summarise(report, f"slide embeddings ({name}, model {model_id})")
