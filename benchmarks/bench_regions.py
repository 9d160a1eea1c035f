"""Patch index at archive scale: 10^6 and 10^7 patch vectors (768-d) beside brute force and LanceDB.

For each N, in one run, on the same vectors:
1. N clustered unit vectors (indexer.synthetic, generated in seeded chunks, never all in memory)
   are written as TRIDENT-layout float16 feature files of SLIDE_PATCHES patches ("slides"),
   and Q fresh vectors of the same clusters are kept as queries;
2. the files are ingested into an atlas (`ingest_slides`, timed apart);
3. exact ground truth: brute-force top-10 of the Q queries, streamed over the files;
4. threads-search: `build_atlas_patch_index` under --max-memory (default 4 GiB) in a child
   process (build seconds, peak RSS growth, bytes per vector, build-time recall), then in a
   second child the query path a user runs (`search_patches`, re-ranked from the feature
   files): p50/p99 of single-patch queries and of 9-patch (3x3) region queries, recall@10;
5. numpy brute force (matmul + argpartition over float32 in memory) where N x d x 4 bytes fits
   half the RAM, else the streamed brute force of step 3 (per-query time amortised over Q);
6. LanceDB IVF_PQ on the same vectors (float16 column, same partitions and sub-vectors,
   refine_factor 16, metric dot), at a ladder of nprobes, in a child process.

    nice -n 10 python benchmarks/bench_regions.py --sizes 1e6,1e7 --workdir /tmp/bench-regions

Writes benchmarks/results/regions.json and regions.md. Temporary files under --workdir are
deleted after each N unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SLIDE_PATCHES = 10_000
K = 10
PATCH_SIDE = 512


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200, help="queries with exact ground truth")
    parser.add_argument("--single", type=int, default=200, help="queries timed one by one")
    parser.add_argument("--max-memory", default="4GiB")
    parser.add_argument("--threads", type=int, default=2, help="faiss/BLAS threads of the builds")
    parser.add_argument("--query-threads", type=int, default=1, help="faiss/BLAS threads of the query children")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-regions"))
    parser.add_argument("--no-lance", action="store_true")
    parser.add_argument("--lance-timeout", type=int, default=2700, help="seconds LanceDB may take per N")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="regions")
    parser.add_argument("--append", action="store_true", help="keep the other sizes already in <name>.json")
    parser.add_argument("--child", choices=["build", "query", "numpy", "lance"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


# --- memory ------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_bytes() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def parse_size(text: str) -> int:
    units = {"TIB": 2**40, "GIB": 2**30, "MIB": 2**20, "TB": 2**40, "GB": 2**30, "MB": 2**20}
    upper = text.upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    return int(text)


# --- data --------------------------------------------------------------------------------------


def write_features(n: int, dim: int, n_queries: int, folder: Path) -> np.ndarray:
    """N vectors as float16 TRIDENT files of SLIDE_PATCHES rows; returns the (Q, d) queries."""
    import h5py

    from threads_search.indexer.synthetic import clustered_unit_vector_chunks

    marker = folder / "done.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"n": n, "dim": dim, "queries": n_queries}:
        return np.load(folder / "queries.npy")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    side = int(np.ceil(np.sqrt(SLIDE_PATCHES)))
    grid = np.stack([np.arange(SLIDE_PATCHES) % side, np.arange(SLIDE_PATCHES) // side], axis=1) * PATCH_SIDE * 2
    pending: list[np.ndarray] = []
    queries: list[np.ndarray] = []
    seen, slide = 0, 0

    def flush(rows: np.ndarray, slide: int) -> None:
        with h5py.File(folder / f"BENCH-{slide:06d}.h5", "w") as handle:
            handle.create_dataset("features", data=rows)
            coords = handle.create_dataset("coords", data=grid[: rows.shape[0]].astype(np.int64))
            coords.attrs.update({"patch_size": PATCH_SIDE, "patch_size_level0": 2 * PATCH_SIDE,
                                 "level0_magnification": 40, "target_magnification": 20})
            handle["features"].attrs["encoder"] = "bench_clustered"

    for chunk in clustered_unit_vector_chunks(n + n_queries, dim, seed=0):
        take = max(0, min(chunk.shape[0], n - seen))
        seen += chunk.shape[0]
        if take < chunk.shape[0]:
            queries.append(chunk[take:].copy())  # a copy: a view would keep the whole chunk alive
        pending.append(chunk[:take].astype(np.float16))
        buffered = np.concatenate(pending)
        while buffered.shape[0] >= SLIDE_PATCHES:
            flush(buffered[:SLIDE_PATCHES], slide)
            buffered, slide = buffered[SLIDE_PATCHES:], slide + 1
        pending = [buffered]
    if pending[0].shape[0]:
        flush(pending[0], slide)
    queries = np.concatenate(queries)[:n_queries]
    np.save(folder / "queries.npy", queries)
    marker.write_text(json.dumps({"n": n, "dim": dim, "queries": n_queries}))
    return queries


def feature_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("BENCH-*.h5"))


def stream_files(folder: Path):
    """(row offset, float32 L2-normalised block) over every file, in order."""
    import h5py

    offset = 0
    for path in feature_files(folder):
        with h5py.File(path, "r") as handle:
            block = np.asarray(handle["features"][:], dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield offset, block
        offset += block.shape[0]


def ground_truth(folder: Path, queries: np.ndarray, cache: Path) -> tuple[np.ndarray, float]:
    """(Q, K) global row numbers of the exact top-10, and seconds of the streamed scan."""
    from threads_search.indexer.recall import StreamingTopK

    if cache.is_file():
        payload = np.load(cache)
        return payload["rows"], float(payload["seconds"])
    started = time.perf_counter()
    top = StreamingTopK(queries, K)
    for offset, block in stream_files(folder):
        top.update(np.arange(offset, offset + block.shape[0], dtype=np.int64), block)
    seconds = time.perf_counter() - started
    rows = top.result()[1]
    np.savez(cache, rows=rows, seconds=seconds)
    return rows, seconds


def rows_to_patch_ids(rows: np.ndarray, vids: np.ndarray) -> np.ndarray:
    """Global row numbers -> patch ids, with vids[i] the vid of file i (SLIDE_PATCHES rows each)."""
    from threads_search.indexer.patch_ids import encode_patch_ids

    return encode_patch_ids(vids[rows // SLIDE_PATCHES], rows % SLIDE_PATCHES)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


def percentiles(latencies: list[float]) -> tuple[float, float]:
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


# --- children ----------------------------------------------------------------------------------


def child_build(args) -> dict:
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.patch_index import PatchIndexConfig, build_atlas_patch_index
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), args.workdir / "warm.parquet")  # library pages, not index memory
    with open_atlas(args.workdir / "atlas") as atlas:
        before = rss_bytes()
        reset_peak()
        started = time.perf_counter()
        report = build_atlas_patch_index(atlas, PatchIndexConfig(max_memory=parse_size(args.max_memory)))
        seconds = time.perf_counter() - started
        peak = peak_bytes() - before
    sidecar = report.sidecar
    index_bytes = sum(sidecar["file_bytes"].values())
    return {"build_s": seconds, "peak_rss_growth_bytes": peak, "kind": sidecar["kind"], "factory": sidecar["factory"],
            "search_params": sidecar["search_params"], "build_recall_at_10": sidecar["recall_at_10"],
            "bytes_per_vector": sidecar["memory"]["bytes_per_vector"], "index_file_bytes": index_bytes,
            "estimated_build_peak_bytes": sidecar["memory"]["estimated_build_peak_bytes"],
            "budget_bytes": sidecar["memory"]["budget_bytes"], "tuning_trials": sidecar["recall"]["trials"],
            "train_add_s": sidecar["build_seconds"], "tuning_s": sidecar["tuning_seconds"]}


def child_query(args) -> dict:
    from threads_search.atlas.store import open_atlas
    from threads_search.indexer.patch_search import search_patches
    from threads_search.jobs.patch_index import open_patch_index

    folder = args.workdir / "features"
    queries = np.load(folder / "queries.npy")
    truth_rows = np.load(args.workdir / "truth.npz")["rows"]
    before = rss_bytes()
    with open_atlas(args.workdir / "atlas", read_only=True) as atlas:
        opened = open_patch_index(atlas)
        vids = np.array([vid for vid, _ in sorted(((v, s["slide_id"]) for v, s in opened.slides.items()),
                                                   key=lambda item: item[1])])
        loaded = rss_bytes() - before
        truth = rows_to_patch_ids(truth_rows, vids)
        found = search_patches(opened.index, queries, K, source=opened.source).ids
        single = queries[: args.single]
        search_patches(opened.index, single[:1], K, source=opened.source)
        latencies = []
        for row in range(single.shape[0]):
            started = time.perf_counter()
            search_patches(opened.index, single[row:row + 1], K, source=opened.source)
            latencies.append((time.perf_counter() - started) * 1e3)
        # A 3x3 region: 9 neighbouring query patches searched together.
        region_latencies = []
        for start in range(0, min(single.shape[0], 90), 9):
            started = time.perf_counter()
            search_patches(opened.index, single[start:start + 9], K, source=opened.source)
            region_latencies.append((time.perf_counter() - started) * 1e3)
        resident = rss_bytes() - before
    p50, p99 = percentiles(latencies)
    r50, r99 = percentiles(region_latencies)
    return {"recall_at_10": recall(found, truth), "p50_ms": p50, "p99_ms": p99, "region9_p50_ms": r50,
            "region9_p99_ms": r99, "rss_after_load_bytes": loaded, "rss_after_queries_bytes": resident}


def child_numpy(args) -> dict:
    folder = args.workdir / "features"
    queries = np.load(folder / "queries.npy")
    truth = np.load(args.workdir / "truth.npz")["rows"]
    before = rss_bytes()
    reset_peak()
    started = time.perf_counter()
    database = np.concatenate([block for _, block in stream_files(folder)])
    load_s = time.perf_counter() - started

    def top_k(query: np.ndarray) -> np.ndarray:
        scores = query @ database.T
        rows = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        return np.take_along_axis(rows, np.argsort(-np.take_along_axis(scores, rows, axis=1), axis=1), axis=1)

    found = np.concatenate([top_k(queries[i:i + 50]) for i in range(0, queries.shape[0], 50)])
    latencies = []
    for row in range(min(args.single, 50)):
        started = time.perf_counter()
        top_k(queries[row:row + 1])
        latencies.append((time.perf_counter() - started) * 1e3)
    p50, p99 = percentiles(latencies)
    return {"load_s": load_s, "peak_rss_growth_bytes": peak_bytes() - before, "p50_ms": p50, "p99_ms": p99,
            "recall_at_10": recall(found, truth), "bytes_per_vector": 4 * database.shape[1]}


def child_lance(args) -> dict:
    import lancedb
    import pyarrow as pa

    folder = args.workdir / "features"
    queries = np.load(folder / "queries.npy")
    truth = np.load(args.workdir / "truth.npz")["rows"]
    build = json.loads((args.workdir / "ours_build.json").read_text())
    from threads_search.indexer.patch_kinds import patch_nlist

    nlist = int(build["factory"].split("IVF")[1].split(",")[0]) if "IVF" in build["factory"] else patch_nlist(args.n)
    m = int(build["factory"].split("PQ")[1].split("x")[0]) if "PQ" in build["factory"] else args.dim // 8
    dim = queries.shape[1]
    schema = pa.schema([pa.field("row", pa.int64()), pa.field("vector", pa.list_(pa.float16(), dim))])

    def batches():
        import h5py

        offset = 0
        for path in feature_files(folder):
            with h5py.File(path, "r") as handle:
                block = np.asarray(handle["features"][:])
            values = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
            yield pa.record_batch([pa.array(np.arange(offset, offset + block.shape[0])), values], schema=schema)
            offset += block.shape[0]

    target = args.workdir / "lance"
    shutil.rmtree(target, ignore_errors=True)
    before = rss_bytes()
    reset_peak()
    database = lancedb.connect(str(target))
    started = time.perf_counter()
    table = database.create_table("patches", data=pa.RecordBatchReader.from_batches(schema, batches()), schema=schema)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    # k-means sample and iterations as the patch index's own (16 points per partition, 10
    # iterations); LanceDB's defaults (256 per partition, 50 iterations) take ~40x the k-means work.
    table.create_index(metric="dot", num_partitions=nlist, num_sub_vectors=m, index_type="IVF_PQ",
                       sample_rate=16, max_iterations=10)
    index_s = time.perf_counter() - started
    peak = peak_bytes() - before
    disk = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    rows = []
    for nprobes in (8, 16, 32, 64, 128):
        def run(query):
            result = (table.search(query).metric("dot").nprobes(nprobes).refine_factor(16).limit(K)
                      .select(["row"]).to_arrow())
            return np.asarray(result["row"])

        found = np.stack([np.pad(run(q), (0, K))[:K] for q in queries])
        latencies = []
        for q in queries[: args.single]:
            started = time.perf_counter()
            run(q)
            latencies.append((time.perf_counter() - started) * 1e3)
        p50, p99 = percentiles(latencies)
        rows.append({"nprobes": nprobes, "refine_factor": 16, "recall_at_10": recall(found, truth), "p50_ms": p50,
                     "p99_ms": p99})
    return {"write_s": write_s, "index_s": index_s, "peak_rss_growth_bytes": peak, "disk_bytes": disk,
            "num_partitions": nlist, "num_sub_vectors": m, "sample_rate": 16, "max_iterations": 10,
            "lancedb": lancedb.__version__, "ladder": rows}


def run_child(kind: str, args, n: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--n", str(n), "--workdir", str(args.workdir),
               "--max-memory", args.max_memory, "--single", str(args.single), "--dim", str(args.dim),
               "--threads", str(args.query_threads if kind in ("query", "numpy") else args.threads)]
    threads = args.query_threads if kind in ("query", "numpy") else args.threads
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env,
                                   timeout=args.lance_timeout if kind == "lance" else None)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {args.lance_timeout} s", "wall_s": time.perf_counter() - started}
    if completed.returncode != 0:
        print(completed.stderr[-3000:], flush=True)
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed",
                "wall_s": time.perf_counter() - started}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- one size ----------------------------------------------------------------------------------


def bench_size(n: int, args) -> dict:
    from threads_search.atlas.store import init_atlas, open_atlas
    from threads_search.ingest.slides import ingest_slides

    print(f"\n== N = {n:,} x {args.dim}-d ==", flush=True)
    folder = args.workdir / "features"
    started = time.perf_counter()
    queries = write_features(n, args.dim, args.queries, folder)
    result = {"n": n, "dim": args.dim, "queries": int(queries.shape[0]), "single_queries": args.single,
              "generate_s": time.perf_counter() - started,
              "feature_file_bytes": sum(p.stat().st_size for p in feature_files(folder))}
    print(f"features written: {result['feature_file_bytes'] / 2**30:.1f} GiB in {result['generate_s']:.0f} s", flush=True)
    atlas_path = args.workdir / "atlas"
    if not (atlas_path / "ingested.json").is_file():
        shutil.rmtree(atlas_path, ignore_errors=True)
        started = time.perf_counter()
        with init_atlas(atlas_path) as atlas:
            ingest_slides(atlas, [folder])
        result["ingest_s"] = time.perf_counter() - started
        (atlas_path / "ingested.json").write_text(json.dumps({"ingest_s": result["ingest_s"]}))
    else:
        result["ingest_s"] = json.loads((atlas_path / "ingested.json").read_text())["ingest_s"]
    print(f"ingested in {result['ingest_s']:.0f} s", flush=True)
    _, scan_s = ground_truth(folder, queries, args.workdir / "truth.npz")
    result["streamed_brute_force"] = {"seconds": scan_s, "ms_per_query_amortised": scan_s * 1e3 / queries.shape[0]}
    print(f"streamed brute force over the files: {scan_s:.0f} s for {queries.shape[0]} queries", flush=True)

    build_cache = args.workdir / "ours_build.json"
    if not build_cache.is_file():
        build_cache.write_text(json.dumps(run_child("build", args, n)))
    result["ours_build"] = json.loads(build_cache.read_text())
    print("threads-search build:", result["ours_build"], flush=True)
    result["ours_query"] = run_child("query", args, n)
    print("threads-search query:", result["ours_query"], flush=True)
    if n * args.dim * 4 <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2:
        result["numpy"] = run_child("numpy", args, n)
        print("numpy:", result["numpy"], flush=True)
    if not args.no_lance:
        result["lance"] = run_child("lance", args, n)
        print("lancedb:", result["lance"], flush=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return result


# --- output ------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    gib, mib = 2**30, 2**20
    lines = ["# Patch-index benchmark", "", f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; faiss {report['faiss']}, numpy {report['numpy']}; "
             f"{report['threads']} thread(s) for the builds, {report['query_threads']} for our and numpy's queries "
             f"(LanceDB uses its own thread pool). Budget --max-memory {report['max_memory']}.", "",
             "Vectors: clustered unit vectors (64 Gaussian clusters in a 32-d latent space lifted to 768-d, plus "
             "noise), stored float16 in TRIDENT-layout files of 10,000 patches; queries are fresh points of the same "
             "clusters; recall@10 against the exact top-10 (streamed brute force). Latency: one patch per query "
             "(p50/p99 over the single-query set), and a 3x3 region (9 patches searched together).", ""]
    for size in report["sizes"]:
        build, query = size["ours_build"], size["ours_query"]
        lines += [f"## N = {size['n']:,}", "",
                  f"Feature files {size['feature_file_bytes'] / gib:.1f} GiB; generated in {size['generate_s']:.0f} s, "
                  f"ingested in {size['ingest_s']:.0f} s; streamed brute force {size['streamed_brute_force']['seconds']:.0f} s "
                  f"for {size['queries']} queries.", "",
                  "| method | build s | peak RSS growth | bytes/vector | recall@10 | p50 ms | p99 ms | 3x3 region p50 ms |",
                  "|---|---|---|---|---|---|---|---|"]
        if "error" in build or "error" in query:
            lines.append(f"| threads-search | error: {build.get('error') or query.get('error')} |||||||")
        else:
            lines.append(f"| threads-search {build['kind']} (`{build['factory']}`, {build['search_params']}) | "
                         f"{build['build_s']:.0f} | {build['peak_rss_growth_bytes'] / mib:,.0f} MiB | "
                         f"{build['bytes_per_vector']} | {query['recall_at_10']:.3f} | {query['p50_ms']:.2f} | "
                         f"{query['p99_ms']:.2f} | {query['region9_p50_ms']:.2f} |")
        numpy_row = size.get("numpy")
        if numpy_row and "error" not in numpy_row:
            lines.append(f"| numpy brute force (float32 in memory) | load {numpy_row['load_s']:.0f} | "
                         f"{numpy_row['peak_rss_growth_bytes'] / mib:,.0f} MiB | {numpy_row['bytes_per_vector']} | "
                         f"{numpy_row['recall_at_10']:.3f} | {numpy_row['p50_ms']:.1f} | {numpy_row['p99_ms']:.1f} | |")
        else:
            lines.append(f"| brute force streamed from the files (does not fit RAM) | – | – | – | 1.000 | "
                         f"{size['streamed_brute_force']['ms_per_query_amortised']:.0f} (amortised over "
                         f"{size['queries']}) | | |")
        lance = size.get("lance")
        if lance and "error" not in lance:
            for row in lance["ladder"]:
                lines.append(f"| LanceDB {lance['lancedb']} IVF_PQ ({lance['num_partitions']} partitions, "
                             f"{lance['num_sub_vectors']} sub-vectors, nprobes {row['nprobes']}, refine 16) | "
                             f"{lance['write_s'] + lance['index_s']:.0f} | {lance['peak_rss_growth_bytes'] / mib:,.0f} MiB | "
                             f"{lance['disk_bytes'] / size['n']:.0f} on disk | {row['recall_at_10']:.3f} | "
                             f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | |")
        elif lance:
            lines.append(f"| LanceDB | error: {lance['error']} |||||||")
        if "error" not in build:
            lines += ["", f"threads-search: train+add {build['train_add_s']:.0f} s, tuning {build['tuning_s']:.0f} s, "
                      f"build-time recall@10 {build['build_recall_at_10']}, estimated build peak "
                      f"{build['estimated_build_peak_bytes'] / mib:,.0f} MiB, index files {build['index_file_bytes'] / mib:,.0f} MiB, "
                      f"RSS after loading {query.get('rss_after_load_bytes', 0) / mib:,.0f} MiB and after the queries "
                      f"{query.get('rss_after_queries_bytes', 0) / mib:,.0f} MiB."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.child:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        handler = {"build": child_build, "query": child_query, "numpy": child_numpy, "lance": child_lance}[args.child]
        print(json.dumps(handler(args)))
        return
    import faiss

    faiss.omp_set_num_threads(args.threads)
    sizes = [int(float(v)) for v in args.sizes.split(",")]
    report = {"command": "python benchmarks/bench_regions.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "faiss": faiss.__version__, "numpy": np.__version__, "threads": args.threads,
              "query_threads": args.query_threads,
              "max_memory": args.max_memory, "sizes": []}
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / f"{args.name}.json"
    if args.append and previous.is_file():
        earlier = json.loads(previous.read_text())
        report["sizes"] = [size for size in earlier["sizes"] if size["n"] not in sizes]
        report["command"] = earlier["command"] + "; then " + report["command"]
    for n in sizes:
        report["sizes"].append(bench_size(n, args))
        report["sizes"].sort(key=lambda size: size["n"])
        (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
