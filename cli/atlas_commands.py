"""`init` and `info`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from threads_search.cli.options import QUIET, Modality, choice, flag, value
from threads_search.cli.render import table, warn
from threads_search.errors import ThreadsSearchError


def init(atlas: Path = typer.Argument(..., help="Folder to create the atlas in.")) -> None:
    """Create an empty atlas folder."""
    from threads_search.atlas.store import init_atlas

    init_atlas(atlas).close()
    typer.echo(f"created atlas {atlas}")


def info(atlas: Path = typer.Argument(..., help="Atlas folder."),
         as_json: bool = flag("--json", help="Print the summary as JSON.")) -> None:
    """What an atlas holds: counts by modality and metadata, features, genes, models, indexes."""
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.info import atlas_info

    with open_atlas(atlas, read_only=True) as opened:
        summary = atlas_info(opened)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    typer.echo(_render_info(summary))


def _recipe_label(model: dict) -> str:
    encoder = model.get("encoder")  # a precomputed set's --encoder
    return f"{model['recipe']} ({encoder})" if encoder else model["recipe"]


def _training_config(model: dict) -> str:
    """'training config of model ID (--where ..., --label ...):' and its TOML, indented two spaces."""
    from threads_search.training.config import FIELDS, TrainingConfig

    training = model["training"]
    selection = "".join(f", --{name} {training[name]!r}" for name in ("where", "label") if training.get(name))
    try:
        text = TrainingConfig.from_values({k: v for k, v in training["config"].items() if k in FIELDS}).to_toml(comments=False)
    except ThreadsSearchError:  # a record from an older version: shown as stored
        text = "".join(f"{k} = {v!r}\n" for k, v in training["config"].items())
    body = "".join(f"  {line}\n" for line in text.splitlines())
    return f"training config of model {model['model_id']} ({model['recipe']}{selection}):\n{body.rstrip()}"


def _render_info(summary: dict) -> str:
    items, pairing, features = summary["items"], summary["pairing"], summary["features"]
    lines = [f"atlas {summary['atlas']}",
             f"items: {items['slides']} slides, {items['expression']} expression profiles, "
             f"{items['mutations']} mutation profiles, {summary['patients']} patients",
             f"pairing: {pairing['slides_with_expression']} slides with expression, "
             f"{pairing['slides_with_mutations']} with mutations, {pairing['slides_with_both']} with both"]
    if items["slides"] and features.get("patches_per_slide"):  # not for slides known by their embeddings only
        low, high = features["patches_per_slide"]
        lines.append(f"features: dim {features['feature_dim']}, patch encoder {features['patch_encoder'] or 'not recorded'}, "
                     f"dtype {'/'.join(features['dtypes'])}, {features['patches_total']} patches ({low}-{high} per slide)")
    embedding_only = items["slides"] - features.get("slides_with_features", items["slides"])
    if embedding_only:
        lines.append(f"{embedding_only} slides known by precomputed slide embeddings only (no patch features)")
    for batch in summary["profiles"]:
        lines.append(f"{batch['modality']}: {batch['samples']} samples x {batch['genes']} genes, scale {batch['scale']} "
                     f"({batch['scale_reason']}) from {batch['source']}")
    for column, details in summary["metadata"].items():
        if "counts" not in details:
            lines.append(f"{column}: {details['distinct_values']} distinct values")
            continue
        parts = []
        for level, by_modality in details["counts"].items():
            parts.append(f"{level}=" + "/".join(f"{n} {m}" for m, n in by_modality.items()))
        lines.append(f"{column}: " + ", ".join(parts))
    if summary["models"]:
        lines.append("models:\n" + table([[m["model_id"], _recipe_label(m), m["created_at"]] for m in summary["models"]],
                                         ["model", "recipe", "created"]))
        lines += [_training_config(m) for m in summary["models"] if "training" in m]
    if summary["embeddings"]:
        lines.append("embeddings:\n" + table([[e["model_id"], e["modality"], e["vectors"]] for e in summary["embeddings"]],
                                             ["model", "modality", "vectors"]))
    if summary["indexes"]:
        lines.append("indexes:\n" + table([[i["model_id"], i["modality"], i["kind"], i["vectors"],
                                            f"{i['recall_at_10']:.3f}" if i["recall_at_10"] is not None else "-"]
                                           for i in summary["indexes"]], ["model", "modality", "kind", "vectors", "recall@10"]))
    if summary.get("index_shards"):
        lines.append("sharded indexes:\n" + table([[i["model_id"], i["modality"], i["shards"], i["vectors"]]
                                                   for i in summary["index_shards"]], ["model", "modality", "shards", "vectors"]))
    if summary["prototypes"]:
        lines.append("prototypes:\n" + table([[p["name"], p["label"], p["classes"], p["modality"], p["model_id"]]
                                              for p in summary["prototypes"]], ["name", "label", "classes", "modality", "model"]))
    return "\n".join(lines)


def remove(atlas: Path = typer.Argument(..., help="Atlas folder."),
           where: str = typer.Option(None, "--where", help="Filter selecting the items to remove, e.g. \"site = 'site3'\"."),
           ids: Path = typer.Option(None, "--ids", help="File of item ids to remove, one per line."),
           modality: Modality = choice(None, "--modality", help="Only items of this modality (default: every modality)."),
           quiet: bool = QUIET) -> None:
    """Remove items with their embeddings and index entries (one transaction; indexes follow)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.remove import read_id_file, remove_items

    id_list = read_id_file(ids) if ids is not None else None
    with open_atlas(atlas) as opened:
        report = remove_items(opened, where, id_list, value(modality))
    warn(report.notes)
    if report.unknown_ids:
        warn([f"{len(report.unknown_ids)} id(s) of {ids} are not in the atlas (first: '{report.unknown_ids[0]}')"])
    removed = ", ".join(f"{n} {m}" for m, n in sorted(report.removed.items())) or "nothing"
    typer.echo(f"removed {removed}" + (f"; indexes updated for {len(report.reindexed)} model(s)" if report.reindexed else ""))


def check(atlas: Path = typer.Argument(..., help="Atlas folder."),
          repair: bool = flag("--repair", help="Mend what is found: restore, drop damaged records, delete leftovers."),
          as_json: bool = flag("--json", help="Print the report as JSON.")) -> None:
    """Verify every record against its files (checksums, counts, model hashes) and report leftovers."""
    from threads_search.atlas.check import check_atlas

    report = check_atlas(atlas, repair=repair)
    if as_json:
        typer.echo(json.dumps({"checked": report.checked, "problems": [vars(p) for p in report.problems]}, indent=2))
    else:
        checked = ", ".join(f"{n} {what}" for what, n in report.checked.items())
        typer.echo(f"checked {checked}")
        for problem in report.problems:
            state = "repaired" if problem.repaired else "PROBLEM"
            typer.echo(f"{state}: {problem.path}: {problem.message} -> {problem.fix}")
        if not report.problems:
            typer.echo("no problems found")
    if report.outstanding:
        raise typer.Exit(code=1)
