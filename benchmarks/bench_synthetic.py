"""Is the generated cohort a meaningful test? Write time, and held-out subtype retrieval of
mean pooling, 'oracle attention' (mean of the true tumour patches), raw expression, and the
contrastively trained ABMIL model (optional, `--train-epochs N`, a few CPU minutes).

    python benchmarks/bench_synthetic.py --seeds 0 1 2
    python benchmarks/bench_synthetic.py --seeds 0 --train-epochs 15

Queries and database are the held-out sites' first slides (one per patient); a hit is
relevant when its subtype matches. Metrics: 1-NN accuracy (leave-one-out) and mAP@5
(Patho-Bench: mean_q sum_{j<=5} P@j rel_j / 5). Writes benchmarks/results/synthetic.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from threads_search.synthetic.cohort import demo_config, generate_cohort

RESULTS = Path(__file__).resolve().parent / "results"


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> dict[str, float]:
    """Leave-one-out cosine retrieval (after centring): 1-NN accuracy and mAP@k."""
    centred = vectors - vectors.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    ranked = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    relevant = labels[ranked] == labels[:, None]
    precision_at_j = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    average_precision = (precision_at_j * relevant).sum(axis=1) / k
    return {
        "acc@1": float(relevant[:, 0].mean()),
        f"mAP@{k}": float(np.mean(average_precision)),
        f"per_class_mAP@{k}": {str(c): round(float(average_precision[labels == c].mean()), 3) for c in np.unique(labels)},
    }


def chance_metrics(labels: np.ndarray, k: int = 5, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """The same metrics for random vectors (an empirical chance level)."""
    rng = np.random.default_rng(seed)
    runs = [retrieval_metrics(rng.standard_normal((len(labels), 16)), labels, k) for _ in range(draws)]
    return {key: float(np.mean([run[key] for run in runs])) for key in runs[0] if not key.startswith("per_class")}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_expression(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        genes = next(reader)[1:]
        rows = list(reader)
    return [r[0] for r in rows], genes, np.array([r[1:] for r in rows], dtype=float)


def read_bag(files, slide_id: str) -> np.ndarray:
    with h5py.File(files.features_dir / f"{slide_id}.h5", "r") as handle:
        return handle["features"][:]


def oracle_tumour_means(files, slide_ids: list[str]) -> np.ndarray:
    """'Oracle attention': each slide's mean over its true tumour patches, (n_slides, feature_dim)
    float32 (needs the generator's `files.truth`, so only right after `generate_cohort`)."""
    return np.stack([read_bag(files, slide_id).astype(np.float32)[files.truth.tumour_masks[slide_id]].mean(axis=0)
                     for slide_id in slide_ids])


def baseline_results(files) -> tuple[dict, list[dict]]:
    slides = [r for r in read_rows(files.slides_csv) if r["cohort"] == "heldout" and r["slide_id"].endswith("DX1")]
    labels = np.array([r["subtype"] for r in slides])
    mean_pooled = [read_bag(files, row["slide_id"]).astype(np.float32).mean(axis=0) for row in slides]
    tumour_pooled = oracle_tumour_means(files, [row["slide_id"] for row in slides])
    samples = {r["sample_id"]: r for r in read_rows(files.samples_csv)}
    sample_ids, _, tpm = read_expression(files.expression_csv)
    keep = [i for i, s in enumerate(sample_ids) if samples[s]["cohort"] == "heldout"]
    log_tpm = np.log1p(tpm[keep])
    log_tpm = (log_tpm - log_tpm.mean(axis=0)) / (log_tpm.std(axis=0) + 1e-6)
    expression_labels = np.array([samples[sample_ids[i]]["subtype"] for i in keep])
    return {
        "n_heldout_slides": len(slides),
        "chance": chance_metrics(labels),
        "mean_pooling": retrieval_metrics(np.array(mean_pooled), labels),
        "oracle_tumour_mean": retrieval_metrics(tumour_pooled, labels),
        "raw_expression": retrieval_metrics(log_tpm, expression_labels),
    }, slides


def trained_results(files, heldout_slides: list[dict], epochs: int, seed: int) -> dict:
    """Train threads-abmil-cpu on the training sites, embed the held-out first slides."""
    import torch

    from threads_search.training.paired_data import PairedDataset, PairedProfiles, SlideRecord
    from threads_search.training.trainer import TrainingConfig, train_model

    torch.set_num_threads(1)
    slides = [r for r in read_rows(files.slides_csv) if r["cohort"] == "train"]
    samples = {r["sample_id"]: r for r in read_rows(files.samples_csv)}
    sample_ids, genes, tpm = read_expression(files.expression_csv)
    train_rows = [i for i, s in enumerate(sample_ids) if samples[s]["cohort"] == "train"]
    dataset = PairedDataset(
        slides=[SlideRecord(r["slide_id"], r["patient_id"], read_bag(files, r["slide_id"])) for r in slides],
        expression=PairedProfiles([samples[sample_ids[i]]["patient_id"] for i in train_rows], tpm[train_rows],
                                genes, scale="tpm"),
        labels={r["patient_id"]: r["subtype"] for r in slides},
    )
    config = TrainingConfig(recipe="threads-abmil-cpu", epochs=epochs, patches_per_slide=512, seed=seed,
                            device="cpu", patience=epochs)
    started = time.perf_counter()
    result = train_model(dataset, config)
    seconds = time.perf_counter() - started
    model = result.model
    embeddings = np.stack([model.encode_slide(read_bag(files, r["slide_id"]).astype(np.float32))
                           for r in heldout_slides])
    labels = np.array([r["subtype"] for r in heldout_slides])
    return {"trained_slide_encoder": retrieval_metrics(embeddings, labels),
            "training_seconds": round(seconds, 1), "best_epoch": result.best_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-epochs", type=int, default=0)
    args = parser.parse_args()
    report = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            files = generate_cohort(folder, demo_config(seed))
            write_seconds = time.perf_counter() - started
            size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20
            results, heldout_slides = baseline_results(files)
            if args.train_epochs:
                results.update(trained_results(files, heldout_slides, args.train_epochs, seed))
        results.update({"write_seconds": round(write_seconds, 2), "written_mb": round(size_mb, 1),
                        "summary": files.summary.to_dict()})
        report[f"seed{seed}"] = results
        print(f"seed {seed}: write {write_seconds:.1f} s, {size_mb:.0f} MB, {results['n_heldout_slides']} held-out slides")
        for name in ("chance", "mean_pooling", "oracle_tumour_mean", "raw_expression", "trained_slide_encoder"):
            if name in results:
                metrics = "  ".join(f"{key} {value:.3f}" for key, value in results[name].items()
                                    if not isinstance(value, dict))
                per_class = next((value for value in results[name].values() if isinstance(value, dict)), None)
                print(f"  {name:<22} {metrics}" + (f"  per class: {per_class}" if per_class else ""))
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/bench_synthetic.py " + " ".join(
        ["--seeds", *map(str, args.seeds)] + (["--train-epochs", str(args.train_epochs)] if args.train_epochs else []))
    (RESULTS / "synthetic.json").write_text(json.dumps({"command": command, "results": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
