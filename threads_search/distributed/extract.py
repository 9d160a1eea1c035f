"""`extract --ray`: raw slides -> TRIDENT feature files on a Ray Data actor pool.

Each actor creates the patch encoder once (on its GPU with `--num-gpus 1`) and runs the local
job's own per-slide step (`wsi.extract.extract_one_slide`): it reads its slides itself and
writes `<out>/<slide_id>.h5` and the thumbnail atomically, so a re-run skips finished slides
exactly as the local job does. Only slide paths go out and one small status row per slide comes
back; the slides and the output folder must be visible at the same paths on every node.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from threads_search.distributed.cluster import RayConfig
from threads_search.wsi.extract import ExtractConfig, ExtractProgress, SlideResult

SLIDES_PER_TASK = 1  # a slide is minutes of work at full size: balance the pool slide by slide


class SlideExtractorActor:
    def __init__(self, config: ExtractConfig, use_gpu: bool) -> None:
        from threads_search.encoders.patch import create_patch_encoder
        from threads_search.wsi.extract import resolve_device

        device = "cuda" if use_gpu else "cpu"
        self.config = replace(config, device=device, keep_going=True)  # failures come back as rows
        self.encoder = create_patch_encoder(config.patch_encoder, config.weights, device=resolve_device(device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from threads_search.wsi.extract import extract_one_slide

        rows = {"index": [], "slide_id": [], "status": [], "n_patches": [], "seconds": [], "error": []}
        for index, path, out_dir, n_slides in zip(batch["index"], batch["path"], batch["out_dir"], batch["n_slides"]):
            result = extract_one_slide(Path(str(path)), int(index), int(n_slides), Path(str(out_dir)), self.encoder,
                                       self.config, lambda update: None)
            for key, value in (("index", int(index)), ("slide_id", result.slide_id), ("status", result.status),
                               ("n_patches", result.n_patches), ("seconds", result.seconds), ("error", result.error or "")):
                rows[key].append(value)
        return {key: np.array(values) for key, values in rows.items()}


def ray_extraction(ray_config: RayConfig):
    """A `runner` for `wsi.extract.extract_slides` that extracts on the cluster (same results, same files)."""
    def run(wsi_paths, out_dir, config: ExtractConfig, progress=None) -> list[SlideResult]:
        from threads_search.distributed.cluster import connect
        from threads_search.errors import ThreadsSearchError
        from threads_search.wsi.extract import check_slide_files

        paths, out_dir = [Path(p) for p in wsi_paths], Path(out_dir)
        check_slide_files(paths)
        ray = connect(ray_config.checked().address)
        items = [{"index": i, "path": str(p.resolve()), "out_dir": str(out_dir.resolve()), "n_slides": len(paths)}
                 for i, p in enumerate(paths)]
        extracted = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            SlideExtractorActor, fn_constructor_kwargs={"config": config, "use_gpu": ray_config.num_gpus > 0},
            compute=ray.data.ActorPoolStrategy(size=min(ray_config.workers, len(items))), batch_size=SLIDES_PER_TASK,
            num_cpus=ray_config.num_cpus, num_gpus=ray_config.num_gpus or None, batch_format="numpy")
        results: dict[int, SlideResult] = {}
        try:
            for batch in extracted.iter_batches(batch_size=None, batch_format="numpy"):
                for row in range(len(batch["index"])):
                    index = int(batch["index"][row])
                    result = SlideResult(slide_id=str(batch["slide_id"][row]), wsi_path=paths[index],
                                         h5_path=out_dir / f"{paths[index].stem}.h5",
                                         thumbnail_path=out_dir / "thumbnails" / f"{paths[index].stem}.png",
                                         status=str(batch["status"][row]), n_patches=int(batch["n_patches"][row]),
                                         seconds=float(batch["seconds"][row]), error=str(batch["error"][row]) or None)
                    results[index] = result
                    if result.status == "failed" and not config.keep_going:
                        raise ThreadsSearchError(result.error)
                    if progress:
                        status = {"extracted": "done"}.get(result.status, result.status)
                        progress(ExtractProgress(result.slide_id, len(results) - 1, len(paths), result.n_patches,
                                                 result.n_patches, status))
        except ThreadsSearchError:
            raise
        except Exception as error:  # an actor could not start: surface the user-facing cause
            cause = getattr(error, "cause", None)
            if isinstance(cause, ThreadsSearchError):
                raise cause from None
            raise
        return [results[i] for i in sorted(results)]
    return run
