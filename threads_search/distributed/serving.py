"""`serve --ray`: the service answers searches from sharded indexes on Ray actors.

`ShardedIndexes` is the service's index source: for the generation a request reads, it returns
the `ShardedIndex` of the recorded shards of (model, target), starting their actors the first
time those shard files are asked for. When a writer records a new shard build, the next request
starts actors for the new files; the previous set is stopped once a third set replaces it, so
requests still running on the previous generation finish on live actors. A target without
shards is answered by its single index, as without --ray.
"""

from __future__ import annotations

import threading

from threads_search.atlas.store import Atlas
from threads_search.distributed.shards import ShardedIndex, ShardPlacement, ShardServer

KEPT_BUILDS = 2  # shard sets kept running per (model, target): the current one and the one before


class ShardedIndexes:
    def __init__(self, address: str | None = "auto", placement: ShardPlacement = ShardPlacement(),
                 server_class=ShardServer) -> None:
        from threads_search.distributed.cluster import connect

        self.ray = connect(address)
        self.placement, self.server_class = placement, server_class
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], list[tuple[tuple, ShardedIndex]]] = {}

    def __call__(self, atlas: Atlas, model_id: str, target: str) -> ShardedIndex | None:
        from threads_search.atlas.index_shards import shard_records

        records = shard_records(atlas, model_id, target)
        if not records:
            return None
        key = tuple((r.shard, r.stem) for r in records)
        with self._lock:
            builds = self._running.setdefault((model_id, target), [])
            for held, index in builds:
                if held == key:
                    return index
            stems = {r.shard: str(atlas.path(r.stem)) for r in records if r.stem is not None}
            index = ShardedIndex(self.ray, stems, records[0].n_shards, model_id, target, self.placement, self.server_class)
            builds.append((key, index))
            while len(builds) > KEPT_BUILDS:
                builds.pop(0)[1].close()
            return index

    def close(self) -> None:
        with self._lock:
            for builds in self._running.values():
                for _, index in builds:
                    index.close()
            self._running.clear()
