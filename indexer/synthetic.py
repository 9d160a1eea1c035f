"""Clustered unit vectors for the indexer's tests and benchmark (numpy only).

Embeddings of slides and profiles have a low intrinsic dimension: they vary along a few
directions (subtype, site, stain) inside a 1024-d space. The generator mimics that: Gaussian
clusters in a `latent_dim`-d space, lifted to `dim` by one random linear map, plus a little
isotropic noise, then L2-normalised. Neighbours are then well defined (unlike isotropic noise
in 1024-d, where all distances look alike) yet not trivially separated.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

GENERATE_CHUNK_ROWS = 65_536


def clustered_unit_vectors(
    n: int,
    dim: int,
    n_clusters: int = 64,
    latent_dim: int = 32,
    spread: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """(n, dim) float32 L2-normalised vectors drawn around `n_clusters` centres.

    Latent points are centre + `spread` * N(0, I) with centres N(0, I) in `latent_dim`
    dimensions; the lift to `dim` has unit-variance entries scaled by 1/sqrt(latent_dim), and
    `noise` is the per-dimension standard deviation of the isotropic noise added after it
    (relative to ~1 for the lifted signal). Built in chunks: 10^6 x 1024 needs no temporaries
    beyond 256 MiB.
    """
    vectors = np.empty((n, dim), dtype=np.float32)
    start = 0
    for chunk in clustered_unit_vector_chunks(n, dim, n_clusters, latent_dim, spread, noise, seed):
        vectors[start:start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    return vectors


def clustered_unit_vector_chunks(
    n: int,
    dim: int,
    n_clusters: int = 64,
    latent_dim: int = 32,
    spread: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
    chunk_rows: int = GENERATE_CHUNK_ROWS,
) -> Iterator[np.ndarray]:
    """The rows of `clustered_unit_vectors(n, dim, ...)` as (<= chunk_rows, dim) float32
    chunks, generated one at a time: 10^7 x 768-d vectors (30 GB) stream in 200 MiB."""
    rng = np.random.default_rng(seed)
    latent_dim = min(latent_dim, dim)
    centres = rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
    lift = (rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)).astype(np.float32)
    labels = rng.integers(0, n_clusters, size=n)
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(n, start + chunk_rows))
        size = rows.stop - rows.start
        scatter = rng.standard_normal((size, latent_dim), dtype=np.float32)
        latent = centres[labels[rows]] + spread * scatter
        chunk = latent @ lift + noise * rng.standard_normal((size, dim), dtype=np.float32)
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        yield chunk
