"""The product alone on an existing query atlas: per filter, two passes of the same single queries
(the first pass warms the memory-mapped index pages and builds the filter; the second is warm).

    python benchmarks/query_atlas.py --n 1000000 --out /tmp/atlas-1e6
    python benchmarks/warm_filters.py --atlas /tmp/atlas-1e6 --n 1000000 --queries 30

A quick check beside bench_query_path.py (which compares against the other methods but needs
an hour and 15 GB at 10^6). Writes benchmarks/results/<--name, default warm_filters>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_atlas import FILTERS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="slides in the atlas")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--name", default="warm_filters")
    args = parser.parse_args()
    atlas = open_atlas(args.atlas, read_only=True)
    step = max(1, args.n // args.queries)
    slides = [f"SLIDE-{row:07d}" for row in range(11, args.n, step)][: args.queries]
    report = {"command": "python benchmarks/warm_filters.py " + " ".join(sys.argv[1:]),
              "load_average_before": os.getloadavg(), "filters": {}}
    for name, where in FILTERS.items():
        options = SearchOptions(k=10, where=where)
        passes = []
        for _ in range(2):
            times = []
            for slide in slides:
                started = time.perf_counter()
                search_atlas(atlas, Query(slide_id=slide), options)
                times.append(time.perf_counter() - started)
            passes.append({"p50_ms": round(1e3 * float(np.median(times)), 2),
                           "p99_ms": round(1e3 * float(np.percentile(times, 99)), 2)})
        report["filters"][name] = passes
        print(f"{name:>4}: first pass p50 {passes[0]['p50_ms']} ms, warm p50 {passes[1]['p50_ms']} ms "
              f"(p99 {passes[1]['p99_ms']} ms)", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
