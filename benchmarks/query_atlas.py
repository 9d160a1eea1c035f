"""A large atlas for query-path benchmarks, built without patch-feature files.

N slide items with metadata columns that select 50 %, 10 % and 1 % of them (`half = 1`,
`tenth = 3`, `hundredth = 7`), one patient per two slides, a stored mean-pooling model, N
clustered unit vectors written as its slide embeddings (through the atlas's own embedding
store), and the index `--kind auto` chooses (or the kind given).

    python benchmarks/query_atlas.py --n 100000 --out /tmp/atlas-1e5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

FILTERS = {"none": None, "50%": "half = 1", "10%": "tenth = 3", "1%": "hundredth = 7"}
DIM = 1024
CHUNK = 65_536


def build_query_atlas(root: Path, n: int, kind: str = "auto", seed: int = 0) -> dict:
    """Create the atlas at `root`; returns {"model_id", "vectors" (n, DIM) float32, "vids" (n,), "seconds"}."""
    import pyarrow as pa

    from threads_search.atlas.embeddings import write_part
    from threads_search.atlas.items import item_table, upsert_items
    from threads_search.atlas.metadata import apply_metadata
    from threads_search.atlas.store import init_atlas
    from threads_search.atlas.stored_models import store_model
    from threads_search.encoders.registry import create_model
    from threads_search.indexer.synthetic import clustered_unit_vectors
    from threads_search.jobs.index import build_atlas_indexes
    from threads_search.readers.metadata_csv import MetadataTable

    started = time.perf_counter()
    ids = [f"SLIDE-{i:07d}" for i in range(n)]
    atlas = init_atlas(root)
    with atlas:
        with atlas.transaction():
            upsert_items(atlas, "slides", ids, [f"PATIENT-{i // 2:07d}" for i in range(n)])
            rows = np.arange(n)
            table = pa.table({"slide_id": ids, "half": rows % 2, "tenth": rows % 10, "hundredth": rows % 100,
                              "site": [f"site{i % 7}" for i in range(n)]})
            apply_metadata(atlas, MetadataTable(path=root / "generated.csv", key_column="slide_id", table=table), "slides")
            atlas.set_meta("feature_dim", str(DIM))
        model_id = store_model(atlas, create_model("meanpool", in_dim=DIM, patch_encoder=""), {"benchmark": True})
        vids = item_table(atlas, "slides").vids
        vectors = clustered_unit_vectors(n, DIM, seed=seed)
        for start in range(0, n, CHUNK):
            write_part(atlas, model_id, "slides", vids[start:start + CHUNK], vectors[start:start + CHUNK])
        build_atlas_indexes(atlas, model_id, kind=kind, seed=seed)
    return {"model_id": model_id, "vectors": vectors, "vids": vids, "ids": ids,
            "seconds": time.perf_counter() - started}


def reopen_query_atlas(root: Path, n: int, seed: int = 0) -> dict:
    """An atlas `build_query_atlas(root, n, seed=seed)` left behind, reopened (its vectors regenerated)."""
    from threads_search.atlas.items import item_table
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import list_models
    from threads_search.indexer.synthetic import clustered_unit_vectors

    started = time.perf_counter()
    with open_atlas(root, read_only=True) as atlas:
        (model_id, _), = list_models(atlas)
        vids = item_table(atlas, "slides").vids
    if len(vids) != n:
        raise SystemExit(f"{root}: holds {len(vids)} slides, not {n}")
    return {"model_id": model_id, "vectors": clustered_unit_vectors(n, DIM, seed=seed), "vids": vids,
            "ids": [f"SLIDE-{i:07d}" for i in range(n)], "seconds": time.perf_counter() - started, "reused": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    built = build_query_atlas(args.out, args.n, args.kind)
    print(f"{args.out}: {args.n} slides, model {built['model_id']}, {built['seconds']:.1f} s")


if __name__ == "__main__":
    main()
