"""A one-off `threads-search search ATLAS --slide-id ID` from a cold process, on its own.

bench_query_path.py times the cold CLI too, but inside a process that holds LanceDB's thread
pools and gigabytes of vectors, which slows every process started beside it (`python -c pass`
0.05 s there, 0.03 s here). This times it alone, interleaved with `python -c pass` and
`python -c "import torch"`, and optionally with another site-packages folder in front
(`--also-pythonpath DIR`, e.g. a newer typer installed with `pip install --target DIR`).

    python benchmarks/query_atlas.py --n 100000 --out /tmp/atlas-1e5
    python benchmarks/bench_cold_cli.py --atlas /tmp/atlas-1e5 --repeats 9 [--also-pythonpath /tmp/typer29]

Writes benchmarks/results/<--name, default cold_cli>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, required=True, help="an atlas from benchmarks/query_atlas.py")
    parser.add_argument("--slide", default="SLIDE-0000107")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--also-pythonpath", default=None, help="also time the search with this PYTHONPATH in front")
    parser.add_argument("--name", default="cold_cli")
    args = parser.parse_args()
    cli = str(Path(sys.executable).with_name("threads-search"))
    search = [cli, "search", str(args.atlas), "--slide-id", args.slide, "-k", "10"]
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OPENBLAS_NUM_THREADS")}
    runs = {"python -c pass": ([sys.executable, "-c", "pass"], base),
            "python -c 'import torch'": ([sys.executable, "-c", "import torch"], base),
            "threads-search search --slide-id": (search, base)}
    if args.also_pythonpath:
        runs[f"threads-search search --slide-id, PYTHONPATH={args.also_pythonpath}"] = (
            search, {**base, "PYTHONPATH": args.also_pythonpath})
    load_before = os.getloadavg()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (command, env) in runs.items():
            times[name].append(timed(command, env))
    report = {"command": "python benchmarks/bench_cold_cli.py " + " ".join(sys.argv[1:]),
              "load_average_before": load_before,
              "median_s": {name: round(statistics.median(values), 3) for name, values in times.items()},
              "all_s": {name: [round(v, 3) for v in values] for name, values in times.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, median in report["median_s"].items():
        print(f"{name}: {median:.3f} s")


if __name__ == "__main__":
    main()
