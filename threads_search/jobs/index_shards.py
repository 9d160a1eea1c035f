"""`index --shards N`: embeddings of one model -> N FAISS indexes per modality, split by slide.

Shard `s` holds the items whose vid hashes to `s` (`indexer/shards.py`); each is an ordinary
index (same kinds, same sidecar, recall measured on its own vectors), so a shard can be loaded
by any process that sees the atlas folder, e.g. one Ray actor per shard
(`threads_search.distributed.shards`). Every build writes new files and records all shards of
a modality in one transaction. Each shard is one `ShardJob`: here they run one after the other
on the modality's vectors loaded once; with `builder` (`index --shards N --ray`) elsewhere,
each job reading its own vectors from the embedding parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from threads_search.atlas.embeddings import (EmbeddingSlice, embedded_vids, embedding_slice, load_embeddings,
                                             read_embedding_slice)
from threads_search.atlas.index_shards import record_shards
from threads_search.atlas.layout import new_index_shard_stem
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasError


@dataclass(frozen=True)
class ShardJob:
    """Build shard `shard` of `n_shards` of (model, modality) from `vectors` into `stem` (absolute)."""

    shard: int
    n_shards: int
    model_id: str
    modality: str
    stem: str
    vectors: EmbeddingSlice
    kind: str = "auto"
    device: str = "auto"
    max_memory: int | None = None
    seed: int = 0


# (jobs) -> one sidecar per job, in order: where the shards are built.
ShardBuilder = Callable[[list[ShardJob]], list[dict]]


@dataclass
class ShardReport:
    model_id: str
    n_shards: int
    built: dict[str, list[dict | None]] = field(default_factory=dict)  # modality -> sidecar per shard (None: empty)
    notes: list[str] = field(default_factory=list)


def build_shard(job: ShardJob, ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> dict:
    """Build and save one shard (reading its vectors from the parts unless given); returns its sidecar."""
    from threads_search.indexer import build_index, save_index

    if ids is None:
        ids, vectors = read_embedding_slice(job.vectors)
    bundle = build_index(vectors, ids, kind=job.kind, device=job.device, max_memory=job.max_memory, seed=job.seed,
                         model_id=job.model_id, modality=job.modality)
    bundle.sidecar["shard"] = {"shard": job.shard, "n_shards": job.n_shards}
    save_index(bundle, job.stem)
    return bundle.sidecar


def build_index_shards(atlas: Atlas, model_id: str, n_shards: int, kind: str = "auto", device: str = "auto",
                       max_memory: int | None = None, seed: int = 0, builder: ShardBuilder | None = None) -> ShardReport:
    """Build `n_shards` indexes per embedded modality (memory here: one modality's vectors + one shard's index)."""
    from threads_search.indexer.persist import index_paths
    from threads_search.indexer.shards import check_shard_count, shard_of

    n_shards = check_shard_count(n_shards)
    report = ShardReport(model_id=model_id, n_shards=n_shards)
    for modality in MODALITIES:
        ids = vectors = None
        if builder is None:
            ids, vectors = load_embeddings(atlas, model_id, modality)
            present = ids
        else:  # the vids only: each job reads its own vectors
            embedded = np.fromiter(embedded_vids(atlas, model_id, modality), np.int64)
            present = np.intersect1d(atlas.modality_vids(modality), embedded)
        if present.size == 0:
            continue
        shard_by_vid = shard_of(present, n_shards)
        jobs, stems = [], {}
        for shard in range(n_shards):
            mine = present[shard_by_vid == shard]
            if mine.size:
                stems[shard] = new_index_shard_stem(model_id, modality, shard)
                piece = EmbeddingSlice((), mine) if builder is None else embedding_slice(atlas, model_id, modality, mine)
                jobs.append(ShardJob(shard, n_shards, model_id, modality, str(atlas.path(stems[shard])), piece,
                                     kind, device, max_memory, seed))
        try:
            if builder is None:
                sidecars = [build_shard(job, ids[shard_by_vid == job.shard], vectors[shard_by_vid == job.shard]) for job in jobs]
            else:
                sidecars = builder(jobs)
            by_shard = {job.shard: sidecar for job, sidecar in zip(jobs, sidecars)}
            record_shards(atlas, model_id, modality,
                          [(s, stems[s] if s in by_shard else None, by_shard.get(s)) for s in range(n_shards)], n_shards)
        except BaseException:
            for stem in stems.values():
                for path in index_paths(atlas.path(stem)):
                    path.unlink(missing_ok=True)
            raise
        report.built[modality] = [by_shard.get(s) for s in range(n_shards)]
    if not report.built:
        raise AtlasError(f"model {model_id} has no embeddings; run `threads-search embed {atlas.root} --model {model_id}` first")
    return report
