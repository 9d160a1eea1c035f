"""Mosaic: a small, representative subset of one slide's patches (after Yottixel).

Yottixel (Kalra et al., 2020) clusters a slide's patches by appearance, then spreads a fixed
share of each cluster over the tissue. Here:
1. k-means over the slide's L2-normalised features into min(MOSAIC_FEATURE_CLUSTERS, n_keep)
   appearance clusters;
2. inside each cluster, round(fraction * its size) (at least one) members are kept: k-means over
   their level-0 coordinates (their features when there are none) with that many centres, and
   the member nearest each centre.
Every k-means is seeded, so the same features, coordinates, fraction and seed always give
the same rows.
"""

from __future__ import annotations

import hashlib

import faiss
import numpy as np

from threads_search.errors import InputError

MOSAIC_FEATURE_CLUSTERS = 9  # Yottixel's choice
KMEANS_ITERATIONS = 20


def mosaic_rows(features: np.ndarray, coords: np.ndarray | None, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows (int64) of the patches kept from one slide.

    features: (n, d) float32 L2-normalised; coords: (n, 2) level-0 (x, y) or None;
    fraction in (0, 1]: share of the patches kept (at least one per appearance cluster).
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"--mosaic {fraction}: expected a fraction in (0, 1], e.g. 0.05")
    n = features.shape[0]
    n_keep = max(1, round(fraction * n))
    if fraction == 1.0 or n_keep >= n:
        return np.arange(n, dtype=np.int64)
    n_clusters = min(MOSAIC_FEATURE_CLUSTERS, n_keep)
    labels = _kmeans_labels(features, n_clusters, seed)
    kept = []
    for cluster in range(n_clusters):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            continue
        wanted = max(1, round(fraction * members.size))
        space = (coords[members].astype(np.float32) if coords is not None else features[members])
        kept.append(members[_nearest_to_centres(space, wanted, seed + 1 + cluster)])
    return np.unique(np.concatenate(kept)).astype(np.int64)


def slide_seed(seed: int, slide_id: str) -> int:
    """A per-slide seed from the run's seed and the slide id (independent of vids and order)."""
    digest = hashlib.blake2b(f"{seed}:{slide_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _kmeans_labels(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    if k <= 1:
        return np.zeros(points.shape[0], dtype=np.int64)
    kmeans = faiss.Kmeans(points.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    kmeans.train(np.ascontiguousarray(points, dtype=np.float32))
    _, labels = kmeans.index.search(np.ascontiguousarray(points, dtype=np.float32), 1)
    return labels[:, 0]


def _nearest_to_centres(points: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Positions of k distinct points, each the nearest still-unused point to one k-means centre."""
    if k >= points.shape[0]:
        return np.arange(points.shape[0])
    points = np.ascontiguousarray(points, dtype=np.float32)
    kmeans = faiss.Kmeans(points.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 20)
    kmeans.train(points)
    # Each centre's nearest points in order; a point already taken by an earlier centre is skipped.
    _, nearest = faiss.knn(kmeans.centroids, points, min(points.shape[0], k + 8))
    taken: set[int] = set()
    chosen = []
    for row in nearest:
        pick = next((int(p) for p in row if p >= 0 and int(p) not in taken), None)
        if pick is None:
            pick = next(p for p in range(points.shape[0]) if p not in taken)
        taken.add(pick)
        chosen.append(pick)
    return np.array(chosen, dtype=np.int64)
