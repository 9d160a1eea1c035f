"""Molecular encoders aligned to a FROZEN slide space, against the jointly trained model.

On the demo cohort (SPEC §8; held-out sites), per seed, in one run:
- joint: the demo's jointly trained model (slide ABMIL + expression MLP, `threads-abmil-cpu`);
- frozen spaces: mean pooling, a FEATHER-layout gated-attention pooler with seeded random
  weights (written as a MIL-Lab safetensors file and loaded with `--weights`), and the joint
  model's own slide encoder (a ceiling for the method);
- for each frozen space: its slide -> slide mAP@5, then an expression encoder aligned to it
  with `train --slide-encoder` (training sites only) and its expression -> slide mAP@5;
- chance, and the frozen mean pooling's own expression -> slide (chance by construction).
Relevant = same subtype, mAP@5 as Patho-Bench defines it, 95% CIs from a patient bootstrap.

    python benchmarks/bench_frozen_alignment.py --seeds 0 1 2

Writes benchmarks/results/frozen_alignment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def random_feather_file(path: Path, in_dim: int, seed: int) -> Path:
    """MIL-Lab ABMIL (FEATHER) key layout, PyTorch's default Linear initialisation, seeded."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(seed)
    layers = {"model.patch_embed.0": nn.Linear(in_dim, 512), "model.global_attn.attention_a.0": nn.Linear(512, 384),
              "model.global_attn.attention_b.0": nn.Linear(512, 384), "model.global_attn.attention_c": nn.Linear(384, 1)}
    state = {f"{prefix}.{name}": tensor.detach().contiguous() for prefix, layer in layers.items()
             for name, tensor in layer.state_dict().items()}
    save_file(state, str(path))
    return path


def evaluate(atlas, model_id: str, query_modality: str, n_bootstrap: int, seed: int) -> dict:
    from threads_search.demo.run import HELDOUT_SQL, LABEL
    from threads_search.jobs.evaluate import evaluate_atlas

    report = evaluate_atlas(atlas, LABEL, HELDOUT_SQL, HELDOUT_SQL, query_modality=query_modality, target="slides",
                            ks=(5,), n_bootstrap=n_bootstrap, seed=seed, model_id=model_id).to_json()
    return {"mAP@5": report["metrics"]["mAP@5"], "ci95": report["ci95"].get("mAP@5"),
            "chance": report["chance"]["metrics"]["mAP@5"], "n_queries": report["n_queries"]}


def run_seed(seed: int, n_bootstrap: int, folder: Path) -> dict:
    import torch

    from threads_search.atlas.store import init_atlas
    from threads_search.demo.run import LABEL, TRAIN_SQL, demo_settings
    from threads_search.ingest.profiles import ingest_expression
    from threads_search.ingest.slides import ingest_slides
    from threads_search.jobs.embed import embed_atlas, resolve_embed_model
    from threads_search.synthetic.cohort import generate_cohort
    from threads_search.training.frozen import train_aligned_model
    from threads_search.training.job import train_atlas_model

    torch.set_num_threads(1)  # as the demo does (see demo.run._torch_threads)
    settings = demo_settings(quick=False, seed=seed)
    files = generate_cohort(folder / "cohort", settings.cohort)
    timings, out = {}, {}
    with init_atlas(folder / "atlas") as atlas:
        ingest_slides(atlas, [files.features_dir], files.slides_csv)
        ingest_expression(atlas, files.expression_csv, files.samples_csv)
        started = time.perf_counter()
        joint = train_atlas_model(atlas, settings.training, TRAIN_SQL, LABEL)
        timings["joint_training_s"] = round(time.perf_counter() - started, 1)
        feather_id, _ = resolve_embed_model(atlas, "feather", random_feather_file(folder / "feather.safetensors",
                                                                                  settings.cohort.feature_dim, seed))
        frozen = {"mean pooling": joint.baseline_id, "FEATHER layout, random weights": feather_id,
                  "joint model's slide encoder": joint.model_id}
        for model_id in {joint.model_id, joint.baseline_id, feather_id}:
            embed_atlas(atlas, model_id)
        joint_expression = evaluate(atlas, joint.model_id, "expression", n_bootstrap, seed)
        out["joint (slide + expression trained together)"] = {
            "slide_to_slide": evaluate(atlas, joint.model_id, "slides", n_bootstrap, seed),
            "expression_to_slide": joint_expression}
        out["mean pooling, untrained profile side"] = {
            "expression_to_slide": evaluate(atlas, joint.baseline_id, "expression", n_bootstrap, seed)}
        # Alignment: the demo's optimiser settings, with the trainer's early stopping on validation.
        config = replace(settings.training, epochs=40, patience=8)
        for name, slide_model_id in frozen.items():
            started = time.perf_counter()
            aligned = train_aligned_model(atlas, slide_model_id, config, TRAIN_SQL, LABEL)
            timings[f"align[{name}]_s"] = round(time.perf_counter() - started, 1)
            embed_atlas(atlas, aligned.model_id)
            out[f"frozen {name} + aligned expression encoder"] = {
                "slide_to_slide": evaluate(atlas, slide_model_id, "slides", n_bootstrap, seed),
                "expression_to_slide": evaluate(atlas, aligned.model_id, "expression", n_bootstrap, seed),
                "best_epoch": aligned.best_epoch, "epochs_run": len(aligned.history)}
    return {"rows": out, "chance": joint_expression["chance"], "timings": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            results[f"seed{seed}"] = result = run_seed(seed, args.bootstrap, Path(folder))
        print(f"seed {seed} (chance mAP@5 {result['chance']:.3f}; {result['timings']})", flush=True)
        for name, row in result["rows"].items():
            slide = row.get("slide_to_slide", {}).get("mAP@5")
            print(f"  {name:58s} expression->slide {row['expression_to_slide']['mAP@5']:.3f}"
                  + (f"   slide->slide {slide:.3f}" if slide is not None else ""), flush=True)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/bench_frozen_alignment.py --seeds " + " ".join(map(str, args.seeds))
    (RESULTS / "frozen_alignment.json").write_text(json.dumps(
        {"command": command, "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "results": results},
        indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()
