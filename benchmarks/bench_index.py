"""FAISS index kinds beside numpy and scikit-learn brute force, on clustered 1024-d vectors.

For every N and method, one run in one process: build seconds, index bytes, resident-memory
growth (held after the build, and the build's peak), single-query latency p50/p99, batched
queries per second and recall@10 against the exact answer. The flat index's scan rate
(database bytes read per second) is set beside np.copyto's rate measured in the same run.

    python benchmarks/bench_index.py                      # N = 1e4, 1e5, 1e6 (slow)
    python benchmarks/bench_index.py --sizes 1e4,1e5      # quick run

Writes benchmarks/results/index.json and index.md (--name changes the stem) and prints the
table, with ratios to numpy brute force. Threads default to 1 for faiss, numpy and
scikit-learn alike (--threads), so the ratios compare algorithms, not thread counts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import sklearn
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from threads_search.indexer import build_index, list_kinds, search
from threads_search.indexer.synthetic import clustered_unit_vectors

RESULTS = Path(__file__).resolve().parent / "results"
K = 10
# Query rows per matmul block of the numpy baseline: a (1000, 65536) float32 block is 256 MiB.
NUMPY_BLOCK_ROWS = 65_536
# Single queries are timed one by one; fewer of them at large N keep the run bounded
# (about 2e10 database bytes scanned per brute-force method).
SINGLE_QUERY_BYTES_BUDGET = 2e10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated N values")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--kinds", default=",".join(list_kinds()))
    parser.add_argument("--queries", type=int, default=1000, help="batched queries")
    parser.add_argument("--single-queries", type=int, default=200, help="at most, timed one by one")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="index", help="writes <out>/<name>.json and .md")
    return parser.parse_args()


# --- memory ------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (VmHWM) so the next peak is this phase's own."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_copy_bandwidth(n_bytes: int = 2**30, repeats: int = 3) -> float:
    """Memory traffic per second of np.copyto between two `n_bytes` arrays (best of `repeats`).

    Counted as STREAM does for its copy kernel: bytes read plus bytes written (2 x n_bytes),
    so it compares directly with a scan that only reads.
    """
    source = np.ones(n_bytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * n_bytes / best


# --- baselines ---------------------------------------------------------------------------------


def numpy_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) row indices of the largest inner products: blocked matmul + argpartition."""
    best_scores = np.empty((queries.shape[0], 0), dtype=np.float32)
    best_rows = np.empty((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, database.shape[0], NUMPY_BLOCK_ROWS):
        block = queries @ database[start : start + NUMPY_BLOCK_ROWS].T
        rows = np.arange(start, start + block.shape[1])
        scores = np.hstack([best_scores, block])
        candidates = np.hstack([best_rows, np.broadcast_to(rows, block.shape)])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_rows = np.take_along_axis(candidates, top, axis=1)
    order = np.argsort(-best_scores, axis=1)
    return np.take_along_axis(best_rows, order, axis=1)


def time_single(run_one, queries: np.ndarray) -> tuple[float, float]:
    """p50 and p99 milliseconds of `run_one(query (1, d))` over the given queries."""
    run_one(queries[:1])  # warm-up
    latencies = []
    for row in range(queries.shape[0]):
        started = time.perf_counter()
        run_one(queries[row : row + 1])
        latencies.append((time.perf_counter() - started) * 1e3)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def time_batch(run_all, queries: np.ndarray):
    """(queries per second, result) of one call `run_all(queries)`."""
    started = time.perf_counter()
    result = run_all(queries)
    return queries.shape[0] / (time.perf_counter() - started), result


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    return float((found_ids[:, :, None] == true_ids[:, None, :]).any(axis=2).mean())


# --- one method each -----------------------------------------------------------------------------


def bench_numpy(database, ids, queries, single):
    qps, rows = time_batch(lambda q: numpy_top_k(database, q, K), queries)
    p50, p99 = time_single(lambda q: numpy_top_k(database, q, K), single)
    truth = ids[rows]
    return {"method": "numpy brute force", "build_s": 0.0, "index_bytes": database.nbytes,
            "rss_growth_bytes": 0, "peak_rss_growth_bytes": 0, "p50_ms": p50, "p99_ms": p99,
            "qps": qps, "recall_at_10": 1.0}, truth


def bench_sklearn(database, ids, queries, single, truth):
    reset_peak_rss()
    rss_before = rss_bytes()
    started = time.perf_counter()
    model = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="cosine").fit(database)
    build_s = time.perf_counter() - started
    rss_held = rss_bytes() - rss_before
    peak = peak_rss_bytes() - rss_before
    qps, (_, rows) = time_batch(lambda q: model.kneighbors(q), queries)
    p50, p99 = time_single(lambda q: model.kneighbors(q), single)
    return {"method": "sklearn NearestNeighbors (brute, cosine)", "build_s": build_s,
            "index_bytes": database.nbytes, "rss_growth_bytes": rss_held,
            "peak_rss_growth_bytes": peak, "p50_ms": p50, "p99_ms": p99, "qps": qps,
            "recall_at_10": recall_at_k(ids[rows], truth)}


def bench_kind(kind, database, ids, queries, single, truth):
    gc.collect()
    reset_peak_rss()
    rss_before = rss_bytes()
    started = time.perf_counter()
    built = build_index(database, ids, kind=kind, device="cpu", seed=0)
    build_s = time.perf_counter() - started
    rss_held = rss_bytes() - rss_before
    peak = peak_rss_bytes() - rss_before
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "index.faiss")
        faiss.write_index(built.index, path)
        index_bytes = os.path.getsize(path)
    qps, (_, found) = time_batch(lambda q: search(built, q, K), queries)
    p50, p99 = time_single(lambda q: search(built, q, K), single)
    sidecar = built.sidecar
    row = {"method": f"threads-search {kind}", "kind": kind, "factory": sidecar["factory"],
           "search_params": sidecar["search_params"], "build_s": build_s,
           "train_add_s": sidecar["build_seconds"], "tuning_s": sidecar["tuning_seconds"],
           "index_bytes": index_bytes, "rss_growth_bytes": rss_held,
           "peak_rss_growth_bytes": peak, "p50_ms": p50, "p99_ms": p99, "qps": qps,
           "recall_at_10": recall_at_k(found, truth),
           "build_recall_at_10": sidecar["recall_at_10"]}
    del built
    gc.collect()
    return row


def flat_scan_rates(n: int, dim: int, n_queries: int, flat_row: dict, copy_rate: float) -> dict:
    """Database bytes the flat search reads per second, and that rate over np.copyto's.

    Batched (>= 20 queries) faiss multiplies blocks of up to 4096 queries with the database
    (BLAS), reading it once per block; a single query streams the whole database once.
    """
    database_bytes = n * dim * 4
    passes = -(-n_queries // faiss.cvar.distance_compute_blas_query_bs)
    batched = database_bytes * passes * flat_row["qps"] / n_queries
    single = database_bytes / (flat_row["p50_ms"] / 1e3)
    return {"batched_bytes_per_s": batched, "batched_fraction_of_copy": batched / copy_rate,
            "single_query_bytes_per_s": single, "single_query_fraction_of_copy": single / copy_rate}


def bench_size(n: int, args: argparse.Namespace, copy_rate: float) -> dict:
    print(f"\n== N = {n:,} x {args.dim}-d ==", flush=True)
    everything = clustered_unit_vectors(n + args.queries, args.dim, seed=0)
    database, queries = everything[:n], everything[n:]
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # explicit ids, not row order
    n_single = int(min(args.single_queries, max(10, SINGLE_QUERY_BYTES_BUDGET // database.nbytes)))
    single = queries[:n_single]
    numpy_row, truth = bench_numpy(database, ids, queries, single)
    rows = [numpy_row]
    print(format_row(numpy_row, numpy_row), flush=True)
    if not args.no_sklearn:
        rows.append(bench_sklearn(database, ids, queries, single, truth))
        print(format_row(rows[-1], numpy_row), flush=True)
    for kind in args.kinds.split(","):
        rows.append(bench_kind(kind, database, ids, queries, single, truth))
        print(format_row(rows[-1], numpy_row), flush=True)
    result = {"n": n, "dim": args.dim, "batched_queries": args.queries,
              "single_queries": n_single, "rows": rows}
    flat = next((row for row in rows if row.get("kind") == "flat"), None)
    if flat is not None:
        result["flat_scan"] = flat_scan_rates(n, args.dim, args.queries, flat, copy_rate)
    return result


# --- output ------------------------------------------------------------------------------------

HEADER = (f"{'method':<42} {'build s':>8} {'index MiB':>9} {'RSS+ MiB':>8} {'peak+ MiB':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'QPS':>9} {'recall@10':>9} {'QPS/np':>7} {'p50 np/x':>8}")


def format_row(row: dict, numpy_row: dict) -> str:
    mib = 2**20
    return (f"{row['method']:<42} {row['build_s']:>8.2f} {row['index_bytes'] / mib:>9.1f} "
            f"{row['rss_growth_bytes'] / mib:>8.1f} {row['peak_rss_growth_bytes'] / mib:>9.1f} "
            f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {row['qps']:>9.1f} "
            f"{row['recall_at_10']:>9.4f} {row['qps'] / numpy_row['qps']:>7.2f} "
            f"{numpy_row['p50_ms'] / row['p50_ms']:>8.2f}")


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# Index benchmark", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; faiss {report['faiss']}, numpy {report['numpy']}, "
             f"scikit-learn {report['sklearn']}; {report['threads']} thread(s) for every method.",
             f"Memory copy (np.copyto of 1 GiB, bytes read + written): "
             f"{report['copy_bytes_per_s'] / 1e9:.2f} GB/s.", "",
             "Data: clustered unit vectors (64 Gaussian clusters in a 32-d latent space lifted to "
             "1024-d, plus noise); queries are fresh points from the same clusters; recall@10 is "
             "against numpy's exact answer. QPS/np and p50 np/x are ratios to numpy brute force "
             "(above 1 = faster). RSS+ is resident memory still held after the build, peak+ the "
             "build's high-water mark above the starting RSS (both include allocator slack, "
             "so they are approximate).",
             "",
             "Flat scan rate = database bytes read per second. Batched, faiss multiplies blocks of "
             "up to 4096 queries with the database (BLAS): ~2 flops per byte per query, so it is "
             "compute-bound and reads the database once per block, far below copy bandwidth by "
             "design. A single query streams the database once: the memory-bound case.", ""]
    for size in report["sizes"]:
        numpy_row = size["rows"][0]
        lines += [f"## N = {size['n']:,}", "",
                  f"{size['batched_queries']} batched queries, {size['single_queries']} timed one "
                  "by one.", "", "```", HEADER]
        lines += [format_row(row, numpy_row) for row in size["rows"]]
        lines += ["```", ""]
        for row in size["rows"]:
            if "factory" in row:
                lines.append(f"- {row['kind']}: `{row['factory']}`, search {row['search_params']},"
                             f" train+add {row['train_add_s']:.1f} s, tuning {row['tuning_s']:.1f}"
                             f" s, build-time recall@10 {row['build_recall_at_10']}")
        if "flat_scan" in size:
            scan = size["flat_scan"]
            lines += ["", f"Flat scan: batched {scan['batched_bytes_per_s'] / 1e9:.2f} GB/s "
                      f"({scan['batched_fraction_of_copy']:.2f} of copy), single query "
                      f"{scan['single_query_bytes_per_s'] / 1e9:.2f} GB/s "
                      f"({scan['single_query_fraction_of_copy']:.2f} of copy)."]
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    args = parse_args()
    sizes = [int(float(value)) for value in args.sizes.split(",")]
    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        copy_rate = memory_copy_bandwidth()
        print(f"np.copyto: {copy_rate / 1e9:.2f} GB/s read + written; threads: {args.threads}")
        print(HEADER)
        report = {
            "command": "python benchmarks/bench_index.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "faiss": faiss.__version__, "numpy": np.__version__, "sklearn": sklearn.__version__,
            "threads": args.threads, "copy_bytes_per_s": copy_rate,
            "sizes": [bench_size(n, args, copy_rate) for n in sizes],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = args.out / f"{args.name}.json", args.out / f"{args.name}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, markdown_path)
    print(f"\nwrote {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
