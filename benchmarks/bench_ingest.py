"""Ingest rate and peak memory for N generated TRIDENT files, beside what a user would write instead.

Three whole processes, one run, on the same files:
  threads-search   `ingest_slides` (validates every file: streams features for the NaN/Inf check)
  read-bound       a plain loop that reads each file's features with h5py and checks them (the I/O floor)
  load-all         the naive script: read every bag into a list in memory, as a user building one table would

    python benchmarks/bench_ingest.py --slides 1000 --patches 2000

Writes benchmarks/results/ingest.json and prints a table with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

WORKERS = {
    "threads-search": """
from threads_search.atlas.store import init_atlas
from threads_search.ingest.slides import ingest_slides
atlas = init_atlas(sys.argv[2])
report = ingest_slides(atlas, [sys.argv[1]])
atlas.close()
count = report.added
""",
    "read-bound": """
import h5py, numpy as np
count = 0
for path in sorted(Path(sys.argv[1]).iterdir()):
    with h5py.File(path, "r") as handle:
        features = handle["features"][:]
    if not np.isfinite(features).all():
        raise SystemExit(f"{path}: NaN")
    count += 1
""",
    "load-all": """
import h5py, numpy as np
bags = []
for path in sorted(Path(sys.argv[1]).iterdir()):
    with h5py.File(path, "r") as handle:
        bags.append(handle["features"][:].astype(np.float32))
count = len(bags)
""",
}


def generate(folder: Path, n_slides: int, n_patches: int, dim: int, seed: int = 0) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    block = rng.normal(size=(n_patches, dim)).astype(np.float16)
    coords = np.stack([np.arange(n_patches) % 64 * 1024, np.arange(n_patches) // 64 * 1024], axis=1).astype(np.int64)
    for index in range(n_slides):
        with h5py.File(folder / f"slide-{index:05d}.h5", "w") as handle:
            handle["features"] = np.roll(block, index, axis=0)  # distinct content per file, no generation cost
            dataset = handle.create_dataset("coords", data=coords)
            dataset.attrs.update({"patch_size": 512, "patch_size_level0": 1024, "level0_magnification": 40,
                                  "target_magnification": 20})
            handle["features"].attrs["encoder"] = "conch_v15"


def run_worker(name: str, features: Path, scratch: Path) -> dict:
    script = "import sys, time\nfrom pathlib import Path\nstart = time.perf_counter()\n" + WORKERS[name] + \
             "\nimport resource\nprint(count, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    output = subprocess.run([sys.executable, "-c", script, str(features), str(scratch / f"atlas-{name}")],
                            check=True, capture_output=True, text=True).stdout.split()
    count, seconds, peak_kib = int(output[0]), float(output[1]), int(output[2])
    return {"slides": count, "seconds": seconds, "slides_per_second": count / seconds, "peak_rss_mib": peak_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=1000)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=768)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        features = scratch / "features"
        features.mkdir()
        started = time.perf_counter()
        generate(features, arguments.slides, arguments.patches, arguments.dim)
        data_gib = sum(p.stat().st_size for p in features.iterdir()) / 2**30
        print(f"generated {arguments.slides} files x {arguments.patches} patches x {arguments.dim} float16 "
              f"({data_gib:.2f} GiB) in {time.perf_counter() - started:.1f} s", flush=True)
        results = {name: run_worker(name, features, scratch) for name in WORKERS}
    ours = results["threads-search"]
    print(f"{'method':<16}{'slides/s':>10}{'peak MiB':>10}{'rate vs ours':>14}{'memory vs ours':>16}")
    for name, result in results.items():
        print(f"{name:<16}{result['slides_per_second']:>10.1f}{result['peak_rss_mib']:>10.0f}"
              f"{result['slides_per_second'] / ours['slides_per_second']:>14.2f}{result['peak_rss_mib'] / ours['peak_rss_mib']:>16.2f}")
    RESULTS.mkdir(exist_ok=True)
    payload = {"config": vars(arguments) | {"data_gib": data_gib, "cpus": os.cpu_count()}, "results": results,
               "command": "python benchmarks/bench_ingest.py " + " ".join(sys.argv[1:])}
    (RESULTS / "ingest.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
