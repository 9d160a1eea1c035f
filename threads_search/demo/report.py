"""Pieces of the demo's report (`report/demo.json`): the figures the summary table shows,
taken from the evaluator's own JSON, and the training-curve plot."""

from __future__ import annotations

from pathlib import Path

SUMMARY_METRICS = ("mAP", "Acc", "MV")
ENCODERS = ("trained", "meanpool", "chance")


def evaluation_summary(payload: dict, k: int, json_path: Path, plots: list[Path]) -> dict:
    """The K-cutoff figures of one `AtlasEvaluation.to_json()` payload, per encoder.

    Returns {"trained": {"mAP@5": ...}, "meanpool": {...} | None, "chance": {...},
    "ci95": {"mAP@5": [lo, hi], ...} (trained model), "per_class": {class: {...}},
    "class_highlights": the worst and rare classes by mAP@K (trained model), "site_mixing":
    see `site_mixing_summary`, counts, files}. Chance is the evaluator's analytic chance
    level, copied unchanged.
    """
    names = [f"{metric}@{k}" for metric in SUMMARY_METRICS]
    baselines = payload.get("baselines", {})
    meanpool = baselines.get("meanpool")

    def pick(metrics: dict | None) -> dict | None:
        return None if metrics is None else {name: metrics.get(name) for name in names}

    return {
        "query_modality": payload["query_modality"],
        "target": payload["target"],
        "n_queries": payload["n_queries"],
        "n_database": payload["n_database"],
        "trained": pick(payload["metrics"]),
        "meanpool": pick(meanpool),
        "chance": pick(baselines["chance"]),
        "ci95": {name: payload["ci95"].get(name) for name in names},
        "per_class": {label: {"n_queries": figures.get("n_queries"), "n_database": figures.get("n_database"),
                              "n_patients": figures.get("n_patients"), **{name: figures.get(name) for name in names}}
                      for label, figures in payload["per_class"].items()},
        "class_highlights": payload["class_highlights"][f"mAP@{k}"],
        "site_mixing": site_mixing_summary(payload, k),
        "notes": list(payload.get("notes", [])) + list(payload.get("warnings", [])),
        "json": str(json_path),
        "plots": [str(p) for p in plots],
    }


def site_mixing_summary(payload: dict, k: int) -> dict | None:
    """Site mixing at K of the trained model (with its CI) and of mean pooling, overall and per
    query site: {"column", "key", "trained", "ci95", "meanpool", "per_site": {site: {"trained",
    "meanpool", "n_queries"}}, "n_undefined"}; None when the evaluation had no site column."""
    trained = payload.get("site_mixing")
    if trained is None:
        return None
    key = f"site_mixing@{k}"
    meanpool = ((payload.get("baseline_details") or {}).get("meanpool") or {}).get("site_mixing")
    return {
        "column": trained["column"],
        "key": key,
        "trained": trained["overall"].get(key),
        "ci95": trained["ci95"].get(key),
        "meanpool": meanpool["overall"].get(key) if meanpool else None,
        "per_site": {site: {"trained": figures.get(key), "n_queries": figures["n_queries"],
                            "meanpool": (meanpool["per_site"].get(site) or {}).get(key) if meanpool else None}
                     for site, figures in trained["per_site"].items()},
        "n_undefined": trained["n_undefined"],
    }


def plot_training_curve(history: list, path: Path) -> Path:
    """Training loss and validation mAP per epoch (history: training EpochRecords) -> PNG."""
    from matplotlib.figure import Figure

    from threads_search.atomic import atomic_path

    epochs = [record.epoch for record in history]
    figure = Figure(figsize=(6.4, 3.6))
    loss_axes = figure.add_subplot(1, 1, 1)
    loss_axes.plot(epochs, [record.train_loss for record in history], color="tab:blue", marker="o", markersize=3)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss (symmetric InfoNCE)", color="tab:blue")
    validation = [(record.epoch, record.val_map) for record in history if record.val_map is not None]
    if validation:
        map_axes = loss_axes.twinx()
        map_axes.plot(*zip(*validation), color="tab:orange", marker="s", markersize=3)
        map_axes.set_ylabel("validation mAP@5 (profile -> slide)", color="tab:orange")
        map_axes.set_ylim(0, 1)
    figure.suptitle("contrastive training on the training sites")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path
