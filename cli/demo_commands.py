"""`demo`: the whole pipeline on a generated cohort, narrated, ending in one summary table."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from threads_search.cli.options import flag

from threads_search.cli.render import table

ROWS = (("slide_to_slide", "slide -> slide"), ("expression_to_slide", "expression -> slide"))
ENCODERS = (("trained", "trained model"), ("meanpool", "mean pooling"), ("chance", "chance"))


class _Terminal:
    """Narration on stdout, per-item progress bars on stderr (closed before any new line)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar, self.bar_label, self.bar_done = None, None, 0

    def echo(self, line: str) -> None:
        self.close_bar()
        if not self.quiet:
            typer.echo(line)

    def progress(self, label: str, done: int, total: int) -> None:
        if self.quiet or not sys.stderr.isatty():
            return
        if label != self.bar_label:
            self.close_bar()
            self.bar = typer.progressbar(length=total, label=f"      {label}", file=sys.stderr, show_pos=True)
            self.bar.__enter__()
            self.bar_label, self.bar_done = label, 0
        self.bar.update(done - self.bar_done)
        self.bar_done = done

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.bar, self.bar_label = None, None


def _figure(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_summary(payload: dict) -> str:
    """The summary table of a `report/demo.json` payload, the timing and the next commands."""
    settings = payload["settings"]
    k = settings["k"]
    metrics = [f"{name}@{k}" for name in ("mAP", "Acc", "MV")]
    rows = []
    for task, task_name in ROWS:
        figures = payload["evaluation"][task]
        for key, encoder_name in ENCODERS:
            values = figures.get(key) or {}
            ci = figures["ci95"].get(metrics[0]) if key == "trained" else None
            interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
            rows.append([task_name if key == "trained" else "", encoder_name]
                        + [_figure(values.get(metrics[0])), interval] + [_figure(values.get(m)) for m in metrics[1:]])
    slides = payload["evaluation"]["slide_to_slide"]
    cohort = payload["cohort"]
    prototypes = payload["prototypes"]
    atlas = payload["atlas"]
    lines = [
        "",
        f"Held-out sites ({', '.join(cohort['heldout_sites'])}): {slides['n_queries']} slides queried against the "
        f"{slides['n_database']} held-out slides; relevant = same {settings['label']}, the query's own patient excluded.",
        table(rows, ["query -> target", "encoder"] + [metrics[0], "95% CI"] + metrics[1:]),
        f"mAP@{k}: mean over queries of sum_(j<={k}) P@j rel_j / {k};  Acc@{k}: a relevant slide in the top {k};  "
        f"MV@{k}: the majority {settings['label']} of the top {k} is right.",
        *_classes_and_sites(payload),
        f"Zero-shot {settings['label']} classification of the {prototypes['n_slides']} held-out slides by the nearest "
        f"expression prototype: balanced accuracy {_figure(prototypes['balanced_accuracy'])} "
        f"(chance {prototypes['chance']:.3f}).",
        f"Time: {payload['timings_s']['total']:.0f} s ("
        + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in payload["timings_s"].items() if stage != "total")
        + f"). Report: {Path(payload['evaluation']['slide_to_slide']['json']).parent}/demo.json and plots/.",
        "",
        "Next, try:",
        f"  threads-search search {atlas} --slide-id {payload['search']['slide_id']}",
        f"  threads-search search {atlas} --prototype {prototypes['name']}:{payload['search'][settings['label']]} -k 5",
        f"  threads-search eval {atlas} --label {settings['label']} --queries \"{settings['heldout_sql']}\" "
        f"--database \"{settings['heldout_sql']}\" --query-modality expression",
        f"  threads-search classify {atlas} --prototypes {prototypes['name']} --where \"{settings['heldout_sql']}\"",
        f"  threads-search info {atlas}",
    ]
    return "\n".join(lines)


def _classes_and_sites(payload: dict) -> list[str]:
    """Per task: the worst and the rare classes beside the mean, and site mixing (trained model
    beside mean pooling, per held-out site). Reports of older demos without them give no lines."""
    from threads_search.evaluation.class_highlights import describe_highlights

    lines = []
    for task, task_name in ROWS:
        figures = payload["evaluation"][task]
        if figures.get("class_highlights") is not None:
            lines += [f"{task_name}, {line}" for line in describe_highlights(figures["class_highlights"])]
        if "site_mixing" in figures:
            lines.append(f"{task_name}, {_site_mixing_line(figures['site_mixing'])}")
    return lines


def _site_mixing_line(mixing: dict | None) -> str:
    if mixing is None:
        return "site mixing: no site column"
    ci = mixing["ci95"]
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
    per_site = ", ".join(f"{site} {_figure(f['trained'])}" for site, f in mixing["per_site"].items())
    return (f"{mixing['key']} (1.0 = no {mixing['column']} preference): trained {_figure(mixing['trained'])}{interval}, "
            f"mean pooling {_figure(mixing['meanpool'])}; per query {mixing['column']}: {per_site}")


def demo(out: Path = typer.Option(Path("threads-search-demo"), "--out", help="Folder for the cohort, the atlas and the report."),
         quick: bool = flag("--quick", help="A small cohort (60 patients) for a smoke test: seconds, figures not meaningful."),
         seed: int = typer.Option(0, "--seed", help="Seed of the cohort, the training and the bootstrap."),
         quiet: bool = flag("--quiet", "-q", help="Only the summary table.")) -> None:
    """The whole pipeline on a generated cohort: generate, ingest, train, embed, index, search, evaluate.

    Re-running on a finished demo folder shows its summary again; an interrupted one is started over.
    """
    from threads_search.cli.search_commands import render_hits
    from threads_search.demo.run import run_demo

    terminal = _Terminal(quiet)
    try:
        report = run_demo(out, quick=quick, seed=seed, echo=terminal.echo, progress=terminal.progress,
                          show_search=lambda result: terminal.echo(_indent(render_hits(result, "table"))))
    finally:
        terminal.close_bar()
    if report.already_finished:
        typer.echo(f"{out} already holds this finished demo ({report.payload['finished_at']}); "
                   f"its summary (delete the folder to run it again):")
    typer.echo(render_summary(report.payload))


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())
