"""`index --level patches --ray`: the per-slide planning of the patch-index build on a Ray cluster.

Planning is the per-slide work of the build: checking each feature file against its ingest
record, reading its row layout and, with `--mosaic`, the seeded k-means selection of the rows
to keep (the costly part: every feature of the slide is read and clustered). Ray tasks run it
over batches of slides, each reading its slides' files itself; the driver receives one small
plan per slide (the layout and the kept rows), then streams the kept rows into one index as the
local job does, so the index is the local one (the mosaic rows are seeded per slide).
"""

from __future__ import annotations

from threads_search.atlas.slides import AtlasSlide
from threads_search.distributed.cluster import RayConfig
from threads_search.jobs.patch_index import IndexedSlide, PatchIndexConfig

SLIDES_PER_TASK = 8


def _plan_batch(records: list[AtlasSlide], config: PatchIndexConfig, sizes: dict[int, int]) -> list[IndexedSlide]:
    from threads_search.jobs.patch_index import plan_slide

    return [plan_slide(record, config, sizes.get(record.vid)) for record in records]


def ray_planner(ray_config: RayConfig):
    """A `jobs.patch_index.SlidePlanner` that plans batches of slides as Ray tasks."""
    def plan(records: list[AtlasSlide], config: PatchIndexConfig, sizes: dict[int, int], progress) -> list[IndexedSlide]:
        from threads_search.distributed.cluster import cancel_and_reraise, connect

        ray = connect(ray_config.checked().address)
        task = ray.remote(_plan_batch).options(num_cpus=ray_config.num_cpus, max_retries=2)
        batches = [records[i:i + SLIDES_PER_TASK] for i in range(0, len(records), SLIDES_PER_TASK)]
        pending = {task.remote(batch, config, {r.vid: sizes.get(r.vid) for r in batch}): number
                   for number, batch in enumerate(batches)}
        planned: dict[int, list[IndexedSlide]] = {}
        done = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                number = pending.pop(ready[0])
                planned[number] = ray.get(ready[0])
                done += len(planned[number])
                progress(done, len(records), planned[number][-1].slide_id)
        except Exception as error:
            cancel_and_reraise(ray, pending, error)
        return [slide for number in range(len(batches)) for slide in planned[number]]
    return plan
