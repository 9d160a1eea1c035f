"""`threads-search serve` beside the in-process API and the cold CLI, on generated atlases.

For each N (slides): an atlas is built the way the product lays one out (items with metadata,
embedding parts of 64 slides as `embed` writes them, the index `index --kind auto` picks),
then, in one run:

- warm single queries by slide id, no filter and 10 % / 1 % filters, alternating between the
  in-process API (`search_atlas` on an atlas opened once) and HTTP to `threads-search serve`
  (a separate process on 127.0.0.1, one keep-alive connection): p50/p99 of each, their ratio,
  and whether both returned the same hits;
- the cold CLI (`threads-search search ATLAS --slide-id ID`, a new process per query) beside
  `python -c pass` in the same loop;
- load: C concurrent clients (threads, one keep-alive connection each) for a bounded time:
  completed queries, errors, latency p50/p99 and queries per second.

    python benchmarks/bench_service.py                         # N = 1e4, 1e5
    python benchmarks/bench_service.py --sizes 1e4 --load-seconds 10

Writes benchmarks/results/service.json (--name changes the stem) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FILTERS = {"none": None, "10%": "bucket < 10", "1%": "bucket = 0"}
K = 10
SLIDES_PER_PART = 64  # as `embed` writes them (threads_search/jobs/embed.py)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5")
    parser.add_argument("--queries", type=int, default=200, help="at most, per filter and path")
    parser.add_argument("--cell-seconds", type=float, default=30.0, help="at most, per filter (both paths)")
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the atlases (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="service")
    return parser.parse_args()


# --- the atlas ---------------------------------------------------------------------------------


def build_atlas(root: Path, n: int, seed: int) -> dict:
    """An atlas of n slides (two per patient), metadata `site` and `bucket` (0-99, for 10 % / 1 %
    filters), clustered unit vectors as one model's embeddings, and the auto-chosen index."""
    from threads_search.atlas.embeddings import write_part
    from threads_search.atlas.stored_models import store_model
    from threads_search.atlas.items import upsert_items, vid_by_item
    from threads_search.atlas.metadata import apply_metadata
    from threads_search.atlas.store import init_atlas
    from threads_search.encoders.registry import create_model
    from threads_search.indexer.synthetic import clustered_unit_vectors
    from threads_search.readers.metadata_csv import read_metadata_csv
    from threads_search.jobs.index import build_atlas_indexes

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    ids = [f"BENCH-{i:07d}" for i in range(n)]
    patients = [f"PAT-{i // 2:07d}" for i in range(n)]
    metadata = root.parent / f"{root.name}-slides.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_id", "patient_id", "site", "bucket"])
        buckets = rng.integers(0, 100, n)
        writer.writerows([i, p, f"site{b % 7}", int(b)] for i, p, b in zip(ids, patients, buckets))
    atlas = init_atlas(root)
    with atlas.transaction():
        upsert_items(atlas, "slides", ids, patients)
        apply_metadata(atlas, read_metadata_csv(metadata, "slide_id"), "slides")
    model_id = store_model(atlas, create_model("meanpool", in_dim=768, patch_encoder="bench"))
    vids = vid_by_item(atlas, "slides")
    vectors = clustered_unit_vectors(n, 1024, seed=seed)
    order = np.array([vids[i] for i in ids], np.int64)
    for start in range(0, n, SLIDES_PER_PART):
        write_part(atlas, model_id, "slides", order[start:start + SLIDES_PER_PART], vectors[start:start + SLIDES_PER_PART])
    report = build_atlas_indexes(atlas, model_id, kind="auto", device="cpu")
    atlas.close()
    sidecar = report.built["slides"]
    return {"n": n, "model_id": model_id, "index": sidecar["kind"], "factory": sidecar.get("factory"),
            "parts": -(-n // SLIDES_PER_PART), "build_s": round(time.perf_counter() - started, 1), "ids": ids}


# --- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_path() -> str:
    return str(Path(sys.executable).with_name("threads-search"))


def start_server(atlas: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([cli_path(), "serve", str(atlas), "--port", str(port), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited: {process.stderr.read().decode()[-500:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                connection.close()
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("serve did not answer /health within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Client:
    """One keep-alive HTTP connection to the service."""

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def search(self, body: dict) -> tuple[int, dict | str]:
        payload = json.dumps(body)
        self.connection.request("POST", "/api/search", body=payload, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if response.status == 200 else data.decode()[:300])

    def close(self) -> None:
        self.connection.close()


# --- measurements ------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict:
    values = np.array(seconds) * 1000
    return {"n": len(seconds), "p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3)} if seconds else {"n": 0}


def warm_queries(atlas_path: Path, port: int, ids: list[str], args, rng) -> dict:
    from threads_search.atlas.store import open_atlas
    from threads_search.search.query import Query, SearchOptions, search_atlas

    results = {}
    client = Client(port)
    with open_atlas(atlas_path, read_only=True) as atlas:
        for name, where in FILTERS.items():
            api_times, http_times, mismatches = [], [], 0
            deadline = time.monotonic() + args.cell_seconds
            for slide_id in rng.choice(ids, args.queries, replace=False):
                if time.monotonic() > deadline:
                    break
                options = SearchOptions(k=K, where=where)
                started = time.perf_counter()
                in_process = search_atlas(atlas, Query(slide_id=str(slide_id)), options)
                api_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                status, payload = client.search({"slide_id": str(slide_id), "k": K, "where": where})
                http_times.append(time.perf_counter() - started)
                if status != 200 or [h["id"] for h in payload["hits"]] != [h["id"] for h in in_process.hits]:
                    mismatches += 1
            api, over_http = percentiles(api_times), percentiles(http_times)
            results[name] = {"api": api, "http": over_http, "different_hits": mismatches,
                             "http_over_api_p50": round(over_http["p50_ms"] / api["p50_ms"], 3),
                             "http_minus_api_p50_ms": round(over_http["p50_ms"] - api["p50_ms"], 3)}
    client.close()
    return results


def cold_cli(atlas_path: Path, ids: list[str], runs: int, rng) -> dict:
    cli_times, bare_times = [], []
    for slide_id in rng.choice(ids, runs, replace=False):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([cli_path(), "search", str(atlas_path), "--slide-id", str(slide_id), "--format", "json"],
                       check=True, stdout=subprocess.DEVNULL)
        cli_times.append(time.perf_counter() - started)
    return {"cli_search": percentiles(cli_times), "python_pass": percentiles(bare_times),
            "cli_median_s": round(float(np.median(cli_times)), 3)}


def load(port: int, ids: list[str], clients: int, seconds: float, seed: int) -> dict:
    """`clients` threads query for `seconds` (each finishes its request in flight); counts errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        local = np.random.default_rng(seed + index)
        client = Client(port)
        try:
            while time.monotonic() < deadline:
                slide_id = str(local.choice(ids))
                where = list(FILTERS.values())[int(local.integers(len(FILTERS)))]
                started = time.perf_counter()
                try:
                    status, payload = client.search({"slide_id": slide_id, "k": K, "where": where})
                    problem = None if status == 200 and len(payload["hits"]) == K else f"{status}: {payload}"
                except (OSError, http.client.HTTPException) as error:
                    problem = f"{type(error).__name__}: {error}"
                    client.close()
                    client = Client(port)
                elapsed = time.perf_counter() - started
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))
        finally:
            client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "seconds": round(wall, 1), "completed": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "qps": round(len(latencies) / wall, 2), **percentiles(latencies)}


def run_size(n: int, args, work: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    atlas_path = work / f"atlas-{n}"
    print(f"[{n:,} slides] building the atlas ...", flush=True)
    built = build_atlas(atlas_path, n, args.seed)
    ids = built.pop("ids")
    print(f"[{n:,} slides] built in {built['build_s']} s ({built['index']}, {built['parts']} parts); serving", flush=True)
    process, port = start_server(atlas_path)
    try:
        warm = warm_queries(atlas_path, port, ids, args, rng)
        print(f"[{n:,} slides] warm: " + ", ".join(f"{k} api {v['api']['p50_ms']} ms / http {v['http']['p50_ms']} ms"
                                                     for k, v in warm.items()), flush=True)
        cold = cold_cli(atlas_path, ids, args.cli_runs, rng)
        print(f"[{n:,} slides] cold CLI {cold['cli_search'].get('p50_ms')} ms, python -c pass "
              f"{cold['python_pass'].get('p50_ms')} ms; load test ...", flush=True)
        loaded = load(port, ids, args.clients, args.load_seconds, args.seed)
        print(f"[{n:,} slides] load: {loaded['completed']} queries, {loaded['errors']} errors, {loaded['qps']} q/s", flush=True)
    finally:
        stop_server(process)
    shutil.rmtree(atlas_path, ignore_errors=True)
    return {**built, "warm": warm, "cold": cold, "load": loaded}


def table(results: list[dict]) -> str:
    lines = ["| slides | index | filter | API p50 / p99 ms | HTTP p50 / p99 ms | HTTP / API p50 | n | same hits |",
             "|---|---|---|---|---|---|---|---|"]
    for size in results:
        for name, cell in size["warm"].items():
            lines.append(f"| {size['n']:,} | {size['index']} | {name} | {cell['api']['p50_ms']} / {cell['api']['p99_ms']} | "
                         f"{cell['http']['p50_ms']} / {cell['http']['p99_ms']} | {cell['http_over_api_p50']} | "
                         f"{cell['api']['n']} | {cell['api']['n'] - cell['different_hits']}/{cell['api']['n']} |")
    lines += ["", "| slides | cold CLI p50 ms | python -c pass p50 ms | load: clients, s | completed | errors | q/s | p50 / p99 ms |",
              "|---|---|---|---|---|---|---|---|"]
    for size in results:
        cold, loaded = size["cold"], size["load"]
        lines.append(f"| {size['n']:,} | {cold['cli_search'].get('p50_ms')} | {cold['python_pass'].get('p50_ms')} | "
                     f"{loaded['clients']}, {loaded['seconds']} | {loaded['completed']} | {loaded['errors']} | "
                     f"{loaded['qps']} | {loaded.get('p50_ms')} / {loaded.get('p99_ms')} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    temporary = None
    if args.work is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench-service-")
        args.work = Path(temporary.name)
    args.work.mkdir(parents=True, exist_ok=True)
    results = [run_size(n, args, args.work) for n in sizes]
    payload = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
               "command": " ".join(sys.argv), "k": K, "filters": FILTERS, "sizes": results}
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2))
    print(table(results))
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
