"""`embed`, `index` (`train` is in train_command.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from threads_search.cli.options import QUIET, Device, IndexKind, choice, device_name, flag, value
from threads_search.cli.region_commands import Level
from threads_search.cli.render import progress_bar, table, warn


def embed(atlas: Path = typer.Argument(..., help="Atlas folder."),
          model: str = typer.Option(None, "--model", help="Model id or prefix (default: the newest trained model), "
                                                          "or a published encoder: feather | chief (with --weights)."),
          weights: Path = typer.Option(None, "--weights", help="Local weights file of a published --model "
                                                              "(safetensors or torch state dict; nothing is downloaded)."),
          ray: str = typer.Option(None, "--ray", help="Encode the slides on a Ray cluster: auto (the one `ray start` runs here), "
                                                      "HOST:PORT, or local (a cluster in this process). Needs the `ray` extra."),
          workers: int = typer.Option(2, "--workers", help="With --ray: actors in the pool (each loads the model once)."),
          num_cpus: float = typer.Option(1.0, "--num-cpus", help="With --ray: CPUs per actor."),
          num_gpus: float = typer.Option(0.0, "--num-gpus", help="With --ray: GPUs per actor (1 puts each actor's model on a GPU)."),
          no_baseline: bool = flag("--no-baseline", help="Without --model: do not also embed the mean-pooling "
                                                         "baseline (eval's baseline column) beside the model."),
          quiet: bool = QUIET) -> None:
    """Embed every slide and profile with a model (resumes; skips what is done).

    Without --model: the newest trained model, and the mean-pooling baseline `train` fitted
    beside it, so that `eval` reports both."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import baseline_to_embed, embed_atlas, resolve_embed_model

    config = None
    if ray is not None:  # refuse a missing extra or bad counts before touching the atlas
        from threads_search.distributed.cluster import RayConfig

        config = RayConfig(address=ray, workers=workers, num_cpus=num_cpus, num_gpus=num_gpus).checked()
    if config is None:
        embed_one = embed_atlas
    else:
        from threads_search.distributed.embed import embed_atlas_ray

        def embed_one(opened, model_id, progress):
            return embed_atlas_ray(opened, model_id, config, progress)
    with open_atlas(atlas) as opened, progress_bar("embedding slides", quiet) as progress:
        model_id, notes = resolve_embed_model(opened, model, weights)
        baseline = None if model is not None or no_baseline else baseline_to_embed(opened, model_id)
        reports = [embed_one(opened, chosen, progress) for chosen in [model_id] + ([baseline] if baseline else [])]
    warn(notes + [note for report in reports for note in report.notes])
    for report, role in zip(reports, ["model", "baseline"]):
        parts = ", ".join(f"{report.embedded.get(m, 0)} {m} (+{report.skipped.get(m, 0)} already)" for m in report.embedded)
        typer.echo(f"{role} {report.model_id}: embedded {parts}")


def index(atlas: Path = typer.Argument(..., help="Atlas folder."),
          model: str = typer.Option(None, "--model", help="Model id or prefix (default: the newest trained model)."),
          kind: IndexKind = choice(IndexKind.auto, "--kind", help="Index kind (auto: chosen from size and --max-memory)."),
          device: Device = choice(Device.auto, "--device", help="Where the index is built (cuda = gpu)."),
          max_memory: str = typer.Option(None, "--max-memory", help="Memory budget for an index, e.g. 2GB or 500MB."),
          rebuild: bool = flag("--rebuild", help="Build anew instead of adding new items."),
          all_models: bool = flag("--all-models", help="Index every model that has embeddings."),
          level: Level = choice(Level.slides, "--level", help="slides (one vector per item) or patches (every patch feature, for region search)."),
          mosaic: float = typer.Option(None, "--mosaic", help="Patches only: keep this share of each slide's patches (seeded k-means mosaic, e.g. 0.05)."),
          ray: str = typer.Option(None, "--ray", help="With --shards: build each shard in a Ray task; with --level patches: plan "
                                                      "the slides (file checks, mosaic) on Ray. auto, HOST:PORT or local; the `ray` extra."),
          num_cpus: float = typer.Option(1.0, "--num-cpus", help="With --ray: CPUs per task."),
          shards: int = typer.Option(None, "--shards", help="Slides level: split each index into N shards by slide (hash of its vid), "
                                                            "for `serve --ray` (one Ray actor per shard)."),
          seed: int = typer.Option(0, "--seed"),
          quiet: bool = QUIET) -> None:
    """Build (or extend) one FAISS index per modality; recall@10 is measured and recorded."""
    if shards is not None:
        if level == Level.patches:
            from threads_search.errors import InputError

            raise InputError("--shards: only for --level slides (a patch index is sharded by running its build per shard)")
        _index_shards(atlas, model, all_models, shards, value(kind), device_name(device), parse_bytes(max_memory), seed,
                      ray, num_cpus)
        return
    if level == Level.patches:
        from threads_search.cli.region_commands import index_patches

        ray_config = None
        if ray is not None:
            from threads_search.distributed.cluster import RayConfig

            ray_config = RayConfig(address=ray, num_cpus=num_cpus).checked()
        index_patches(atlas, value(kind), parse_bytes(max_memory), mosaic, seed, quiet, ray_config)
        return
    if ray is not None:
        from threads_search.errors import InputError

        raise InputError("--ray: for --level patches or with --shards N (the single slides index is built here)")
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.index import build_atlas_indexes
    from threads_search.atlas.stored_models import resolve_model_id

    with open_atlas(atlas) as opened:
        if all_models:
            from threads_search.atlas.embeddings import embedded_models

            model_ids = embedded_models(opened)
        else:
            model_ids = [resolve_model_id(opened, model)]
        for model_id in model_ids:
            report = build_atlas_indexes(opened, model_id, value(kind), device_name(device), parse_bytes(max_memory), rebuild)
            warn(report.notes)
            rows = [[m, s["kind"], s["factory"], s["count"], f"{s['recall_at_10']:.3f}", "built"] for m, s in report.built.items()]
            rows += [[m, "", "", n, "", "added"] for m, n in report.added.items() if n]
            rows += [[m, "", "", n, "", "removed"] for m, n in report.removed.items()]
            rows += [[m, "", "", "", "", "unchanged"] for m in report.unchanged]
            typer.echo(f"model {model_id}:\n" + table(rows, ["modality", "kind", "factory", "vectors", "recall@10", "action"]))


def _index_shards(atlas: Path, model: str | None, all_models: bool, shards: int, kind: str, device: str,
                  max_memory: int | None, seed: int, ray: str | None, num_cpus: float) -> None:
    from threads_search.atlas.embeddings import embedded_models
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id
    from threads_search.jobs.index_shards import build_index_shards

    builder = None
    if ray is not None:
        from threads_search.distributed.cluster import RayConfig
        from threads_search.distributed.index_shards import ray_shard_builder

        builder = ray_shard_builder(RayConfig(address=ray, num_cpus=num_cpus).checked())
    with open_atlas(atlas) as opened:
        for model_id in embedded_models(opened) if all_models else [resolve_model_id(opened, model)]:
            report = build_index_shards(opened, model_id, shards, kind, device, max_memory, seed, builder)
            rows = [[m, shard, s["kind"] if s else "", s["count"] if s else 0,
                     f"{s['recall_at_10']:.3f}" if s and s.get("recall_at_10") is not None else ""]
                    for m, sidecars in report.built.items() for shard, s in enumerate(sidecars)]
            typer.echo(f"model {model_id}: {shards} shards per modality\n"
                       + table(rows, ["modality", "shard", "kind", "vectors", "recall@10"]))


def parse_bytes(text: str | None, option: str = "--max-memory") -> int | None:
    """'2GB' / '500MB' / '123' -> bytes."""
    if text is None:
        return None
    from threads_search.errors import InputError

    units = {"TB": 2**40, "GB": 2**30, "MB": 2**20, "KB": 2**10, "B": 1}
    cleaned = text.strip().upper().replace("IB", "B")
    for unit, factor in units.items():
        if cleaned.endswith(unit):
            number = cleaned[: -len(unit)]
            break
    else:
        number, factor = cleaned, 1
    try:
        return int(float(number) * factor)
    except ValueError:
        raise InputError(f"{option} {text}: expected a size such as 2GB or 500MB") from None
