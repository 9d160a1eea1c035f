"""Incremental adds to an existing index."""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError
from threads_search.indexer.build import add_in_chunks
from threads_search.indexer.bundle import REBUILD_HINT, IndexBundle
from threads_search.indexer.validate import prepare_ids, prepare_vectors


def add_vectors(loaded: IndexBundle, vectors: np.ndarray, ids: np.ndarray) -> IndexBundle:
    """Add `vectors` (m, dim) under new `ids` (m,) int64 to `loaded` in place; returns it.

    Flat and HNSW take new vectors as well as a rebuild would. IVF and IVF-PQ file them under
    centroids (and codebooks) learned from the vectors present at build time, which is sound
    while the collection resembles what they were trained on: the total may reach the kind's
    `max_growth` times the build count, beyond which a rebuild is required. The sidecar's
    recall stays the one measured at build; `added_since_build` says how far the index has
    moved from it. Call `save_index` to persist the result.
    """
    spec = loaded.spec
    if not spec.supports_add:
        raise InputError(f"a {spec.name} index cannot take new vectors; {REBUILD_HINT}")
    vectors = prepare_vectors(vectors, dim=loaded.dim)
    ids = prepare_ids(ids, vectors.shape[0])
    present = np.flatnonzero(loaded.holds(ids))
    if present.size:
        row = int(present[0])
        raise InputError(f"ids row {row}: id {ids[row]} is already in the index")
    count_at_build = int(loaded.sidecar["count_at_build"])
    total = loaded.count + ids.size
    if spec.max_growth is not None and total > spec.max_growth * count_at_build:
        raise InputError(
            f"adding {ids.size} vectors would bring this {spec.name} index, trained on "
            f"{count_at_build}, to {total} (more than {spec.max_growth:g}x); {REBUILD_HINT}"
        )
    add_in_chunks(loaded.index, vectors, ids)
    if loaded.gpu_index is not None:
        add_in_chunks(loaded.gpu_index, vectors, ids)
    loaded.sidecar["count"] = loaded.count
    loaded.sidecar["added_since_build"] = loaded.count - count_at_build
    return loaded


def remove_vectors(loaded: IndexBundle, ids: np.ndarray) -> IndexBundle:
    """Remove `ids` (int64) from `loaded` in place (ids it does not hold are ignored); returns it.

    Raises InputError for kinds whose faiss index cannot remove (HNSW graphs): rebuild those.
    """
    ids = np.asarray(ids, dtype=np.int64)
    ids = ids[loaded.holds(ids)]
    if ids.size == 0:
        return loaded
    import faiss

    try:
        loaded.index.remove_ids(faiss.IDSelectorBatch(ids))
    except RuntimeError:
        raise InputError(f"a {loaded.spec.name} index cannot remove vectors; {REBUILD_HINT}") from None
    if loaded.gpu_index is not None:
        loaded.gpu_index.remove_ids(faiss.IDSelectorBatch(ids))
    loaded.sidecar["count"] = loaded.count
    loaded.sidecar["removed_since_build"] = int(loaded.sidecar.get("removed_since_build", 0)) + int(ids.size)
    return loaded
