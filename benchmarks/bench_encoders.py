"""Benchmark: slide encoding and contrastive training on CPU, beside the plain PyTorch way.

    python benchmarks/bench_encoders.py [--threads 1] [--quick]

1. `ABMILSlideEncoder.encode_bag` (streaming, chunks of 4096 patches) on bags of 1k, 10k and
   100k patches (768-d, the `threads-abmil` recipe: hidden 512, 2 heads), against what a user
   would naively write: the same module called once on the whole bag,
   `model(torch.from_numpy(bag)[None])` under `torch.no_grad()`. Each case runs in a fresh
   subprocess so its peak resident memory (ru_maxrss, minus the process's RSS before the
   call, the bag already loaded) is its own; times are the best of a few repeats, since the
   machine may be shared.
2. Training throughput (pairs/s) of `train_model` (the `threads-abmil-cpu` recipe, packed
   batches of 32 slides, 2048 patches per slide at most) against a plain loop that runs the
   same model, loss and optimiser but encodes the batch's slides one at a time
   (`encoder(bag[None])` per slide, as a user without padding / masking would). Both run a
   few times, alternating; the best throughput of each is kept.

Prints a table and records the run in benchmarks/results/encoders.json under its thread count
(`runs["threads=1"]`, ...), so runs with different `--threads` sit side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "encoders.json"
IN_DIM = 768


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def encode_worker(n_patches: int, method: str, threads: int, repeats: int) -> dict:
    """Runs in its own process: encode one bag `repeats` times, report time and peak memory."""
    import torch

    from threads_search.encoders.registry import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = create_model("threads-abmil", in_dim=IN_DIM).slide_encoder.eval()
    # float32 straight away: a float64 temporary would raise the peak before the timed call.
    bag = np.random.default_rng(0).standard_normal((n_patches, IN_DIM), dtype=np.float32)
    encoder.encode_bag(bag[:64])  # warm-up: first-call allocations are not the method's
    before = _rss_mib()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        if method == "streaming":
            embedding = encoder.encode_bag(bag)
        else:
            with torch.no_grad():
                embedding = encoder(torch.from_numpy(bag)[None])[0]
        times.append(time.perf_counter() - started)
    seconds = min(times)
    return {"n_patches": n_patches, "method": method, "seconds_per_slide": seconds, "slides_per_s": 1 / seconds,
            "median_seconds": float(np.median(times)), "repeats": repeats,
            "peak_extra_mib": max(_peak_rss_mib() - before, 0.0), "checksum": float(embedding.sum())}


def run_encode_case(n_patches: int, method: str, threads: int, repeats: int) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--n", str(n_patches), "--threads", str(threads),
               "--repeats", str(repeats)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def synthetic_training_set(n_slides: int, seed: int = 0):
    from threads_search.training.paired_data import PairedDataset, PairedProfiles, SlideRecord

    rng = np.random.default_rng(seed)
    patients = [f"P{i:04d}" for i in range(n_slides)]
    slides = [SlideRecord(f"S{i:04d}", p, rng.standard_normal((int(rng.integers(200, 2000)), IN_DIM), dtype=np.float32))
              for i, p in enumerate(patients)]
    expression = PairedProfiles(patients, rng.gamma(2.0, 5.0, size=(n_slides, 2000)), [f"G{i}" for i in range(2000)], "tpm")
    return PairedDataset(slides, expression)


def bench_trainer(dataset, epochs: int) -> dict:
    from threads_search.training.trainer import TrainingConfig, train_model

    config = TrainingConfig(recipe="threads-abmil-cpu", epochs=epochs, batch_size=32, val_fraction=0.0, device="cpu")
    result = train_model(dataset, config)
    seconds = sum(record.seconds for record in result.history)
    remainder = len(result.train_patients) % 32
    pairs_per_epoch = len(result.train_patients) - (remainder if remainder < 2 else 0)  # a batch of 1 is skipped
    pairs = pairs_per_epoch * epochs
    return {"method": "train_model (packed batches)", "pairs_per_s": pairs / seconds, "seconds": seconds, "pairs": pairs}


def bench_plain_loop(dataset, epochs: int) -> dict:
    """Same model, loss, optimiser and sampling; slides encoded one at a time."""
    import torch
    import torch.nn.functional as F

    from threads_search.encoders.molecular import ExpressionNormaliser
    from threads_search.encoders.registry import create_model
    from threads_search.training.paired_data import sample_bag
    from threads_search.training.trainer import clip_loss

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model("threads-abmil-cpu", in_dim=IN_DIM)
    table = dataset.expression
    model.attach_expression(ExpressionNormaliser.fit(table.matrix, table.genes, table.scale))
    profiles = torch.from_numpy(model.expression_normaliser.transform(table.matrix, table.genes)[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    model.train()
    pairs, started = 0, time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(dataset.slides))
        for start in range(0, len(order) - 1, 32):
            batch = order[start:start + 32]
            slide_embeddings = torch.cat([
                model.slide_encoder(torch.from_numpy(sample_bag(dataset.slides[i], 2048, rng))[None]) for i in batch])
            profile_embeddings = model.expression_encoder(profiles[batch])
            loss = clip_loss(F.normalize(slide_embeddings, dim=-1), F.normalize(profile_embeddings, dim=-1),
                             model.logit_scale.exp())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            pairs += len(batch)
    seconds = time.perf_counter() - started
    return {"method": "plain loop (one slide per forward)", "pairs_per_s": pairs / seconds, "seconds": seconds,
            "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--worker", choices=["streaming", "one_pass"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(encode_worker(args.n, args.worker, args.threads, args.repeats)))
        return

    import torch

    torch.set_num_threads(args.threads)
    sizes = {1_000: 10, 10_000: 4, 100_000: 2} if not args.quick else {1_000: 2, 10_000: 1}
    encode_rows = []
    for n_patches, repeats in sizes.items():
        streaming = run_encode_case(n_patches, "streaming", args.threads, repeats)
        one_pass = run_encode_case(n_patches, "one_pass", args.threads, repeats)
        encode_rows.append({"n_patches": n_patches, "streaming": streaming, "one_pass": one_pass,
                            "speed_ratio": streaming["slides_per_s"] / one_pass["slides_per_s"],
                            "memory_ratio": streaming["peak_extra_mib"] / max(one_pass["peak_extra_mib"], 1e-9),
                            "max_abs_difference_of_sums": abs(streaming["checksum"] - one_pass["checksum"])})
    dataset = synthetic_training_set(64 if not args.quick else 32)
    epochs = 2 if not args.quick else 1
    trials = 3 if not args.quick else 1
    trainer_runs, plain_runs = [], []
    for _ in range(trials):
        trainer_runs.append(bench_trainer(dataset, epochs))
        plain_runs.append(bench_plain_loop(dataset, epochs))
    trainer = max(trainer_runs, key=lambda run: run["pairs_per_s"])
    plain = max(plain_runs, key=lambda run: run["pairs_per_s"])

    print(f"encode_bag, 768-d, threads-abmil (hidden 512), {args.threads} thread(s)")
    print(f"{'patches':>8} | {'streaming slides/s':>18} {'peak MiB':>9} | {'one-pass slides/s':>17} {'peak MiB':>9} | "
          f"{'speed x':>7} {'memory x':>8}")
    for row in encode_rows:
        s, o = row["streaming"], row["one_pass"]
        print(f"{row['n_patches']:>8} | {s['slides_per_s']:>18.2f} {s['peak_extra_mib']:>9.0f} | "
              f"{o['slides_per_s']:>17.2f} {o['peak_extra_mib']:>9.0f} | {row['speed_ratio']:>7.2f} "
              f"{row['memory_ratio']:>8.2f}")
    print(f"\ntraining, threads-abmil-cpu, {len(dataset.slides)} slides of 200-2000 patches, batch 32, {epochs} epoch(s), "
          f"best of {trials}")
    for row in (trainer, plain):
        print(f"{row['method']:>36}: {row['pairs_per_s']:8.1f} pairs/s ({row['pairs']} pairs in {row['seconds']:.1f} s)")
    print(f"{'ratio':>36}: {trainer['pairs_per_s'] / plain['pairs_per_s']:8.2f}x")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    run = {
        "command": "python benchmarks/bench_encoders.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": __import__("os").cpu_count(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": args.threads, "python": platform.python_version()},
        "encode_bag": encode_rows,
        "training": {"train_model": trainer, "plain_loop": plain,
                     "speed_ratio": trainer["pairs_per_s"] / plain["pairs_per_s"]},
    }
    report = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    report.setdefault("runs", {})[f"threads={args.threads}" + ("-quick" if args.quick else "")] = run
    temp = RESULTS.with_name(RESULTS.name + ".tmp")
    temp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    temp.replace(RESULTS)
    print(f"\nwritten {RESULTS}")


if __name__ == "__main__":
    main()
