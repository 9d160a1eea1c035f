"""The patch level of `index` and `search`: `index --level patches`, `search --region / --patch`.

Called from the `index` and `search` commands (model_commands, search_commands) when the
patch level is asked for; parse there, build the config here, call one library function, render.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from threads_search.cli.render import progress_bar, table, warn


class Level(str, Enum):
    slides = "slides"
    patches = "patches"


class GroupBy(str, Enum):
    slide = "slide"


def index_patches(atlas: Path, kind: str, max_memory: int | None, mosaic: float | None, seed: int,
                  quiet: bool, ray_config=None) -> None:
    """Build the atlas's patch index and print what was built (`ray_config`: plan the slides on a Ray cluster)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.patch_index import PatchIndexConfig, build_atlas_patch_index

    config = PatchIndexConfig(kind=kind, mosaic=mosaic, max_memory=max_memory, seed=seed)
    planner = None
    if ray_config is not None:
        from threads_search.distributed.patch_index import ray_planner

        planner = ray_planner(ray_config)
    with open_atlas(atlas) as opened, progress_bar("indexing patches", quiet) as progress:
        report = build_atlas_patch_index(opened, config, progress, planner)
    warn(report.notes)
    sidecar = report.sidecar
    memory = sidecar["memory"]
    rows = [["patches", sidecar["kind"], sidecar["factory"], f"{sidecar['count']:,}", report.n_slides,
             f"{sidecar['recall_at_10']:.3f}", memory["bytes_per_vector"],
             f"{memory['estimated_resident_bytes'] / 2**20:,.0f} MiB", f"{memory['budget_bytes'] / 2**20:,.0f} MiB"]]
    typer.echo(table(rows, ["level", "kind", "factory", "patches", "slides", "recall@10", "bytes/patch",
                            "resident", "budget"]))
    typer.echo(f"patch encoder {sidecar.get('patch_encoder') or 'unknown'}, {sidecar['dimension']}-d; "
               f"search {sidecar['search_params']}; built in {sidecar['build_seconds']:.1f} s")


def search_regions_command(atlas: Path, slide_id, features, wsi, region: str | None, patch: int | None,
                           group_by: GroupBy | None, k: int, where: str | None, include_same_patient: bool,
                           label: str | None, mpp: float | None, output: str, regions_per_slide: int = 0,
                           weights: Path | None = None) -> None:
    """Run a region query and print its hits."""
    from threads_search.atlas.store import open_atlas
    from threads_search.cli.search_commands import render_hits
    from threads_search.search.regions import RegionOptions, region_query_from_arguments, search_regions

    query = region_query_from_arguments(slide_id, features, wsi, region, patch, mpp, weights)
    options = RegionOptions(k=k, where=where, include_same_patient=include_same_patient,
                            group_by=group_by.value if group_by else None, label=label,
                            regions_per_slide=regions_per_slide)
    with open_atlas(atlas, read_only=True) as opened:
        result = search_regions(opened, query, options)
    warn(result.notes)
    typer.echo(render_hits(result, output))
