"""`embed --ray`: the slides of `embed` encoded on a Ray Data actor pool.

The driver (the process holding the atlas) plans what to embed exactly as the local job does
(finished slides are skipped), sends each actor only the small record of each slide (vid, path,
size, fingerprint), and records each chunk of returned vectors as one embedding part as soon as
it arrives, through the local job's own code (`jobs.embed.embed_atlas`). Each actor loads the
model once from the atlas folder and reads its slides' feature files itself, so the atlas folder
and the feature files must be visible at the same paths on every node (a shared file system).
Profiles (small tables) are embedded by the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from threads_search.atlas.slides import AtlasSlide
from threads_search.atlas.store import Atlas
from threads_search.distributed.cluster import RayConfig
from threads_search.jobs.embed import SLIDES_PER_PART, EmbedReport, Progress, embed_atlas

SLIDES_PER_TASK = 4  # slides per actor call: small enough to balance the pool and show progress


class SlideEncoderActor:
    """One actor of the pool: the model loaded once; each call encodes a batch of slide records."""

    def __init__(self, model_folder: str, model_id: str, use_gpu: bool) -> None:
        from threads_search.encoders.checkpoint import load_model, read_model_id
        from threads_search.errors import AtlasDamagedError

        held = read_model_id(model_folder)
        if held != model_id:
            raise AtlasDamagedError(f"{model_folder}: holds model {held}, not {model_id}")
        self.model = load_model(model_folder)
        if use_gpu:
            import torch

            if torch.cuda.is_available():
                self.model = self.model.to("cuda")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from threads_search.atlas.slides import encode_atlas_slide

        vectors = []
        for row in range(len(batch["vid"])):
            record = AtlasSlide(slide_id=str(batch["slide_id"][row]), vid=int(batch["vid"][row]), patient_id="",
                                path=Path(str(batch["path"][row])), file_size=int(batch["file_size"][row]),
                                file_mtime_ns=int(batch["file_mtime_ns"][row]), fingerprint=str(batch["fingerprint"][row]),
                                n_patches=0, patch_size_level0=_optional_int(batch["patch_size_level0"][row]))
            vectors.append(np.asarray(encode_atlas_slide(self.model, record), np.float32))
        return {"vid": np.asarray(batch["vid"], np.int64), "slide_id": batch["slide_id"], "vector": np.stack(vectors)}


def _optional_int(value) -> int | None:
    return None if value is None or int(value) < 0 else int(value)


def ray_slide_chunks(model_folder: Path, model_id: str, config: RayConfig, slides_per_part: int = SLIDES_PER_PART):
    """A `jobs.embed.SlideChunks` that encodes on the cluster and yields chunks of up to `slides_per_part`."""
    def chunks(todo: list[AtlasSlide], progress: Progress | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        from threads_search.distributed.cluster import connect

        ray = connect(config.address, num_cpus=None)
        items = [{"vid": r.vid, "slide_id": r.slide_id, "path": str(r.path), "file_size": r.file_size,
                  "file_mtime_ns": r.file_mtime_ns, "fingerprint": r.fingerprint,
                  "patch_size_level0": -1 if r.patch_size_level0 is None else r.patch_size_level0} for r in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // SLIDES_PER_TASK)))
        encoded = dataset.map_batches(
            SlideEncoderActor, fn_constructor_kwargs={"model_folder": str(model_folder), "model_id": model_id,
                                                      "use_gpu": config.num_gpus > 0},
            compute=ray.data.ActorPoolStrategy(size=config.workers), batch_size=SLIDES_PER_TASK,
            num_cpus=config.num_cpus, num_gpus=config.num_gpus or None, batch_format="numpy")
        vids, vectors, done = [], [], 0
        for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
            vids.append(batch["vid"])
            vectors.append(batch["vector"])
            done += len(batch["vid"])
            if progress:
                progress(done, len(todo), str(batch["slide_id"][-1]))
            while sum(map(len, vids)) >= slides_per_part:
                yield from _take(vids, vectors, slides_per_part)
        if vids:
            yield np.concatenate(vids), np.concatenate(vectors)
    return chunks


def _take(vids: list[np.ndarray], vectors: list[np.ndarray], n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield the first `n` buffered rows as one chunk and keep the rest buffered (in place)."""
    all_vids, all_vectors = np.concatenate(vids), np.concatenate(vectors)
    vids[:] = [all_vids[n:]] if all_vids.size > n else []
    vectors[:] = [all_vectors[n:]] if all_vids.size > n else []
    yield all_vids[:n], all_vectors[:n]


def embed_atlas_ray(atlas: Atlas, model_id: str, config: RayConfig, progress: Progress | None = None,
                    slides_per_part: int = SLIDES_PER_PART) -> EmbedReport:
    """`embed_atlas` with the slides encoded on a Ray cluster; the same parts, records and report."""
    from threads_search.atlas.stored_models import model_folder_path

    config = config.checked()
    chunks = ray_slide_chunks(model_folder_path(atlas, model_id), model_id, config, slides_per_part)
    return embed_atlas(atlas, model_id, progress, slide_chunks=chunks)
