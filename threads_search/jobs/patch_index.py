"""`index --level patches`: every atlas slide's patch features -> one patch index.

The features are streamed from the referenced feature files slide by slide, READ_ROWS rows at
a time, twice (sample, then add); building never holds them all. With `mosaic`, each slide
keeps a seeded Yottixel-style subset (`indexer.mosaic`), chosen once before the passes. The
slide table written beside the index records each file's row layout, so queries re-rank
candidates with single-row reads (`readers.feature_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from threads_search.atlas.patch_indexes import (
    SLIDE_TABLE_SUFFIX,
    read_slide_table,
    record_patch_index,
    require_patch_index,
    slide_patch_sizes,
    write_slide_table,
)
from threads_search.atlas.slides import AtlasSlide, slide_records, verify_unchanged
from threads_search.atlas.layout import new_patch_index_stem
from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasError, InputError
from threads_search.indexer.patch_kinds import STREAM_CHUNK_ROWS as READ_ROWS
from threads_search.readers.feature_rows import FeatureLayout, FeatureRowReader, StaleFeatureFile, feature_layout



@dataclass(frozen=True)
class PatchIndexConfig:
    """kind: auto or a patch kind; mosaic: share of each slide's patches kept (None = all);
    max_memory: bytes for the build and the index (None = half the RAM); target_recall of the
    build-time tuning; seed for the sample, the held-out queries and the mosaic."""

    kind: str = "auto"
    mosaic: float | None = None
    max_memory: int | None = None
    seed: int = 0
    target_recall: float = 0.95


@dataclass
class PatchIndexReport:
    sidecar: dict
    n_slides: int
    n_patches: int  # patches in the feature files
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IndexedSlide:
    vid: int
    slide_id: str
    layout: FeatureLayout
    rows: np.ndarray | None  # mosaic rows, sorted; None = every row
    patch_size_level0: int | None

    @property
    def n_indexed(self) -> int:
        return self.layout.n_rows if self.rows is None else int(self.rows.size)


class AtlasPatchStream:
    """The patches of the indexed slides as (patch ids, L2-normalised float32 vectors) chunks."""

    def __init__(self, slides: list[IndexedSlide]) -> None:
        self.slides = slides
        self.n = sum(s.n_indexed for s in slides)
        self.dim = slides[0].layout.dim if slides else 0

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        from threads_search.indexer.patch_ids import encode_patch_ids

        for slide in self.slides:
            for start, features in _feature_blocks(slide.layout):
                rows = np.arange(start, start + features.shape[0])
                if slide.rows is not None:
                    keep = np.isin(rows, slide.rows, assume_unique=True)
                    rows, features = rows[keep], features[keep]
                if rows.size:
                    yield encode_patch_ids(slide.vid, rows), normalised(features)


class AtlasPatchVectors:
    """`VectorSource` over the indexed slides' feature files: exact rows by patch id.

    Rows of a slide whose file changed since the build (or of a vid the table does not know)
    come back unreadable; `stale_vids` collects those slides.
    """

    def __init__(self, layouts: dict[int, FeatureLayout]) -> None:
        self.layouts = layouts
        self.reader = FeatureRowReader()
        self.stale_vids: set[int] = set()

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from threads_search.indexer.patch_ids import decode_patch_ids

        ids = np.asarray(ids, dtype=np.int64)
        vids, rows = decode_patch_ids(ids)
        dim = next(iter(self.layouts.values())).dim if self.layouts else 0
        out = np.zeros((ids.size, dim), dtype=np.float32)
        readable = np.zeros(ids.size, dtype=bool)
        order = np.argsort(vids, kind="stable")
        boundaries = np.flatnonzero(np.diff(vids[order])) + 1
        for group in np.split(order, boundaries):
            if group.size == 0:
                continue
            vid = int(vids[group[0]])
            layout = self.layouts.get(vid)
            if layout is None or vid in self.stale_vids:
                continue
            try:
                out[group] = self.reader.read(layout, rows[group])
            except StaleFeatureFile:
                self.stale_vids.add(vid)
                continue
            readable[group] = True
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out, readable

    def close(self) -> None:
        self.reader.close()


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def _feature_blocks(layout: FeatureLayout) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, (rows, dim) float32) blocks of a feature file, READ_ROWS at a time."""
    if layout.kind == "torch":
        from threads_search.readers.patch_features import read_bag

        bag = read_bag(layout.path)
        for start in range(0, bag.shape[0], READ_ROWS):
            yield start, bag[start:start + READ_ROWS]
        return
    import h5py

    with h5py.File(layout.path, "r") as handle:
        features = handle["features"]
        flat = features.ndim == 3
        for start in range(0, layout.n_rows, READ_ROWS):
            block = features[0, start:start + READ_ROWS] if flat else features[start:start + READ_ROWS]
            yield start, np.asarray(block, dtype=np.float32)


# (slides, config, patch size per vid, progress) -> the planned slides in the given order: where the
# per-slide planning runs (here, or on a Ray cluster: `threads_search.distributed.patch_index`).
SlidePlanner = Callable[[list[AtlasSlide], PatchIndexConfig, dict[int, int], Callable[[int, int, str], None]],
                        list[IndexedSlide]]


def plan_slide(record: AtlasSlide, config: PatchIndexConfig, patch_size_level0: int | None) -> IndexedSlide:
    """One slide's layout (and mosaic rows), its file checked unchanged since ingest."""
    from threads_search.indexer.mosaic import mosaic_rows, slide_seed
    from threads_search.readers.patch_features import read_coords

    layout = feature_layout(verify_unchanged(record))
    if layout.n_rows != record.n_patches:
        raise InputError(f"{record.path}: holds {layout.n_rows} patches, ingest recorded {record.n_patches}; "
                         f"re-ingest it with --replace")
    rows = None
    if config.mosaic is not None:
        features = np.concatenate([block for _, block in _feature_blocks(layout)])
        coords = read_coords(layout.path) if layout.kind != "torch" else None
        rows = mosaic_rows(normalised(features), coords, config.mosaic, slide_seed(config.seed, record.slide_id))
    return IndexedSlide(record.vid, record.slide_id, layout, rows, patch_size_level0)


def plan_here(records: list[AtlasSlide], config: PatchIndexConfig, sizes: dict[int, int], progress) -> list[IndexedSlide]:
    slides = []
    for number, record in enumerate(records, start=1):
        slides.append(plan_slide(record, config, sizes.get(record.vid)))
        progress(number, len(records), record.slide_id)
    return slides


def _plan_slides(atlas: Atlas, config: PatchIndexConfig, progress,
                 planner: SlidePlanner | None = None) -> tuple[list[IndexedSlide], list[str]]:
    """The slides to index with their layouts (and mosaic rows), checked unchanged since ingest."""
    records = slide_records(atlas)
    if not records:
        raise AtlasError(f"{atlas.root} holds no slides; ingest patch features first")
    slides = (planner or plan_here)(records, config, slide_patch_sizes(atlas), progress)
    notes = []
    if config.mosaic is not None:
        kept = sum(s.n_indexed for s in slides)
        total = sum(s.layout.n_rows for s in slides)
        notes.append(f"mosaic {config.mosaic:g}: {kept:,} of {total:,} patches kept ({kept / total:.1%})")
    return slides, notes


def build_atlas_patch_index(atlas: Atlas, config: PatchIndexConfig,
                            progress: Callable[[int, int, str], None] | None = None,
                            planner: SlidePlanner | None = None) -> PatchIndexReport:
    """Build the atlas's patch index anew from every slide's features; returns its sidecar.

    `planner` runs the per-slide planning (file checks, mosaic selection) elsewhere; the two
    passes over the features and the index itself are built here."""
    from threads_search.indexer.patch_build import build_patch_index
    from threads_search.indexer.patch_index import save_patch_index

    report = progress or (lambda done, total, item: None)
    slides, notes = _plan_slides(atlas, config, report, planner)
    dims = {s.layout.dim for s in slides}
    if len(dims) > 1:
        raise InputError(f"{atlas.root}: slides have features of dimensions {sorted(dims)}; one patch index holds one")
    stream = AtlasPatchStream(slides)
    source = AtlasPatchVectors({s.vid: s.layout for s in slides})
    try:
        built = build_patch_index(stream, source, kind=config.kind, max_memory=config.max_memory, seed=config.seed,
                                  target_recall=config.target_recall,
                                  progress=lambda done, total, phase: report(done, total, phase))
    finally:
        source.close()
    built.sidecar.update(
        patch_encoder=atlas.meta("patch_encoder"),
        n_slides=len(slides),
        mosaic=None if config.mosaic is None else {
            "fraction": config.mosaic, "seed": config.seed,
            "method": "k-means over each slide's features into up to 9 clusters, then per cluster "
                      "k-means over level-0 coordinates with round(fraction * size) centres; the patch "
                      "nearest each centre is kept (Yottixel-style)"},
        id_layout="patch_id = (slide vid << 24) | row of the slide's feature file",
    )
    stem = new_patch_index_stem()
    write_slide_table(atlas, stem, [{"vid": s.vid, "slide_id": s.slide_id, "patch_size_level0": s.patch_size_level0,
                                     "n_indexed": s.n_indexed, "layout": s.layout} for s in slides])
    save_patch_index(built, atlas.path(stem), companions=(SLIDE_TABLE_SUFFIX,))
    record_patch_index(atlas, stem, built.sidecar, len(slides), config.mosaic)
    return PatchIndexReport(built.sidecar, len(slides), sum(s.layout.n_rows for s in slides), notes)


@dataclass
class OpenPatchIndex:
    """A loaded patch index with its slide table and a re-ranking source over the files."""

    index: object  # indexer.patch_index.PatchIndex
    slides: dict[int, dict]
    source: AtlasPatchVectors

    def close(self) -> None:
        self.source.close()


def open_patch_index(atlas: Atlas) -> OpenPatchIndex:
    """The atlas's patch index, ready to search; AtlasError if there is none.

    The index and its slide table are loaded once per opened atlas (their files are named per
    build and never change, so a warm reader such as the service reuses them; FAISS searches of
    one index run in parallel threads); the re-ranking source is new per call, closed by `close`.
    """
    from threads_search.indexer.patch_index import load_patch_index

    stem = require_patch_index(atlas)["path"]
    index, slides = atlas.cached_file(("patch_index", stem),
                                      lambda: (load_patch_index(atlas.path(stem)), read_slide_table(atlas, stem)))
    return OpenPatchIndex(index, slides, AtlasPatchVectors({vid: s["layout"] for vid, s in slides.items()}))
