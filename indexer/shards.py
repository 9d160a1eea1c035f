"""Which shard holds a vector id: a fixed hash of the id, so any process places any id alone.

A slide (one vid) lands on one shard; because the hash mixes the bits, consecutive vids (slides
ingested together, often of one site or one patient) spread over every shard.
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError

MAX_SHARDS = 4096
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def check_shard_count(n_shards: int, option: str = "--shards") -> int:
    if not 1 <= int(n_shards) <= MAX_SHARDS:
        raise InputError(f"{option} {n_shards}: expected 1 to {MAX_SHARDS}")
    return int(n_shards)


def shard_of(ids: np.ndarray, n_shards: int) -> np.ndarray:
    """(n,) int64 shard of each id (splitmix64 finaliser of the id, modulo `n_shards`)."""
    mixed = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = (mixed ^ (mixed >> np.uint64(30))) * _MIX_1
        mixed = (mixed ^ (mixed >> np.uint64(27))) * _MIX_2
        mixed = mixed ^ (mixed >> np.uint64(31))
    return (mixed % np.uint64(n_shards)).astype(np.int64)


def split_by_shard(ids: np.ndarray, n_shards: int) -> list[np.ndarray]:
    """The positions of `ids` on each shard: a list of `n_shards` (m_s,) int64 index arrays, in input order."""
    shards = shard_of(ids, n_shards)
    return [np.flatnonzero(shards == shard) for shard in range(n_shards)]
