"""The query path beside what a user would otherwise run, warm, one query at a time.

For N slides (1024-d clustered unit vectors) and filters keeping all, 50 %, 10 % and 1 % of
them, each method answers the same single queries "the 10 nearest slides to this stored slide,
not of its own patient", interleaved query by query so that machine noise hits all alike:

  threads-search   the Python API (`search_atlas`, atlas opened once) on the atlas's own index
  faiss-in-product the FAISS call inside it alone (its overhead = product p50 - this p50)
  numpy            brute force over the (pre-filtered) matrix
  faiss-flat       IndexFlatIP used directly, IDSelectorBatch for the filter
  faiss-<kind>     the index kind the product chose, used directly with a selector
  lancedb-flat     LanceDB without an index, prefiltered
  lancedb-ivfpq    LanceDB IVF_PQ, nprobes/refine tuned up to recall@10 >= 0.95, prefiltered
  hnswlib          hnswlib HNSW with a filter callable, ef tuned up to recall@10 >= 0.95

Recall@10 is against the exact answer with the same filter and the same patient exclusion.

    python benchmarks/bench_query_path.py --sizes 1e4,1e5,1e6 --queries 200
    python benchmarks/bench_query_path.py --sizes 1e4 --queries 50          # quick

Also times the cold CLI (`threads-search search ATLAS --slide-id ID`) beside `python -c pass`
and `python -c "import torch"` at each size. Writes benchmarks/results/<--name, default query_path>.json.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_atlas import FILTERS, build_query_atlas, reopen_query_atlas  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
os.environ.setdefault("LANCE_LOG", "error")  # LanceDB logs a deprecation warning per query otherwise (RUST_LOG is not read)
K = 10
TARGET_RECALL = 0.95


def _masks(n: int) -> dict[str, np.ndarray | None]:
    rows = np.arange(n)
    return {"none": None, "50%": rows % 2 == 1, "10%": rows % 10 == 3, "1%": rows % 100 == 7}


class Truth:
    """Exact answers: top-K by inner product among allowed rows, the query's patient excluded."""

    def __init__(self, vectors: np.ndarray, patient_of_row: np.ndarray) -> None:
        self.vectors, self.patient = vectors, patient_of_row

    def top(self, row: int, mask: np.ndarray | None) -> np.ndarray:
        scores = self.vectors @ self.vectors[row]
        eligible = self.patient != self.patient[row]
        if mask is not None:
            eligible &= mask
        scores = np.where(eligible, scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top], kind="stable")]


def recall(found_rows, truth_rows) -> float:
    return len(set(map(int, found_rows)) & set(map(int, truth_rows))) / K


# --- methods: each is (name, prepare(filter_name) -> query(row) -> rows) -------------------------


def product_method(atlas_path: Path, ids: list[str], vid_to_row: dict[int, int]):
    from threads_search.api import Query, SearchOptions, open_atlas, search_atlas

    atlas = open_atlas(atlas_path, read_only=True)
    row_of_id = {item: row for row, item in enumerate(ids)}

    def prepare(filter_name: str):
        where = FILTERS[filter_name]

        def query(row: int):
            result = search_atlas(atlas, Query(slide_id=ids[row]), SearchOptions(k=K, where=where))
            return [row_of_id[h["id"]] for h in result.hits]
        return query
    return prepare, atlas


def product_faiss_method(atlas, model_id: str, vectors: np.ndarray, vids: np.ndarray, patient_rows: dict, masks):
    """Only the indexer call the product makes (same index, filter object and exclusions)."""
    from threads_search.indexer import search
    from threads_search.indexer.id_filter import IdFilter
    from threads_search.jobs.index import open_index

    index = open_index(atlas, model_id, "slides")
    row_of_vid = {int(v): r for r, v in enumerate(vids)}

    def prepare(filter_name: str):
        mask = masks[filter_name]
        allowed = None if mask is None else IdFilter(vids[mask])

        def query(row: int):
            excluded = np.sort(vids[patient_rows[row]])
            _, found = search(index, vectors[row:row + 1], K, allowed_ids=allowed, exclude_ids=[excluded])
            return [row_of_vid[int(v)] for v in found[0] if v >= 0]
        return query
    return prepare


def numpy_method(vectors: np.ndarray, patient: np.ndarray, masks):
    def prepare(filter_name: str):
        mask = masks[filter_name]
        rows = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
        matrix = vectors if mask is None else np.ascontiguousarray(vectors[rows])  # no 4 GB copy at 10^6
        owners = patient[rows]

        def query(row: int):
            scores = matrix @ vectors[row]
            scores[owners == patient[row]] = -np.inf
            top = np.argpartition(-scores, K)[:K]
            return rows[top[np.argsort(-scores[top])]]
        return query
    return prepare


def faiss_direct_method(index, vectors: np.ndarray, patient: np.ndarray, masks, params_for=None,
                        row_of_label: np.ndarray | None = None):
    """A faiss index used as a user would: an IDSelectorBatch per filter, labels = row numbers
    (or mapped to rows by `row_of_label` for an index whose labels are its insertion order)."""
    import faiss

    n = len(vectors)
    label_of_row = np.arange(n) if row_of_label is None else np.argsort(row_of_label)
    rows_of = np.arange(n) if row_of_label is None else row_of_label

    def prepare(filter_name: str):
        mask = masks[filter_name]
        selector = None if mask is None else faiss.IDSelectorBatch(label_of_row[np.flatnonzero(mask)].astype(np.int64))

        def query(row: int):
            params = params_for(selector) if params_for else (faiss.SearchParameters(sel=selector) if selector else None)
            _, found = index.search(vectors[row:row + 1], K + 4, params=params)
            found = [int(rows_of[label]) for label in found[0] if label >= 0]
            return [r for r in found if patient[r] != patient[row]][:K]
        return query
    return prepare


def lancedb_methods(work: Path, vectors: np.ndarray, patient: np.ndarray, masks, truth: Truth, tuning_rows,
                    with_flat: bool = True):
    import lancedb
    import pyarrow as pa

    n, dim = vectors.shape
    rows = np.arange(n)
    table = pa.table({"row": rows, "patient": patient.astype(np.int64), "half": rows % 2, "tenth": rows % 10,
                      "hundredth": rows % 100,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)})
    db = lancedb.connect(str(work / "lancedb"))
    flat = db.create_table("flat", data=table, mode="overwrite") if with_flat else None
    indexed = db.create_table("ivfpq", data=table, mode="overwrite")
    started = time.perf_counter()
    partitions = max(1, int(np.sqrt(n)))
    indexed.create_index(metric="dot", vector_column_name="vector", num_partitions=partitions, num_sub_vectors=dim // 16)
    build_seconds = time.perf_counter() - started
    where_of = {"none": None, "50%": "half = 1", "10%": "tenth = 3", "1%": "hundredth = 7"}

    def run(tbl, row, where, nprobes=None, refine=None, bypass=False):
        search = tbl.search(vectors[row], vector_column_name="vector").distance_type("dot").limit(K + 4)
        if bypass:
            search = search.bypass_vector_index()
        if nprobes:
            search = search.nprobes(nprobes)
        if refine:
            search = search.refine_factor(refine)
        if where:
            search = search.where(where, prefilter=True)
        result = search.select(["row", "patient"]).to_arrow()
        found = result.column("row").to_pylist()
        owners = result.column("patient").to_pylist()
        return [r for r, p in zip(found, owners) if p != patient[row]][:K]

    def flat_prepare(filter_name):
        return lambda row: run(flat, row, where_of[filter_name], bypass=True)

    tuned = {}

    def ivfpq_prepare(filter_name):
        if filter_name not in tuned:
            tuned[filter_name] = (partitions, 10)
            for nprobes in (8, 16, 32, 64, 128, 256, partitions):
                for refine in (5, 10, 20):
                    got = np.mean([recall(run(indexed, r, where_of[filter_name], min(nprobes, partitions), refine),
                                          truth.top(r, masks[filter_name])) for r in tuning_rows])
                    if got >= TARGET_RECALL:
                        tuned[filter_name] = (min(nprobes, partitions), refine)
                        break
                else:
                    continue
                break
        nprobes, refine = tuned[filter_name]
        return lambda row: run(indexed, row, where_of[filter_name], nprobes, refine)
    return flat_prepare if with_flat else None, ivfpq_prepare, {"lancedb_ivfpq_build_seconds": build_seconds, "tuned": tuned}


def hnswlib_method(vectors: np.ndarray, patient: np.ndarray, masks, truth: Truth, tuning_rows):
    import hnswlib

    n, dim = vectors.shape
    index = hnswlib.Index(space="ip", dim=dim)
    started = time.perf_counter()
    index.init_index(max_elements=n, ef_construction=64, M=32, random_seed=0)
    index.add_items(vectors, np.arange(n))  # built on every core, as a user would
    index.set_num_threads(1)  # queried one at a time on one thread, like every other method
    build = time.perf_counter() - started
    tuned = {}

    def search(row, mask, ef):
        index.set_ef(ef)
        keep = (lambda i: bool(mask[i])) if mask is not None else None
        labels, _ = index.knn_query(vectors[row:row + 1], k=K + 4, filter=keep)
        return [r for r in labels[0] if patient[r] != patient[row]][:K]

    def prepare(filter_name):
        mask = masks[filter_name]
        if filter_name not in tuned:
            tuned[filter_name] = 1024
            for ef in (16, 32, 64, 128, 256, 512, 1024):
                if np.mean([recall(search(r, mask, ef), truth.top(r, mask)) for r in tuning_rows]) >= TARGET_RECALL:
                    tuned[filter_name] = ef
                    break
        return lambda row: search(row, mask, tuned[filter_name])
    return prepare, {"hnswlib_build_seconds": build, "tuned_ef": tuned}


def cold_cli(atlas_path: Path, slide: str, repeats: int = 5) -> dict:
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "threads-search search --slide-id": [str(Path(sys.executable).parent / "threads-search"), "search",
                                             str(atlas_path), "--slide-id", slide, "-k", "10"],
    }
    timings = {name: [] for name in commands}
    for _ in range(repeats):  # interleaved
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            timings[name].append(time.perf_counter() - started)
    return {name: {"median_s": float(np.median(v)), "min_s": float(np.min(v))} for name, v in timings.items()}


def run_size(n: int, n_queries: int, work: Path, methods: set[str], reuse: bool = False) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    atlas_path = work / f"atlas-{n}"
    reused = reuse and (atlas_path / "CURRENT").exists()
    built = reopen_query_atlas(atlas_path, n) if reused else build_query_atlas(atlas_path, n)
    vectors, vids, ids = built["vectors"], built["vids"], built["ids"]
    patient = np.arange(n) // 2
    masks = _masks(n)
    truth = Truth(vectors, patient)
    rng = np.random.default_rng(1)
    query_rows = rng.choice(n, size=min(n_queries, n), replace=False)
    tuning_rows = rng.choice(n, size=20, replace=False)
    patient_rows = {int(r): np.flatnonzero(patient == patient[r]) for r in query_rows}
    prepare_product, atlas = product_method(atlas_path, ids, {})
    with open(atlas_path / "indexes" / next(p.name for p in (atlas_path / "indexes").glob("*-slides-*.json"))) as h:
        chosen_kind = json.load(h)["kind"]
    candidates = {"threads-search": prepare_product,
                  "faiss-in-product": product_faiss_method(atlas, built["model_id"], vectors, vids, patient_rows, masks),
                  "numpy": numpy_method(vectors, patient, masks)}
    extra: dict = {"chosen_kind": chosen_kind,
                   ("atlas_reopen_seconds" if reused else "atlas_build_seconds"): built["seconds"]}
    if "faiss" in methods:
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        candidates["faiss-flat"] = faiss_direct_method(flat, vectors, patient, masks)
    if methods & {"faiss", "faiss-kind"}:  # faiss-kind alone: the product's kind direct, no 4 GB flat copy
        if chosen_kind != "flat":
            from threads_search.jobs.index import open_index

            product_index = open_index(atlas, built["model_id"], "slides")
            inner = faiss.downcast_index(product_index.index.index)
            params = product_index.search_params
            knob = product_index.spec.tuning_knob

            def params_for(selector, knob=knob, params=params):
                if knob == "efSearch":
                    return faiss.SearchParametersHNSW(efSearch=int(params[knob]), sel=selector)
                return faiss.SearchParametersIVF(nprobe=int(params[knob]), sel=selector)
            # The inner index labels vectors by insertion position; the id map holds each position's vid.
            vid_of_label = faiss.vector_to_array(product_index.index.id_map)
            row_of_vid = np.empty(int(vids.max()) + 1, np.int64)
            row_of_vid[vids] = np.arange(len(vids))
            candidates[f"faiss-{chosen_kind}"] = faiss_direct_method(inner, vectors, patient, masks, params_for,
                                                                     row_of_vid[vid_of_label])
    if methods & {"lancedb", "lancedb-ivfpq"}:  # lancedb-ivfpq alone: no flat table (20 s per query at 10^6)
        flat_prepare, ivfpq_prepare, info = lancedb_methods(work, vectors, patient, masks, truth, tuning_rows,
                                                            with_flat="lancedb" in methods)
        if flat_prepare is not None:
            candidates["lancedb-flat"] = flat_prepare
        candidates["lancedb-ivfpq"] = ivfpq_prepare
        extra.update(info)
    if "hnswlib" in methods:
        prepare, info = hnswlib_method(vectors, patient, masks, truth, tuning_rows)
        candidates["hnswlib"] = prepare
        extra.update(info)
    results = {}
    for filter_name in FILTERS:
        prepared = {name: prepare(filter_name) for name, prepare in candidates.items()}
        for name, query in prepared.items():  # warm-up
            for row in query_rows[:3]:
                query(int(row))
        times = {name: [] for name in prepared}
        recalls = {name: [] for name in prepared}
        order_rng = np.random.default_rng(2)
        for row in query_rows:
            expected = truth.top(int(row), masks[filter_name])
            # Interleaved: each query through every method in turn, in a new random order per query,
            # so that work a method leaves running (LanceDB's thread pools) slows no one method alone.
            for name in order_rng.permutation(list(prepared)):
                query = prepared[name]
                started = time.perf_counter()
                found = query(int(row))
                times[name].append(time.perf_counter() - started)
                recalls[name].append(recall(found, expected))
        results[filter_name] = {name: {"p50_ms": 1e3 * float(np.median(times[name])),
                                       "p99_ms": 1e3 * float(np.percentile(times[name], 99)),
                                       "recall_at_10": float(np.mean(recalls[name]))} for name in prepared}
        product, inner = results[filter_name]["threads-search"], results[filter_name]["faiss-in-product"]
        results[filter_name]["overhead_p50_ms"] = product["p50_ms"] - inner["p50_ms"]
        print(f"N={n:>8} filter {filter_name:>4}: " + ", ".join(
            f"{name} {r['p50_ms']:.2f} ms (r {r['recall_at_10']:.3f})" for name, r in results[filter_name].items()
            if isinstance(r, dict)) + f"; overhead {results[filter_name]['overhead_p50_ms']:.2f} ms", flush=True)
    extra["cold_cli"] = cold_cli(atlas_path, ids[int(query_rows[0])])
    print(f"N={n:>8} cold CLI: " + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in extra["cold_cli"].items()), flush=True)
    atlas.close()
    return {"n": n, "queries": int(len(query_rows)), "filters": results, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--methods", default="faiss,lancedb,hnswlib",
                        help="peers to include: faiss (flat and the chosen kind), faiss-kind, lancedb (flat and IVF_PQ), "
                             "lancedb-ivfpq, hnswlib; product-only: none (the product, its indexer call and numpy)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--name", default="query_path", help="results/<name>.json")
    parser.add_argument("--reuse", action="store_true",
                        help="reopen WORK/atlas-N left by an earlier run (same seed) instead of rebuilding it, and keep it")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-query-path-"))
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    runs = []
    try:
        for n in sizes:
            runs.append(run_size(n, args.queries, work, set(args.methods.split(",")), args.reuse))
            if not args.reuse:
                shutil.rmtree(work / f"atlas-{n}", ignore_errors=True)
            shutil.rmtree(work / "lancedb", ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
