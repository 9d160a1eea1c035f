"""`index --shards N --ray`: each shard's index built by a Ray task on the cluster.

A task gets one `ShardJob` (its vids and the embedding part files that hold them, absolute
paths on the shared atlas folder), reads its vectors itself, builds the index with the local
code (`jobs.index_shards.build_shard`) and writes its files atomically; the driver records all
shards of a modality in one transaction once every task has finished, so a failed or interrupted
build records nothing (the next writer removes the orphaned files).
"""

from __future__ import annotations

from threads_search.distributed.cluster import RayConfig
from threads_search.jobs.index_shards import ShardJob


def ray_shard_builder(ray_config: RayConfig):
    """A `jobs.index_shards.ShardBuilder` running one Ray task per shard (`num_cpus`/`num_gpus` each)."""
    def build(jobs: list[ShardJob]) -> list[dict]:
        from threads_search.distributed.cluster import cancel_and_reraise, connect
        from threads_search.jobs.index_shards import build_shard

        ray = connect(ray_config.checked().address)
        options = {"num_cpus": ray_config.num_cpus, "max_retries": 2}
        if ray_config.num_gpus:
            options["num_gpus"] = ray_config.num_gpus
        task = ray.remote(build_shard).options(**options)
        pending = [task.remote(job) for job in jobs]
        try:
            return ray.get(pending)
        except Exception as error:
            cancel_and_reraise(ray, pending, error)
    return build
