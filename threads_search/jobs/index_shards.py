"""`index --shards N`: embeddings of one model -> N FAISS indexes per modality, split by slide.

Shard `s` holds the items whose vid hashes to `s` (`indexer/shards.py`); each is an ordinary
index (same kinds, same sidecar, recall measured on its own vectors), so a shard can be loaded
by any process that sees the atlas folder, e.g. one Ray actor per shard
(`threads_search.distributed.shards`). Every build writes new files and records all shards of
a modality in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from threads_search.atlas.embeddings import load_embeddings
from threads_search.atlas.index_shards import record_shards
from threads_search.atlas.layout import new_index_shard_stem
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasError


@dataclass
class ShardReport:
    model_id: str
    n_shards: int
    built: dict[str, list[dict | None]] = field(default_factory=dict)  # modality -> sidecar per shard (None: empty)
    notes: list[str] = field(default_factory=list)


def build_index_shards(atlas: Atlas, model_id: str, n_shards: int, kind: str = "auto", device: str = "auto",
                       max_memory: int | None = None, seed: int = 0) -> ShardReport:
    """Build `n_shards` indexes per embedded modality (memory: one modality's vectors + one shard's index)."""
    from threads_search.indexer import build_index, save_index
    from threads_search.indexer.persist import index_paths
    from threads_search.indexer.shards import check_shard_count, split_by_shard

    n_shards = check_shard_count(n_shards)
    report = ShardReport(model_id=model_id, n_shards=n_shards)
    for modality in MODALITIES:
        ids, vectors = load_embeddings(atlas, model_id, modality)
        if ids.size == 0:
            continue
        written: list[str] = []
        shards: list[tuple[int, str | None, dict | None]] = []
        try:
            for shard, rows in enumerate(split_by_shard(ids, n_shards)):
                if rows.size == 0:
                    shards.append((shard, None, None))
                    continue
                bundle = build_index(vectors[rows], ids[rows], kind=kind, device=device, max_memory=max_memory,
                                     seed=seed, model_id=model_id, modality=modality)
                bundle.sidecar["shard"] = {"shard": shard, "n_shards": n_shards}
                stem = new_index_shard_stem(model_id, modality, shard)
                save_index(bundle, atlas.path(stem))
                written.append(stem)
                shards.append((shard, stem, bundle.sidecar))
            record_shards(atlas, model_id, modality, shards, n_shards)
        except BaseException:
            for stem in written:
                for path in index_paths(atlas.path(stem)):
                    path.unlink(missing_ok=True)
            raise
        report.built[modality] = [sidecar for _, _, sidecar in shards]
    if not report.built:
        raise AtlasError(f"model {model_id} has no embeddings; run `threads-search embed {atlas.root} --model {model_id}` first")
    return report
