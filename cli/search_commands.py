"""`search`, `prototypes`, `classify`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

from threads_search.cli.options import Device, Modality, OutputFormat, ProfileModality, choice, device_name, flag, value
from threads_search.cli.region_commands import GroupBy
from threads_search.cli.render import table, warn

MAX_TABLE_COLUMNS = 6


def search(atlas: Path = typer.Argument(..., help="Atlas folder."),
           slide_id: str = typer.Option(None, "--slide-id", help="An atlas slide."),
           features: Path = typer.Option(None, "--features", help="An unseen TRIDENT/CLAM .h5 (encoded on the fly)."),
           wsi: Path = typer.Option(None, "--wsi", help="A raw slide (extracted with the atlas's patch encoder)."),
           sample_id: str = typer.Option(None, "--sample-id", help="An atlas expression or mutation profile."),
           expression: Path = typer.Option(None, "--expression", help="An expression file (aligned by gene name)."),
           sample: str = typer.Option(None, "--sample", help="Row of --expression to use."),
           prototype: str = typer.Option(None, "--prototype", help="NAME:CLASS of a stored prototype set."),
           modality: ProfileModality = choice(None, "--modality", help="Which profile --sample-id names, when it is both."),
           target: Modality = choice(Modality.slides, "--target", help="Index to search."),
           k: int = typer.Option(10, "-k", help="Number of hits."),
           where: str = typer.Option(None, "--where", help="SQL filter over metadata, applied inside the search."),
           include_same_patient: bool = flag("--include-same-patient", help="Keep hits of the query's own patient."),
           one_per_patient: bool = flag("--one-per-patient", help="Keep each patient's best hit only."),
           model: str = typer.Option(None, "--model", help="Model id or prefix (default: the newest trained model that has an index)."),
           label: str = typer.Option(None, "--label", help="Column for the majority-vote line (default: subtype/diagnosis if present)."),
           mpp: float = typer.Option(None, "--mpp", help="Microns per pixel for --wsi files that lack it."),
           weights: Path = typer.Option(None, "--weights", help="With --wsi: local weights file of the atlas's patch "
                                                                "encoder when it needs one (also for --region; nothing is downloaded)."),
           device: Device = choice(Device.auto, "--device", help="Where the index runs (cuda = gpu)."),
           output: OutputFormat = choice(OutputFormat.table, "--format", help="Output format."),
           region: str = typer.Option(None, "--region", help="X,Y,W,H level-0 box of the query slide: search the patch index for similar regions."),
           patch: int = typer.Option(None, "--patch", help="Row N of the query slide's patches: search the patch index with it."),
           group_by: GroupBy = choice(None, "--group-by", help="With --region/--patch: rank slides by the votes of their regions."),
           regions_per_slide: int = typer.Option(0, "--regions-per-slide", min=0, max=100, help="With --group-by slide: list each slide's best N matched regions (JSON: `regions`).")) -> None:
    """Nearest neighbours of a slide, feature file, raw slide, profile or prototype."""
    if region is not None or patch is not None or group_by is not None:
        from threads_search.cli.region_commands import search_regions_command

        search_regions_command(atlas, slide_id, features, wsi, region, patch, group_by, k, where,
                               include_same_patient, label, mpp, output, regions_per_slide, weights)
        return
    from threads_search.atlas.store import open_atlas
    from threads_search.search.query import SearchOptions, query_from_arguments, search_atlas

    query = query_from_arguments(slide_id, features, wsi, sample_id, expression, sample, prototype, mpp, value(modality),
                                 weights)
    options = SearchOptions(target=value(target), k=k, where=where, include_same_patient=include_same_patient,
                            model_id=model, label=label, device=device_name(device), one_per_patient=one_per_patient)
    with open_atlas(atlas, read_only=True) as opened:
        result = search_atlas(opened, query, options)
    if result.searched_with:
        typer.echo(result.searched_with, err=True)
    warn(result.notes)
    typer.echo(render_hits(result, value(output)))


def render_hits(result, output: str) -> str:
    from threads_search.errors import InputError

    if output == "json":
        return json.dumps(result.to_json(), indent=2, default=str)
    columns = ["rank", "id", "modality", "patient_id", "score"]
    extra = [c for c in (result.hits[0] if result.hits else {}) if c not in columns]
    if output == "table":  # a column empty for every hit only takes room
        extra = [c for c in extra if any(h.get(c) not in (None, "") for h in result.hits)]
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns + extra)
        writer.writeheader()
        writer.writerows(result.hits)
        return buffer.getvalue().rstrip("\n")
    if output != "table":
        raise InputError(f"--format {output}: expected table, json or csv")
    if result.label in extra:
        extra.remove(result.label)
        extra.insert(0, result.label)
    shown = extra[:MAX_TABLE_COLUMNS]
    rows = [[h["rank"], h["id"], h["patient_id"], f"{h['score']:.4f}"] + [h.get(c) for c in shown] for h in result.hits]
    query = result.query
    lines = [f"query: {query['type']} {query['id']} -> {query['target']} (model {query['model_id']})",
             table(rows, ["rank", "id", "patient", "score"] + shown)]
    if result.majority():
        lines.append(result.majority())
    return "\n".join(lines)


def prototypes(atlas: Path = typer.Argument(..., help="Atlas folder."),
               label: str = typer.Option(..., "--label", help="Metadata column whose classes become prototypes."),
               modality: Modality = choice(Modality.expression, "--modality", help="Whose embeddings are averaged."),
               where: str = typer.Option(None, "--where", help="SQL selecting the members."),
               name: str = typer.Option(None, "--name", help="Name of the set (default LABEL-MODALITY)."),
               model: str = typer.Option(None, "--model", help="Model id or prefix.")) -> None:
    """Class prototypes: the mean normalised embedding of each class (molecular prompting)."""
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import resolve_model_id
    from threads_search.search.prototypes import build_prototypes

    with open_atlas(atlas) as opened:
        built = build_prototypes(opened, resolve_model_id(opened, model), label, value(modality), where, name)
    typer.echo(f"prototype set '{built.name}' ({built.modality}, model {built.model_id}):\n"
               + table([[c, n] for c, n in zip(built.classes, built.members)], [label, "members"]))


def classify(atlas: Path = typer.Argument(..., help="Atlas folder."),
             prototypes_name: str = typer.Option(..., "--prototypes", help="Name of a stored prototype set."),
             where: str = typer.Option(None, "--where", help="SQL selecting the slides."),
             output: OutputFormat = choice(OutputFormat.table, "--format", help="Output format.")) -> None:
    """Zero-shot classification of slides by their nearest prototype."""
    output = value(output)
    from threads_search.atlas.store import open_atlas
    from threads_search.search.prototypes import classify_slides

    with open_atlas(atlas, read_only=True) as opened:
        result = classify_slides(opened, prototypes_name, where)
    records = [{"slide_id": s, "patient_id": p, "predicted": c, "true": t,
                **{f"score_{name}": round(float(v), 6) for name, v in zip(result.classes, scores)}}
               for s, p, c, t, scores in zip(result.slide_ids, result.patient_ids, result.predicted, result.truth, result.scores)]
    accuracy = result.balanced_accuracy()
    if output == "json":
        typer.echo(json.dumps({"classes": result.classes, "balanced_accuracy": accuracy, "slides": records}, indent=2))
        return
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        typer.echo(buffer.getvalue().rstrip("\n"))
        return
    rows = [[r["slide_id"], r["predicted"], r["true"]] + [f"{r[f'score_{c}']:.3f}" for c in result.classes] for r in records]
    typer.echo(table(rows, ["slide", "predicted", "true"] + result.classes))
    if accuracy is not None:
        typer.echo(f"balanced accuracy: {accuracy:.3f} over {sum(t is not None for t in result.truth)} labelled slides")
