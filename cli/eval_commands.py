"""`eval` and `fewshot`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from threads_search.cli.options import QUIET, Modality, choice, value
from threads_search.cli.render import table, warn


class EvalBy(str, Enum):
    embeddings = "embeddings"
    regions = "regions"


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    from threads_search.errors import InputError

    try:
        values = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise InputError(f"{option} {text}: expected comma-separated integers such as 1,5,10") from None
    if not values or min(values) < 1:
        raise InputError(f"{option} {text}: expected positive integers")
    return values


def _cell(value, interval=None) -> str:
    if value is None or value != value:
        return "-"
    text = f"{value:.3f}"
    if interval and interval[0] is not None and interval[0] == interval[0]:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


METRIC_NAMES = ("mAP", "Acc", "MV", "mAP_trec")
# Definitions printed under the tables (the JSON carries all of them).
PRINTED_DEFINITIONS = tuple(f"{name}@K" for name in METRIC_NAMES) + ("exclusion", "chance", "ci95", "site_mixing@K")


def render_evaluation(evaluation, k_focus: int | None = None) -> str:
    """The model beside mean pooling and chance for every metric and K, then per class at one K
    (k_focus, else 5, else the smallest K) with the worst and rare classes, site mixing per
    site, then the definitions."""
    from threads_search.evaluation.class_highlights import describe_highlights

    payload = evaluation.to_json()
    ks = payload["ks"]
    baselines = payload["baselines"]
    header = ["metric", "model [95% CI]"] + (["mean pooling"] if "meanpool" in baselines else []) + \
        (["region votes [95% CI]"] if "region_votes" in baselines else []) + ["chance"]
    rows = []
    for metric in (f"{name}@{k}" for k in ks for name in METRIC_NAMES):
        row = [metric, _cell(payload["metrics"].get(metric), payload["ci95"].get(metric))]
        if "meanpool" in baselines:
            row.append(_cell(baselines["meanpool"].get(metric)))
        if "region_votes" in baselines:
            row.append(_cell(baselines["region_votes"].get(metric),
                             payload["baseline_details"]["region_votes"]["ci95"].get(metric)))
        row.append(_cell(baselines["chance"].get(metric)))
        rows.append(row)
    rows += _site_mixing_rows(payload, ks)
    focus = k_focus if k_focus in ks else (5 if 5 in ks else ks[0])
    by_size = sorted(payload["per_class"].items(), key=lambda item: (-(item[1].get("n_database") or 0), item[0]))
    per_class = [[label, figures.get("n_patients"), figures.get("n_queries"), figures.get("n_database"),
                  *(_cell(figures.get(f"{name}@{focus}")) for name in ("mAP", "Acc", "MV"))]
                 for label, figures in by_size]
    overlap = payload["overlap"]
    lines = [f"{evaluation.queries.modality} -> {evaluation.database.modality}: {payload['n_queries']} queries, "
             f"{payload['n_database']} database items ({overlap['items']} items and {overlap['patients']} patients "
             f"on both sides), model {evaluation.model_id}",
             table(rows, header), "", f"per class (K = {focus}):",
             table(per_class, ["class", "patients", "queries", "database", f"mAP@{focus}", f"Acc@{focus}",
                               f"MV@{focus}"]),
             *describe_highlights(payload["class_highlights"][f"mAP@{focus}"]), "",
             *_site_mixing_lines(payload, focus), "", "definitions:"]
    definitions = payload["definitions"]
    lines += [f"  {name}: {definitions[name]}" for name in PRINTED_DEFINITIONS if name in definitions]
    return "\n".join(lines)


def _site_mixing_rows(payload: dict, ks) -> list[list]:
    """Rows `site_mixing@K` of the main table: the model [CI], mean pooling, region votes, chance (1.0)."""
    mixing = payload.get("site_mixing")
    if mixing is None:
        return []
    details = payload.get("baseline_details", {})
    rows = []
    for k in ks:
        key = f"site_mixing@{k}"
        row = [key, _cell(mixing["overall"].get(key), mixing["ci95"].get(key))]
        for name in ("meanpool", "region_votes"):
            if name in payload["baselines"]:
                other = (details.get(name) or {}).get("site_mixing") or {"overall": {}, "ci95": {}}
                row.append(_cell(other["overall"].get(key), other["ci95"].get(key) if name == "region_votes" else None))
        row.append(_cell(1.0))
        rows.append(row)
    return rows


def _site_mixing_lines(payload: dict, focus: int) -> list[str]:
    """Site mixing per query site at K = focus, or the line saying there is no site column."""
    mixing = payload.get("site_mixing")
    if mixing is None:
        from threads_search.jobs.evaluate import SITE_COLUMNS

        return [f"site mixing: no site column (none of {', '.join(SITE_COLUMNS)}; name one with --site-column)"]
    key = f"site_mixing@{focus}"
    baseline = ((payload.get("baseline_details") or {}).get("meanpool") or {}).get("site_mixing")
    rows = []
    for site, figures in mixing["per_site"].items():
        row = [site, figures["n_queries"], _cell(figures.get("database_share")), _cell(figures.get(f"hit_share@{focus}")),
               _cell(figures.get(key))]
        if baseline is not None:
            row.append(_cell((baseline["per_site"].get(site) or {}).get(key)))
        rows.append(row)
    header = [mixing["column"], "queries", "database share", f"hit share@{focus}", key] + \
        (["mean pooling"] if baseline is not None else [])
    lines = [f"site mixing by query {mixing['column']} (K = {focus}; 1.0 = no site preference):", table(rows, header)]
    if mixing["n_undefined"]:
        lines.append(f"{mixing['n_undefined']} queries have no eligible database item of their own "
                     f"{mixing['column']} (or no {mixing['column']}) and are left out of site mixing")
    return lines


def evaluate(atlas: Path = typer.Argument(..., help="Atlas folder."),
             label: str = typer.Option(..., "--label", help="Metadata column: same label = relevant."),
             queries: str = typer.Option(..., "--queries", help="SQL selecting the queries, e.g. cohort = 'heldout'."),
             database: str = typer.Option(..., "--database", help="SQL selecting the database items."),
             query_modality: Modality = choice(Modality.slides, "--query-modality", help="What the queries are."),
             target: Modality = choice(Modality.slides, "--target", help="What the database is."),
             k: str = typer.Option("1,5,10", "-k", help="Cutoffs, comma-separated."),
             bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap draws of patients for 95% CIs."),
             seed: int = typer.Option(0, "--seed"),
             model: str = typer.Option(None, "--model", help="Model id or prefix (default: the newest trained model)."),
             json_path: Path = typer.Option(None, "--json", help="Write the report as JSON."),
             plots: Path = typer.Option(None, "--plots", help="Folder for PNG plots."),
             quiet: bool = QUIET,
             site_column: str = typer.Option(None, "--site-column", help="Metadata column read as the site for site "
                                             "mixing (default: site, center ... whichever the metadata has)."),
             by: EvalBy = choice(EvalBy.embeddings, "--by", help="embeddings, or also regions: slide -> slide retrieval by region votes of the patch index, on the same queries.")) -> None:
    """Retrieval mAP@K, Acc@K, MV@K (+ trec mAP) with CIs, per class, beside mean pooling and chance."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.evaluate import evaluate_atlas, write_evaluation

    ks = parse_ints(k, "-k")
    with open_atlas(atlas, read_only=True) as opened:
        evaluation = evaluate_atlas(opened, label, queries, database, value(query_modality), value(target), ks, bootstrap,
                                    seed, model, site_column)
        if value(by) == "regions":
            from threads_search.search.region_eval import add_region_votes

            add_region_votes(opened, evaluation, ks, bootstrap, seed)
    warn(list(evaluation.report.warnings) + evaluation.notes)
    typer.echo(render_evaluation(evaluation))
    for path in write_evaluation(evaluation, json_path, plots):
        if not quiet:
            typer.echo(f"wrote {path}")


def fewshot(atlas: Path = typer.Argument(..., help="Atlas folder."),
            label: str = typer.Option(..., "--label", help="Metadata column with the classes."),
            train_sql: str = typer.Option(..., "--train", help="SQL selecting the labelled pool."),
            test_sql: str = typer.Option(..., "--test", help="SQL selecting the test items."),
            shots: str = typer.Option("1,2,4,8,16", "--shots", help="Labelled items per class, comma-separated."),
            repeats: int = typer.Option(10, "--repeats", help="Random draws per shot count."),
            seed: int = typer.Option(0, "--seed"),
            modality: Modality = choice(Modality.slides, "--modality", help="What is classified."),
            model: str = typer.Option(None, "--model", help="Model id or prefix (default: the newest trained model)."),
            json_path: Path = typer.Option(None, "--json", help="Write the curve as JSON."),
            plots: Path = typer.Option(None, "--plots", help="Folder for the PNG curve."),
            quiet: bool = QUIET) -> None:
    """Label efficiency: prototype classification vs a linear probe from k items per class."""
    from threads_search.atlas.store import open_atlas
    from threads_search.atomic import write_json_atomic
    from threads_search.jobs.evaluate import fewshot_atlas

    shot_counts = parse_ints(shots, "--shots")
    modality = value(modality)
    with open_atlas(atlas, read_only=True) as opened:
        model_id, curve, notes = fewshot_atlas(opened, label, train_sql, test_sql, shot_counts, repeats, seed, model,
                                               modality)
    warn(notes + list(curve.notes))
    summary = curve.to_dict()
    typer.echo(f"{modality}, model {model_id}, {len(curve.classes)} classes, {repeats} draws per k")
    typer.echo(render_fewshot(summary))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        summary.update(model_id=model_id, modality=modality, label=label,
                       selection={"train": train_sql, "test": test_sql}, notes=notes + summary["notes"])
        write_json_atomic(json_path, summary)
        typer.echo(f"wrote {json_path}")
    if plots:
        typer.echo(f"wrote {_save_fewshot_plot(curve, plots)}")


def render_fewshot(summary: dict) -> str:
    """Mean ± std over draws of both methods' balanced accuracy and macro AUROC, one row per k."""
    rows = []
    for index, k in enumerate(summary["shots"]):
        row = [k]
        for method in ("prototype", "linear_probe"):
            for metric in ("balanced_accuracy", "macro_auroc"):
                figures = summary["methods"][method][metric]
                mean, std = figures["mean"][index], figures["std"][index]
                row.append("-" if mean is None else f"{mean:.3f} ± {std:.3f}")
        rows.append(row)
    return table(rows, ["k", "prototype bal.acc", "prototype AUROC", "probe bal.acc", "probe AUROC"])


def _save_fewshot_plot(curve, folder: Path) -> Path:
    """fewshot_curve.png in `folder`, written atomically (temp file + rename)."""
    from threads_search.atomic import atomic_path
    from threads_search.evaluation import plot_fewshot_curve

    path = folder / "fewshot_curve.png"
    with atomic_path(path) as temporary:
        plot_fewshot_curve(curve).savefig(temporary, format="png", dpi=150, bbox_inches="tight")
    return path
