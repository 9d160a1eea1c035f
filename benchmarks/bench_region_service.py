"""`POST /api/search/regions` warm, beside the same query through a freshly opened atlas (what each
request cost before the patch index was kept per opened atlas) and the cold CLI, on the quick demo.

    python benchmarks/bench_region_service.py [--queries 60] [--seed 0]

Builds the quick demo (`demo --quick`) and its patch index (`index --level patches`, every patch)
in a temporary folder, then for random boxes of 4x4 patches on random slides, interleaved:
the service in process (FastAPI's TestClient: routing, validation, JSON; no socket), the library
`search_regions` on an atlas opened for the query (index and slide table loaded each time), and
`threads-search search --region` as a new process (a tenth as many). Prints p50/p99 per path and
writes benchmarks/results/region_service.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-c", "from threads_search.cli.app import main; main()", *args], check=True,
                   capture_output=True, text=True)


def _boxes(features_dir: Path, slide_ids: list[str], n: int, seed: int) -> list[tuple[str, dict]]:
    from threads_search.readers.patch_features import read_coords

    rng = np.random.default_rng(seed)
    chosen = []
    for slide_id in rng.choice(slide_ids, n):
        coords = read_coords(features_dir / f"{slide_id}.h5")
        side = int(np.diff(np.unique(coords[:, 0]))[0])
        x, y = coords[rng.integers(coords.shape[0])]
        chosen.append((str(slide_id), {"x": int(x), "y": int(y), "w": 4 * side, "h": 4 * side}))
    return chosen


def _stats(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"n": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> None:
    from fastapi.testclient import TestClient

    from threads_search.atomic import write_json_atomic
    from threads_search.atlas.patch_indexes import patch_index_record
    from threads_search.atlas.store import open_atlas
    from threads_search.search.regions import RegionOptions, RegionQuery, search_regions
    from threads_search.service.app import create_app
    from threads_search.service.config import ServiceConfig

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        _run("demo", "--out", str(run), "--quick", "--seed", str(args.seed))
        atlas = run / "atlas"
        _run("index", str(atlas), "--level", "patches", "--quiet")
        with open_atlas(atlas, read_only=True) as opened:
            n_patches = int(patch_index_record(opened)["n_vectors"])
        slide_ids = sorted(path.stem for path in (run / "cohort" / "features").glob("*.h5"))
        boxes = _boxes(run / "cohort" / "features", slide_ids, args.queries, args.seed)
        warm, fresh, cold, same = [], [], [], True
        with TestClient(create_app(ServiceConfig(atlas=atlas))) as client:
            client.post("/api/search/regions", json={"slide_id": boxes[0][0], "region": boxes[0][1]})  # warm up
            for index, (slide_id, box) in enumerate(boxes):
                body = {"slide_id": slide_id, "region": box, "k": 10, "group_by": "slides"}
                started = time.perf_counter()
                served = client.post("/api/search/regions", json=body)
                warm.append(time.perf_counter() - started)
                if served.status_code != 200:
                    raise SystemExit(f"/api/search/regions {slide_id}: {served.status_code} {served.text[:200]}")
                started = time.perf_counter()
                with open_atlas(atlas, read_only=True) as opened:
                    result = search_regions(opened, RegionQuery(slide_id=slide_id, region=tuple(box.values())),
                                            RegionOptions(k=10, group_by="slide"))
                fresh.append(time.perf_counter() - started)
                same &= [h["id"] for h in served.json()["hits"]] == [h["id"] for h in result.hits]
                if index % 10 == 0:
                    region = ",".join(str(v) for v in box.values())
                    started = time.perf_counter()
                    _run("search", str(atlas), "--slide-id", slide_id, "--region", region, "--group-by", "slide",
                         "--format", "json")
                    cold.append(time.perf_counter() - started)
    report = {"machine": platform.processor() or platform.machine(), "slides": len(slide_ids), "patches": n_patches,
              "box": "4x4 patches", "k": 10, "group_by": "slides",
              "service_warm": _stats(warm), "library_fresh_atlas": _stats(fresh), "cli_cold": _stats(cold),
              "same_hits": bool(same)}
    RESULTS.mkdir(exist_ok=True)
    write_json_atomic(RESULTS / "region_service.json", report)
    for name in ("service_warm", "library_fresh_atlas", "cli_cold"):
        print(f"{name:22s} n={report[name]['n']:3d}  p50 {report[name]['p50_ms']:8.2f} ms  p99 {report[name]['p99_ms']:8.2f} ms")
    print(f"{len(slide_ids)} slides, {n_patches:,} patches; same hits: {same}")


if __name__ == "__main__":
    main()
