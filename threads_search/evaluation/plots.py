"""PNG figures of an evaluation: per-class mAP@K, precision@K curves, embedding projection,
few-shot curve.

matplotlib is imported inside the functions and figures are drawn on `matplotlib.figure.Figure`
objects (Agg canvas, no pyplot), so importing this module is cheap and nothing depends on a
display or on pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from threads_search.errors import InputError
from threads_search.evaluation._inputs import as_keys, as_vectors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from threads_search.evaluation.fewshot import FewShotCurve
    from threads_search.evaluation.report import MetricTable, RetrievalReport

_DPI = 150
_CHANCE_STYLE = {"color": "0.55", "linestyle": "--"}


def write_plots(
    reports: RetrievalReport | Sequence[RetrievalReport],
    out_dir: str | Path,
    *,
    k: int | None = None,
    embeddings: Any | None = None,
    embedding_labels: Sequence[Any] | None = None,
    embedding_sites: Sequence[Any] | None = None,
    projection: str = "auto",
    fewshot: FewShotCurve | None = None,
) -> list[Path]:
    """Write the evaluation figures into out_dir and return their paths.

    reports: the model first, then baselines (e.g. mean pooling); chance is drawn from the
    first report. k: cutoff of the per-class bars (default: the largest K reported <= 10).
    embeddings (n, d) with embedding_labels (n,) and optionally embedding_sites (n,): drawn
    as a 2-D projection ('pca', 'umap', or 'auto' = UMAP when importable, else PCA).
    fewshot: a FewShotCurve to plot as well.
    """
    report_list = [reports] if not isinstance(reports, Sequence) else list(reports)
    if not report_list:
        raise InputError("reports: give at least one RetrievalReport to plot")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cutoff = _bar_cutoff(report_list[0].ks, k)
    paths = [
        _save(plot_per_class_map(report_list, cutoff), out / f"per_class_mAP@{cutoff}.png"),
        _save(plot_precision_curves(report_list), out / "precision_at_k.png"),
    ]
    if embeddings is not None:
        if embedding_labels is None:
            raise InputError("embedding_labels: required when embeddings are given")
        projected = plot_embedding_projection(
            embeddings, embedding_labels, embedding_sites, projection
        )
        paths.append(_save(projected, out / "embedding_projection.png"))
    if fewshot is not None:
        paths.append(_save(plot_fewshot_curve(fewshot), out / "fewshot_curve.png"))
    return paths


def plot_per_class_map(reports: Sequence[RetrievalReport], k: int) -> Figure:
    """Grouped bars of per-class mAP@k with 95% CI error bars: each report, then chance."""
    from matplotlib.figure import Figure

    key = f"mAP@{k}"
    first = reports[0]
    classes = [c for c, row in first.model.per_class.items() if row["n_queries"] > 0]
    series: list[tuple[str, MetricTable]] = [(r.name, r.model) for r in reports]
    series.append(("chance", first.chance))
    width = 0.8 / len(series)
    figure = Figure(figsize=(max(6.0, 0.45 * len(classes) * len(series) + 2.0), 4.8))
    axes = figure.subplots()
    positions = np.arange(len(classes))
    for i, (name, table) in enumerate(series):
        values = np.array([table.per_class[c][key] for c in classes])
        bounds = np.array([table.per_class_ci95[c][key] for c in classes]).reshape(-1, 2)
        errors = np.nan_to_num(np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values])))
        style = {"color": _CHANCE_STYLE["color"], "hatch": "//"} if name == "chance" else {}
        offset = (i - (len(series) - 1) / 2) * width
        axes.bar(positions + offset, values, width, yerr=errors, capsize=2, label=name, **style)
    axes.set_xticks(positions)
    axes.set_xticklabels(
        [f"{c}\n(n={first.model.per_class[c]['n_queries']})" for c in classes],
        rotation=45 if len(classes) > 8 else 0,
        ha="right" if len(classes) > 8 else "center",
    )
    axes.set_ylim(0, 1.18)  # headroom so the legend never covers a bar
    axes.set_xlabel("class of the query (n = queries)")
    axes.set_ylabel(f"mAP@{k}")
    axes.set_title(f"Per-class mAP@{k}, 95% CI by patient bootstrap ({first.n_queries} queries)")
    axes.legend(loc="upper center", fontsize="small", ncol=len(series), frameon=False)
    figure.tight_layout()
    return figure


def plot_precision_curves(reports: Sequence[RetrievalReport]) -> Figure:
    """Mean precision@j for j = 1..max K of each report, with chance dashed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.subplots()
    for report in reports:
        curve = report.model.precision_curve
        axes.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=report.name)
    chance_curve = reports[0].chance.precision_curve
    axes.plot(np.arange(1, len(chance_curve) + 1), chance_curve, label="chance", **_CHANCE_STYLE)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("rank cutoff j")
    axes.set_ylabel("precision@j (mean over queries)")
    axes.set_title("Precision at each rank")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_embedding_projection(
    embeddings: Any,
    labels: Sequence[Any],
    sites: Sequence[Any] | None = None,
    projection: str = "auto",
) -> Figure:
    """2-D projection of (n, d) embeddings coloured by label and, beside it, by site."""
    from matplotlib.figure import Figure

    vectors = as_vectors(embeddings, "embeddings")
    panels = [("label", as_keys(labels, len(vectors), "embedding_labels"))]
    if sites is not None:
        panels.append(("site / cohort", as_keys(sites, len(vectors), "embedding_sites")))
    points, method = project_2d(vectors, projection)
    figure = Figure(figsize=(5.5 * len(panels), 5.0))
    for axes, (title, keys) in zip(np.atleast_1d(figure.subplots(1, len(panels))), panels):
        _scatter_by_category(axes, points, keys)
        axes.set_title(f"{method} of {len(vectors)} embeddings, coloured by {title}")
        axes.set_xlabel(f"{method} 1")
        axes.set_ylabel(f"{method} 2")
    figure.tight_layout()
    return figure


def project_2d(vectors: np.ndarray, projection: str = "auto") -> tuple[np.ndarray, str]:
    """(n, 2) coordinates and the method's name; PCA by SVD of the centred (n, d) vectors."""
    if projection not in ("auto", "pca", "umap"):
        raise InputError(f"projection: {projection!r} is not one of auto, pca, umap")
    if projection in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if projection == "umap":
                raise InputError("projection: 'umap' needs the umap-learn package") from None
        else:
            return umap.UMAP(n_components=2, random_state=0).fit_transform(vectors), "UMAP"
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ components[:2].T
    if coordinates.shape[1] < 2:  # one-dimensional input: draw it on a line
        coordinates = np.column_stack([coordinates, np.zeros(len(coordinates))])
    return coordinates, "PCA"


def _scatter_by_category(axes: Any, points: np.ndarray, keys: np.ndarray) -> None:
    """Scatter points with one colour and legend entry per category."""
    from matplotlib import colormaps

    categories = sorted(set(keys.tolist()))
    palette = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    for i, category in enumerate(categories):
        members = keys == category
        colour = palette(i % palette.N)
        label = f"{category} ({members.sum()})"
        axes.scatter(*points[members].T, s=10, alpha=0.7, color=colour, label=label)
    axes.legend(fontsize="x-small", markerscale=1.5, ncol=1 + len(categories) // 12, loc="best")


def plot_fewshot_curve(curve: FewShotCurve) -> Figure:
    """Balanced accuracy and macro AUROC versus shots per class, mean +- std over repeats."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.2))
    panels = (
        ("balanced_accuracy", "balanced accuracy"),
        ("macro_auroc", "macro AUROC (one-vs-rest)"),
    )
    for axes, (metric, label) in zip(figure.subplots(1, 2), panels):
        for method in curve.scores:
            mean, std = curve.summary(method, metric)
            axes.plot(curve.shots, mean, marker="o", label=method.replace("_", " "))
            axes.fill_between(curve.shots, mean - std, mean + std, alpha=0.2)
        axes.set_xscale("log", base=2)
        axes.set_xticks(curve.shots)
        axes.set_xticklabels([str(k) for k in curve.shots])
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("training examples per class (k)")
        axes.set_ylabel(label)
        axes.set_title(f"{label} vs k ({len(curve.classes)} classes)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    short = {label: n for per_k in curve.short_classes.values() for label, n in per_k.items()}
    if short:
        listed = ", ".join(f"{label} ({n})" for label, n in sorted(short.items()))
        note = f"classes with fewer than k training items use all they have: {listed}"
        figure.text(0.01, 0.01, note, fontsize="small")
    figure.tight_layout(rect=(0, 0.05 if short else 0, 1, 1))
    return figure


def _bar_cutoff(ks: Sequence[int], requested: int | None) -> int:
    """The K of the per-class bars: the one requested (must be reported) or max K <= 10."""
    if requested is not None:
        if requested not in ks:
            raise InputError(f"k: {requested} is not among the reported cutoffs {list(ks)}")
        return requested
    small = [k for k in ks if k <= 10]
    return max(small) if small else min(ks)


def _save(figure: Figure, path: Path) -> Path:
    """Write a PNG atomically (temp file + rename) and return its path."""
    from threads_search.atomic import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=_DPI)
    return path
