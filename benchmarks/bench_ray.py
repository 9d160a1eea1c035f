"""Ray on this machine: `embed` local vs `embed --ray` with 1 and 2 actors, and sharded vs single-index search.

Embedding: `--slides` generated TRIDENT files of `--patches` x 768 float16 features, ingested
into three copies of one atlas holding one untrained `--recipe` model (threads-abmil-cpu); each copy is
embedded once: locally (torch on one thread, as each Ray actor with `--num-cpus 1` runs), and
on the local Ray cluster with 1 and 2 actors (the actor pool's start and the model loading
are inside the timing; starting the cluster is not). Reported: slides/s, ratio to local, and
the overhead per slide of the 1-actor run over the local one.

Search: `--vectors` 1024-d clustered unit vectors, flat (exact) kind; one query at a time
(`--queries` of them), latency p50/p99 of the single index (`indexer.search`, one thread, as
`search` runs one query) against `ShardedIndex.fan_out` over 2 and 4 shard actors (each
searching its shard on one thread, the merge on the driver), and the same with a metadata
filter of 10 % of the ids. Results: benchmarks/results/ray.json.

    python benchmarks/bench_ray.py [--slides 200] [--patches 2000] [--vectors 1000000] [--queries 100]
    python benchmarks/bench_ray.py --embed-only --slides 60 --patches 10000 --recipe threads-abmil --name ray_heavy
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results" / "ray.json"


def write_slides(folder: pathlib.Path, n_slides: int, n_patches: int) -> None:
    import h5py

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    base = rng.normal(size=(n_patches, 768)).astype(np.float16)
    for slide in range(n_slides):
        features = base + rng.normal(0, 0.5, size=(1, 768)).astype(np.float16)  # one shift per slide: quick to write
        with h5py.File(folder / f"S{slide:05d}.h5", "w") as handle:
            handle.create_dataset("features", data=features)
            coords = handle.create_dataset("coords", data=np.zeros((n_patches, 2), np.int64))
            coords.attrs.update({"patch_size": 512, "patch_size_level0": 1024, "level0_magnification": 40,
                                 "target_magnification": 20, "name": f"S{slide:05d}"})
            handle["features"].attrs["encoder"] = "conch_v15"


def embed_benchmark(work: pathlib.Path, n_slides: int, n_patches: int, recipe: str, ray) -> dict:
    import torch

    from threads_search.atlas.store import init_atlas, open_atlas
    from threads_search.atlas.stored_models import store_model
    from threads_search.distributed.cluster import RayConfig
    from threads_search.distributed.embed import embed_atlas_ray
    from threads_search.encoders.registry import create_model
    from threads_search.ingest.slides import ingest_slides
    from threads_search.jobs.embed import embed_atlas

    write_slides(work / "features", n_slides, n_patches)
    init_atlas(work / "atlas").close()
    with open_atlas(work / "atlas") as atlas:
        ingest_slides(atlas, [work / "features"])
        torch.manual_seed(0)
        model_id = store_model(atlas, create_model(recipe, in_dim=768, patch_encoder="conch_v15"))
    for name in ("local", "ray1", "ray2"):
        shutil.copytree(work / "atlas", work / name)
    torch.set_num_threads(1)
    runs = {}
    for name, workers in (("local", None), ("ray1", 1), ("ray2", 2)):
        first: list[float] = []

        def progress(done: int, total: int, item: str) -> None:
            if not first:
                first.append(time.perf_counter())

        with open_atlas(work / name) as atlas:
            start = time.perf_counter()
            if workers is None:
                report = embed_atlas(atlas, model_id, progress)
            else:
                report = embed_atlas_ray(atlas, model_id, RayConfig(address="auto", workers=workers, num_cpus=1), progress)
            seconds = time.perf_counter() - start
        if report.embedded["slides"] != n_slides:
            raise SystemExit(f"embed {name}: embedded {report.embedded['slides']} slides, expected {n_slides}")
        runs[name] = {"seconds": round(seconds, 2), "slides_per_s": round(n_slides / seconds, 2),
                      "first_slides_after_s": round(first[0] - start, 2)}
        print(f"embed {name}: {seconds:.1f} s, {n_slides / seconds:.1f} slides/s", flush=True)
    local = runs["local"]["seconds"]
    for name in ("ray1", "ray2"):
        runs[name]["speed_vs_local"] = round(local / runs[name]["seconds"], 3)
    runs["ray1_overhead_ms_per_slide"] = round(1000 * (runs["ray1"]["seconds"] - local) / n_slides, 2)
    # The same without the pool's start (actor process, imports, model load: until the first batch came back).
    steady_ray = runs["ray1"]["seconds"] - runs["ray1"]["first_slides_after_s"]
    steady_local = runs["local"]["seconds"] - runs["local"]["first_slides_after_s"]
    runs["ray1_overhead_ms_per_slide_after_start"] = round(1000 * (steady_ray - steady_local) / n_slides, 2)
    return {"slides": n_slides, "patches_per_slide": n_patches, "recipe": recipe, "runs": runs}


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(256, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        out[start:stop] = centres[rng.integers(0, 256, stop - start)] + rng.normal(0, 0.6, (stop - start, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def percentiles(samples: list[float]) -> dict:
    return {"p50_ms": round(1000 * float(np.percentile(samples, 50)), 2), "p99_ms": round(1000 * float(np.percentile(samples, 99)), 2)}


def search_benchmark(work: pathlib.Path, n_vectors: int, n_queries: int, ray) -> dict:
    import faiss

    from threads_search.distributed.shards import ShardedIndex, ShardPlacement
    from threads_search.indexer import build_index, search, save_index
    from threads_search.indexer.id_filter import IdFilter
    from threads_search.indexer.shards import split_by_shard

    vectors = clustered(n_vectors, 1024, 1)
    ids = np.arange(1, n_vectors + 1, dtype=np.int64)
    queries = clustered(n_queries, 1024, 2)
    allowed = IdFilter(np.sort(np.random.default_rng(3).choice(ids, n_vectors // 10, replace=False)))
    stems: dict[int, dict[int, str]] = {}
    for n_shards in (2, 4):
        stems[n_shards] = {}
        for shard, rows in enumerate(split_by_shard(ids, n_shards)):
            stem = str(work / f"s{n_shards}-{shard}")
            save_index(build_index(vectors[rows], ids[rows], kind="flat"), stem)
            stems[n_shards][shard] = stem
    single = build_index(vectors, ids, kind="flat")
    del vectors
    faiss.omp_set_num_threads(1)
    results = {"vectors": n_vectors, "dim": 1024, "queries": n_queries, "k": 18}
    truth = {}
    for label, filter_ in (("all", None), ("filter_10pct", allowed)):
        times, answers = [], []
        for row in range(n_queries):
            start = time.perf_counter()
            answers.append(search(single, queries[row:row + 1], 18, allowed_ids=filter_)[1][0])
            times.append(time.perf_counter() - start)
        truth[label] = answers
        results[f"single_{label}"] = percentiles(times)
        print(f"single {label}: {results[f'single_{label}']}", flush=True)
    del single
    for n_shards, shard_stems in stems.items():
        with ShardedIndex(ray, shard_stems, n_shards, None, "slides", ShardPlacement(num_cpus=2 / n_shards)) as sharded:
            for label, filter_ in (("all", None), ("filter_10pct", allowed)):
                sharded.fan_out(queries[:1], 18, filter_, None)  # warm
                times, same = [], 0
                for row in range(n_queries):
                    start = time.perf_counter()
                    got = sharded.fan_out(queries[row:row + 1], 18, filter_, None)[1][0]
                    times.append(time.perf_counter() - start)
                    same += int(set(got) == set(truth[label][row]))
                entry = percentiles(times)
                entry["same_top18_as_single"] = f"{same}/{n_queries}"
                entry["p50_vs_single"] = round(results[f"single_{label}"]["p50_ms"] / entry["p50_ms"], 3)
                results[f"shards{n_shards}_{label}"] = entry
                print(f"{n_shards} shards {label}: {entry}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--recipe", default="threads-abmil-cpu", help="The slide encoder's recipe (threads-abmil: hidden 512).")
    parser.add_argument("--embed-only", action="store_true", help="Skip the search half.")
    parser.add_argument("--name", default="ray", help="Results file: benchmarks/results/NAME.json.")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    out = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0], "ray": ray.__version__}}
    with tempfile.TemporaryDirectory() as folder:
        work = pathlib.Path(folder)
        out["embed"] = embed_benchmark(work / "embed", args.slides, args.patches, args.recipe, ray)
        if not args.embed_only:
            out["search"] = search_benchmark(work / "search", args.vectors, args.queries, ray)
    ray.shutdown()
    results = RESULTS.with_name(f"{args.name}.json")
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
