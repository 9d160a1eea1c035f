"""How long does `threads-search demo` take, and how far ahead of mean pooling and chance is
the trained model on the held-out sites? One full demo per seed, in a temporary folder.

    python benchmarks/bench_demo.py --seeds 0 1 2

Records, per seed: wall time per stage, the summary figures (mAP@5, Acc@5, MV@5 of the
trained model, mean pooling and chance for slide -> slide and expression -> slide) and the
prototype classifier's balanced accuracy. Writes benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from threads_search.demo.run import run_demo

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            report = run_demo(Path(folder) / "demo", quick=args.quick, seed=seed)
        payload = report.payload
        results[f"seed{seed}"] = {"timings_s": payload["timings_s"], "summary": payload["summary"],
                                  "best_epoch": payload["models"]["best_epoch"],
                                  "n_heldout_slides": payload["evaluation"]["slide_to_slide"]["n_queries"]}
        summary = payload["summary"]
        print(f"seed {seed}: {payload['timings_s']['total']:.0f} s; mAP@5 slide->slide "
              f"{summary['slide_to_slide']['trained']['mAP@5']:.3f} (mean pooling "
              f"{summary['slide_to_slide']['meanpool']['mAP@5']:.3f}, chance {summary['slide_to_slide']['chance']['mAP@5']:.3f}), "
              f"expression->slide {summary['expression_to_slide']['trained']['mAP@5']:.3f}; prototype balanced accuracy "
              f"{summary['prototype_balanced_accuracy']:.3f}", flush=True)
    command = "python benchmarks/bench_demo.py --seeds " + " ".join(map(str, args.seeds)) + (" --quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(
        {"command": command, "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "results": results},
        indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
