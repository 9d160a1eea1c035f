"""Retrieval evaluator speed, side by side with what a user would otherwise write.

On the same random L2-normalised vectors with same-patient exclusion, times:
- `rank_database`: numpy float64 scores in chunks, stable ties, own patient excluded;
- faiss `IndexFlatIP` exact search of k + (most items of one patient), then dropping the
  query's own patient in a Python loop (the usual hand-written evaluation), checked to give
  the same top k;
- a full `np.argsort` of every score row (the naive numpy way), checked the same way;
- `evaluate_retrieval` end to end (ranking, 4 metrics x K = 1, 5, 10, exact chance baseline,
  1000 patient-bootstrap replicates overall and per class);
- the exact chance MV@K alone at K = 10 and 50 (its cost grows as K^3).

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluation.py [--queries 1000] [--database 20000]

Times are the best of 3 runs (the machine is shared). Writes benchmarks/results/evaluation.json
and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from threads_search.evaluation import chance, evaluate_retrieval, rank_database

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 3


def _best_time(function, *args, **kwargs):
    """(result, best wall seconds over REPEATS runs)."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def _cohort(n_queries: int, n_database: int, dim: int, seed: int = 0):
    """Random unit vectors, ~3 items per patient, 12 labels of which 8 are rare."""
    rng = np.random.default_rng(seed)
    total = n_queries + n_database
    vectors = rng.normal(size=(total, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    patients = rng.integers(0, total // 3, size=total)
    labels = rng.choice(12, size=total, p=np.r_[[0.2] * 4, [0.025] * 8])
    split = slice(0, n_queries), slice(n_queries, None)
    return [(vectors[part], patients[part], labels[part]) for part in split]


def _faiss_with_exclusion(queries, database, k, query_patients, db_patients):
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    _, found = index.search(queries, k + int(np.bincount(db_patients).max()))
    kept = np.full((len(queries), k), -1, dtype=np.int64)
    for q, row in enumerate(found):
        row = row[(row >= 0) & (db_patients[np.maximum(row, 0)] != query_patients[q])][:k]
        kept[q, : len(row)] = row
    return kept


def _argsort_with_exclusion(queries, database, k, query_patients, db_patients):
    scores = queries.astype(np.float64) @ database.astype(np.float64).T
    scores[query_patients[:, None] == db_patients[None, :]] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("-k", type=int, default=10)
    arguments = parser.parse_args()
    (queries, query_patients, query_labels), (database, db_patients, db_labels) = _cohort(
        arguments.queries, arguments.database, arguments.dim
    )
    ranking_inputs = (queries, database, arguments.k, query_patients, db_patients)

    (ours, _), ours_s = _best_time(rank_database, *ranking_inputs)
    flat, flat_s = _best_time(_faiss_with_exclusion, *ranking_inputs)
    naive, naive_s = _best_time(_argsort_with_exclusion, *ranking_inputs)
    report, report_s = _best_time(
        evaluate_retrieval,
        *(queries, query_labels, query_patients, database, db_labels, db_patients),
        ks=(1, 5, 10),
        n_bootstrap=1000,
    )
    # Eligible database items per label for each query: all of them minus its own patient's.
    own = (query_patients[:, None] == db_patients[None, :]).astype(np.int64)
    one_hot = np.eye(12, dtype=np.int64)[db_labels]
    eligible = one_hot.sum(axis=0)[None, :] - own @ one_hot
    chance_s = {
        k: _best_time(chance.expected_majority_vote_at_k, query_labels, eligible, k)[1] for k in (10, 50)
    }
    results = {
        "rank_database": {"seconds": ours_s},
        "faiss_flat_ip_plus_exclusion": {"seconds": flat_s, "same_top_k": float(np.mean(ours == flat))},
        "numpy_full_argsort": {"seconds": naive_s, "same_top_k": float(np.mean(ours == naive))},
        "evaluate_retrieval": {
            "seconds": report_s,
            "mAP@5": report.model.metrics["mAP@5"],
            "chance_mAP@5": report.chance.metrics["mAP@5"],
        },
        **{f"chance_MV@{k}": {"seconds": seconds} for k, seconds in chance_s.items()},
    }
    print(f"{arguments.queries} queries x {arguments.database} database x {arguments.dim}-d, k={arguments.k}")
    for name, result in results.items():
        extra = ", ".join(f"{key} {value:.4f}" for key, value in result.items() if key != "seconds")
        print(f"  {name:32s} {result['seconds']:7.2f} s   {extra}")
    payload = {
        "config": vars(arguments) | {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "results": results,
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_evaluation.py "
        f"--queries {arguments.queries} --database {arguments.database} --dim {arguments.dim} -k {arguments.k}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
