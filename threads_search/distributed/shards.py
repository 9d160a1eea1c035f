"""Sharded search: one Ray actor per index shard, a query fanned out to all, merged exactly.

`index --shards N` wrote shard `s` with the items whose vid hashes to `s`
(`threads_search.indexer.shards`). `ShardedIndex` starts one `ShardServer` actor per non-empty
shard (each loads its shard's files from the atlas folder, which must be visible to every
node), and stands in for the single index in `search_many`: the coordinator evaluates the
metadata filter and the exclusions once, splits those id sets by the same hash and sends each
shard only its own ids; each shard returns its top `fetch` (vid, exact score) and the
coordinator keeps the top `fetch` of the union by (score, vid), so flat shards give the single
index's answer, ties included.

A shard whose actor dies is restarted by Ray and its call retried (`max_restarts`,
`max_task_retries`); when that is exhausted the coordinator starts a fresh actor and retries
once more; a shard still failing raises a ClusterError: a query never returns a partial
answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasError, ClusterError, ModelMismatchError

RAY_RESTARTS = 2  # per actor, done by Ray itself (the call in flight is retried on the restarted actor)
COORDINATOR_RETRIES = 1  # fresh actors the coordinator starts for a shard after Ray gave up on it


class ShardServer:
    """One shard's index, held by one actor; answers searches with the indexer's own `search`."""

    def __init__(self, stem: str, device: str = "cpu") -> None:
        from threads_search.indexer import load_index

        self.index = load_index(stem, device=device)

    def describe(self) -> dict:
        return {"sidecar": self.index.sidecar, "count": self.index.count}

    def ids(self) -> np.ndarray:
        return self.index.sorted_ids()

    def search(self, vectors: np.ndarray, fetch: int, allowed: np.ndarray | None,
               exclusions: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """(q, fetch) float32 scores and int64 ids (-1 padded) of this shard's best eligible items."""
        from threads_search.indexer import search

        return search(self.index, vectors, fetch, allowed_ids=allowed, exclude_ids=exclusions)


@dataclass(frozen=True)
class ShardPlacement:
    """How shard actors are placed: CPUs and GPUs each reserves, the device its index is loaded on,
    and how long one shard may take to answer a query before it counts as failed."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str = "cpu"
    timeout_s: float = 60.0


class ShardedIndex:
    """The shards of one (model, modality) on Ray actors, searchable like one index (see module)."""

    def __init__(self, ray, stems: dict[int, str], n_shards: int, model_id: str, modality: str,
                 placement: ShardPlacement = ShardPlacement(), server_class=ShardServer) -> None:
        self.ray, self.stems, self.n_shards = ray, stems, n_shards
        self.model_id, self.modality, self.placement = model_id, modality, placement
        self._remote = ray.remote(max_restarts=RAY_RESTARTS, max_task_retries=RAY_RESTARTS)(server_class)
        self._actors = {shard: self._start(shard) for shard in stems}
        self.restarts = 0
        descriptions = ray.get([actor.describe.remote() for actor in self._actors.values()])
        for shard, description in zip(self._actors, descriptions):
            held = description["sidecar"].get("model_id")
            if held != model_id:
                raise ModelMismatchError(f"{stems[shard]}.faiss (shard {shard}) was built from model {held}, not {model_id}; "
                                         f"rebuild with `threads-search index ATLAS --model {model_id} --shards {n_shards}`")
        self.dim = int(descriptions[0]["sidecar"]["dimension"]) if descriptions else 0
        self.count = sum(int(d["count"]) for d in descriptions)
        ids = ray.get([actor.ids.remote() for actor in self._actors.values()])
        self._sorted_ids = np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64)

    def _start(self, shard: int):
        options = {"num_cpus": self.placement.num_cpus}
        if self.placement.num_gpus:
            options["num_gpus"] = self.placement.num_gpus
        return self._remote.options(**options).remote(self.stems[shard], self.placement.device)

    # What search_many asks of an index.
    def sorted_ids(self) -> np.ndarray:
        return self._sorted_ids

    def holds(self, ids: np.ndarray) -> np.ndarray:
        from threads_search.indexer.bundle import sorted_membership

        return sorted_membership(np.asarray(ids, np.int64), self._sorted_ids)

    def keeps_vectors(self) -> bool:
        return False

    def stored_vectors(self, ids: np.ndarray) -> None:
        return None

    def fan_out(self, vectors: np.ndarray, fetch: int, allowed, exclusions: list[np.ndarray] | None):
        """Top `fetch` (scores (q, fetch) float32, ids (q, fetch) int64) over every shard.

        `allowed`: an IdFilter (or sorted ids) of the candidates, None for all; `exclusions`: one
        sorted id array per query row. Each shard gets only its own part of both.
        """
        from threads_search.indexer.shards import shard_of

        vectors = np.ascontiguousarray(vectors, np.float32)
        allowed_ids = None if allowed is None else np.asarray(getattr(allowed, "ids", allowed), np.int64)
        allowed_shard = None if allowed_ids is None else shard_of(allowed_ids, self.n_shards)
        exclusion_shards = [None if e is None else (e, shard_of(e, self.n_shards)) for e in (exclusions or [])]
        calls = {}
        for shard in self._actors:
            mine = None if allowed_ids is None else allowed_ids[allowed_shard == shard]
            if mine is not None and mine.size == 0:
                continue  # no candidate on this shard
            own = None if exclusions is None else [
                np.zeros(0, np.int64) if pair is None else pair[0][pair[1] == shard] for pair in exclusion_shards]
            calls[shard] = (vectors, fetch, mine, own)
        answers = self._gather(calls)
        if not answers:
            return (np.full((vectors.shape[0], fetch), -np.inf, np.float32), np.full((vectors.shape[0], fetch), -1, np.int64))
        return merge_top(answers, fetch)

    def _gather(self, calls: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        pending = {shard: self._actors[shard].search.remote(*args) for shard, args in calls.items()}
        answers = []
        for shard, reference in pending.items():
            attempt = 0
            while True:
                try:
                    answers.append(self.ray.get(reference, timeout=self.placement.timeout_s))
                    break
                except Exception as error:  # an actor died past Ray's restarts, or timed out
                    if not _is_shard_failure(self.ray, error) or attempt >= COORDINATOR_RETRIES:
                        if _is_shard_failure(self.ray, error):
                            raise ClusterError(f"shard {shard} of the {self.modality} index ({self.stems[shard]}) failed "
                                               f"and did not recover ({type(error).__name__}); no partial results") from None
                        raise
                    attempt += 1
                    self._replace(shard)
                    reference = self._actors[shard].search.remote(*calls[shard])
        return answers

    def _replace(self, shard: int) -> None:
        try:
            self.ray.kill(self._actors[shard], no_restart=True)
        except Exception:  # already gone
            pass
        self._actors[shard] = self._start(shard)
        self.restarts += 1

    def actor(self, shard: int):
        """The actor serving `shard` (for operators and tests)."""
        return self._actors[shard]

    def close(self) -> None:
        for actor in self._actors.values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._actors = {}

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_shard_failure(ray, error: Exception) -> bool:
    from ray import exceptions

    return isinstance(error, (exceptions.RayActorError, exceptions.GetTimeoutError, exceptions.ActorUnavailableError))


def merge_top(answers: list[tuple[np.ndarray, np.ndarray]], fetch: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `fetch` of each row over the shards' answers, by score then lower id; -1 padded."""
    scores = np.concatenate([a[0] for a in answers], axis=1).astype(np.float32)
    ids = np.concatenate([a[1] for a in answers], axis=1).astype(np.int64)
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    out_scores = np.full((ids.shape[0], fetch), -np.inf, np.float32)
    out_ids = np.full((ids.shape[0], fetch), -1, np.int64)
    for row in range(ids.shape[0]):
        valid = np.flatnonzero(ids[row] >= 0)
        order = valid[np.lexsort((ids[row, valid], -scores[row, valid]))][:fetch]
        out_scores[row, :order.size], out_ids[row, :order.size] = scores[row, order], ids[row, order]
    return out_scores, out_ids


def open_sharded_index(atlas: Atlas, model_id: str, modality: str = "slides", address: str | None = "auto",
                       placement: ShardPlacement = ShardPlacement(), server_class=ShardServer) -> ShardedIndex:
    """The recorded shards of (model, modality), each on a Ray actor; close() (or `with`) stops them."""
    from threads_search.atlas.index_shards import shard_records
    from threads_search.distributed.cluster import connect

    records = shard_records(atlas, model_id, modality)
    if not records:
        raise AtlasError(f"no sharded {modality} index for model {model_id}; run "
                         f"`threads-search index {atlas.root} --model {model_id} --shards N`")
    ray = connect(address)
    stems = {r.shard: str(atlas.path(r.stem)) for r in records if r.stem is not None}
    return ShardedIndex(ray, stems, records[0].n_shards, model_id, modality, placement, server_class)


def search_sharded(atlas: Atlas, queries: list, options, index: ShardedIndex) -> list:
    """`search_many` answered by the shards of `index` (same options, same result objects)."""
    from threads_search.search.query import search_many

    return search_many(atlas, queries, options, index=index)
