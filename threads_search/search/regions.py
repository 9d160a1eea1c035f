"""Region queries: a box (or one patch) of a slide -> the most similar regions of the archive,
or, grouped by slide, the slides whose regions vote for them.

The query's patches are those of its slide whose centre lies in the box `X,Y,W,H` (level-0
pixels; patches that merely overlap it when no centre does), or the one patch `--patch N` (row
N of the feature file). Each query patch is searched in the patch index (the patch encoder's
space). Region hits are patches, scored by their best similarity to any query patch. With
`group_by="slide"`, each query patch's top `votes_per_patch` hits vote for their slides (see
`slide_votes`: weighted by similarity above the query patch's last hit, and by rank), averaged
over the query patches; slides rank by that vote score, ties by vid, and show their share of
all votes as their score.
Filters (`where`) and same-patient exclusion apply inside the patch search, so they hold for
region hits and grouped slides alike. The query slide itself is never its own hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas.patch_indexes import (
    current_slide_vids,
    patient_slide_vids,
    slide_identity,
)
from threads_search.atlas.store import Atlas
from threads_search.atlas.where import matching_vids
from threads_search.errors import InputError
from threads_search.search.query import SearchResult, _plain, default_label, hit_rows

# Query patches searched at most; a larger box is subsampled evenly (the note says so).
MAX_QUERY_PATCHES = 64
DEFAULT_VOTES_PER_PATCH = 50
GROUP_BY_CHOICES = ("slide",)


@dataclass
class RegionQuery:
    """One source (slide_id, features or wsi) and a box (X, Y, W, H level-0 px) or a patch row."""

    slide_id: str | None = None
    features: Path | None = None
    wsi: Path | None = None
    region: tuple[int, int, int, int] | None = None
    patch: int | None = None
    mpp: float | None = None
    patch_weights: Path | None = None  # for `wsi`: local weights of the atlas's patch encoder


@dataclass
class RegionOptions:
    k: int = 10
    where: str | None = None
    include_same_patient: bool = False
    group_by: str | None = None
    label: str | None = None
    votes_per_patch: int = DEFAULT_VOTES_PER_PATCH
    regions_per_slide: int = 0  # with group_by='slide': list each slide's best N matched regions (0: none)


@dataclass
class QueryPatches:
    """vectors (q, d) float32 of the query patches, their rows and level-0 boxes (q, 4)."""

    vectors: np.ndarray
    rows: np.ndarray
    boxes: np.ndarray
    info: dict
    vid: int | None = None
    patient_id: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_region(text: str) -> tuple[int, int, int, int]:
    """'X,Y,W,H' (level-0 pixels, W and H positive) -> a tuple of ints."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(float(p)) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0 or values[0] < 0 or values[1] < 0:
        raise InputError(f"--region {text}: expected X,Y,W,H in level-0 pixels (X, Y >= 0; W, H > 0), "
                         "e.g. 20480,16384,2048,2048")
    return values  # type: ignore[return-value]


def patch_side(coords: np.ndarray, recorded: int | None) -> int:
    """Patch side in level-0 pixels: as recorded, else the grid step of the coordinates."""
    if recorded:
        return int(recorded)
    steps = [np.diff(np.unique(coords[:, axis])) for axis in (0, 1)]
    positive = np.concatenate([s[s > 0] for s in steps]) if coords.shape[0] > 1 else np.empty(0)
    if positive.size == 0:
        raise InputError("the patch size is not recorded and cannot be told from the coordinates; "
                         "the feature file needs a patch_size_level0 attribute")
    return int(positive.min())


def select_region_rows(coords: np.ndarray, side: int, region: tuple[int, int, int, int], where: str) -> np.ndarray:
    """Rows of the patches whose centre lies in the box, else of those that overlap it."""
    x, y, w, h = region
    centres = coords + side / 2
    inside = ((centres[:, 0] >= x) & (centres[:, 0] < x + w) & (centres[:, 1] >= y) & (centres[:, 1] < y + h))
    if not inside.any():
        inside = ((coords[:, 0] < x + w) & (coords[:, 0] + side > x) & (coords[:, 1] < y + h)
                  & (coords[:, 1] + side > y))
    if not inside.any():
        low, high = coords.min(axis=0), coords.max(axis=0) + side
        raise InputError(f"--region {x},{y},{w},{h} covers no patch of {where} (its patches span x {low[0]}-{high[0]}, "
                         f"y {low[1]}-{high[1]} level-0 px)")
    return np.flatnonzero(inside)


def _choose_rows(coords: np.ndarray | None, n_rows: int, side: int | None, query: RegionQuery, where: str):
    if query.patch is not None:
        if not 0 <= query.patch < n_rows:
            raise InputError(f"--patch {query.patch}: {where} has patches 0-{n_rows - 1}")
        return np.array([query.patch]), []
    if query.region is None:
        raise InputError("a region query needs --region X,Y,W,H or --patch N")
    if coords is None:
        raise InputError(f"{where} has no patch coordinates, so a --region cannot be placed on it; use --patch N")
    rows = select_region_rows(coords, side, query.region, where)
    notes = []
    if rows.size > MAX_QUERY_PATCHES:
        notes.append(f"the region holds {rows.size} patches; {MAX_QUERY_PATCHES} of them, evenly spread, are searched")
        rows = rows[np.linspace(0, rows.size - 1, MAX_QUERY_PATCHES).round().astype(int)]
    return rows, notes


def resolve_query_patches(atlas: Atlas, query: RegionQuery, dim: int) -> QueryPatches:
    """The query's patch vectors (L2-normalised) and where they are on their slide."""
    from threads_search.jobs.patch_index import normalised
    from threads_search.readers.patch_features import read_bag, read_coords

    given = [name for name in ("slide_id", "features", "wsi") if getattr(query, name) is not None]
    if len(given) != 1:
        raise InputError("a region query needs exactly one of --slide-id, --features, --wsi; got "
                         f"{', '.join('--' + g.replace('_', '-') for g in given) or 'none'}")
    vid = patient = None
    if query.slide_id is not None:
        from threads_search.atlas.slides import slide_record, verify_unchanged

        vid, patient = slide_identity(atlas, query.slide_id)
        record = slide_record(atlas, query.slide_id)
        path = verify_unchanged(record)
        features, coords = read_bag(path), read_coords(path)
        recorded_side = record.patch_size_level0
        info = {"type": "region", "id": query.slide_id, "modality": "slides", "patient_id": patient}
        encoder = atlas.meta("patch_encoder")
    elif query.features is not None:
        from threads_search.readers.patch_features import inspect_feature_file

        described = inspect_feature_file(query.features)
        features, coords = read_bag(query.features), read_coords(query.features)
        recorded_side, encoder = described.patch_size_level0, described.patch_encoder
        info = {"type": "region", "id": described.slide_id, "file": str(query.features), "modality": "slides",
                "patient_id": None}
    else:
        from threads_search.search.query import extract_like_atlas

        slide, notes = extract_like_atlas(atlas, query.wsi, query.mpp, weights=query.patch_weights)
        features, coords = slide.features, slide.coords
        recorded_side, encoder = slide.attrs.get("patch_size_level0"), slide.attrs.get("encoder")
        info = {"type": "region", "id": slide.slide_id, "file": str(query.wsi), "modality": "slides",
                "patient_id": None}
    atlas_encoder = atlas.meta("patch_encoder")
    from threads_search.encoders.patch.names import same_patch_encoder

    if encoder and atlas_encoder and not same_patch_encoder(encoder, atlas_encoder):
        from threads_search.errors import ModelMismatchError

        raise ModelMismatchError(f"{info['id']}: patch encoder '{encoder}' differs from the patch index's "
                                 f"'{atlas_encoder}'; patch features of different encoders are not comparable")
    if features.shape[1] != dim:
        from threads_search.errors import ModelMismatchError

        raise ModelMismatchError(f"{info['id']}: {features.shape[1]}-d patch features, the patch index holds {dim}-d")
    side = patch_side(coords, recorded_side) if coords is not None else None
    rows, notes = _choose_rows(coords, features.shape[0], side, query, f"slide {info['id']}")
    boxes = (np.column_stack([coords[rows], np.full((rows.size, 2), side)]) if coords is not None
             else np.full((rows.size, 4), -1))
    info.update(region=list(query.region) if query.region else None, patch=query.patch, patches=int(rows.size),
                query_patches=[{"patch": int(r), **_box(b)} for r, b in zip(rows, boxes)])
    return QueryPatches(normalised(features[rows]), rows, boxes, info, vid, patient, notes)


def _box(box) -> dict:
    return {"x": int(box[0]), "y": int(box[1]), "width": int(box[2]), "height": int(box[3])}


@dataclass
class RegionSearcher:
    """An open patch index plus the atlas's current slides: searches query patches with the
    filters applied, and drops hits of slides replaced since the index was built."""

    atlas: Atlas
    opened: object  # jobs.patch_index.OpenPatchIndex
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.current = current_slide_vids(self.atlas)

    @property
    def dim(self) -> int:
        return self.opened.index.dim

    def search(self, vectors: np.ndarray, k: int, allowed_vids: np.ndarray | None,
               excluded_vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q, k) scores and patch ids; ids of slides no longer in the atlas become -1."""
        from threads_search.indexer.patch_ids import decode_patch_ids
        from threads_search.indexer.patch_search import search_patches

        allowed = self.current if allowed_vids is None else np.intersect1d(allowed_vids, self.current)
        hits = search_patches(self.opened.index, vectors, k, source=self.opened.source, allowed_vids=allowed,
                              excluded_vids=excluded_vids)
        if hits.unreadable:
            stale = sorted(self.opened.source.stale_vids)
            note = (f"{len(stale)} slide(s) changed on disk since the patch index was built (vids "
                    f"{', '.join(map(str, stale[:5]))}); their patches were skipped; rebuild with "
                    f"`threads-search index {self.atlas.root} --level patches`")
            if note not in self.notes:
                self.notes.append(note)
        vids, _ = decode_patch_ids(hits.ids)
        gone = (hits.ids >= 0) & ~np.isin(vids, self.current)
        return np.where(gone, -np.inf, hits.scores), np.where(gone, -1, hits.ids)

    def close(self) -> None:
        self.opened.close()


def slide_votes(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vote of each query patch's ranked hits for their slides.

    scores, ids: (q, v) per query patch, best first (-1 padding). The hit at rank r (1-based)
    with similarity s_r adds (s_r - s_last)^2 / log2(1 + r) to its slide, s_last being the
    query patch's lowest returned similarity; totals are divided by q.
    Why the margin: a patch of generic tissue (stroma, fat) finds many equally similar patches
    on every slide, a flat profile that votes for nothing in particular; a distinctive patch
    (tumour carrying the molecular state) finds a few much closer ones. On the quick generated
    cohort (held-out slides, 50 hits per patch) mAP@5 was 0.114 with plain similarity / log2(1 + r)
    votes, 0.446 with this weight (chance 0.068).
    Returns (vids, vote scores, hit counts), best first, ties by smaller vid.
    """
    from threads_search.indexer.patch_ids import decode_patch_ids

    vids, _ = decode_patch_ids(ids)
    valid = ids >= 0
    last = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    ranks = np.arange(1, ids.shape[1] + 1)
    weights = np.where(valid, np.maximum(scores - last, 0) ** 2 / np.log2(1 + ranks), 0.0)
    unique, inverse = np.unique(vids[valid], return_inverse=True)
    totals = np.bincount(inverse, weights=weights[valid], minlength=unique.size) / max(ids.shape[0], 1)
    counts = np.bincount(inverse, minlength=unique.size)
    order = np.lexsort((unique, -totals))
    return unique[order], totals[order], counts[order]


def search_regions(atlas: Atlas, query: RegionQuery, options: RegionOptions) -> SearchResult:
    """Run one region query: region hits, or slides ranked by region votes (group_by='slide')."""
    from threads_search.jobs.patch_index import open_patch_index

    if options.k < 1:
        raise InputError(f"-k {options.k}: must be at least 1")
    if options.group_by is not None and options.group_by not in GROUP_BY_CHOICES:
        raise InputError(f"--group-by {options.group_by}: expected one of {', '.join(GROUP_BY_CHOICES)}")
    label = default_label(atlas, options.label)
    searcher = RegionSearcher(atlas, open_patch_index(atlas))
    try:
        patches = resolve_query_patches(atlas, query, searcher.dim)
        allowed = None
        if options.where:
            allowed = np.array(matching_vids(atlas, "slides", options.where), np.int64)
            if allowed.size == 0:
                raise InputError(f"--where \"{options.where}\" matches no slides")
        excluded = set() if patches.vid is None else {patches.vid}
        if patches.patient_id is not None and not options.include_same_patient:
            excluded.update(patient_slide_vids(atlas, [patches.patient_id]).tolist())
        excluded_vids = np.array(sorted(excluded), np.int64)
        if options.group_by == "slide":
            scores, ids = searcher.search(patches.vectors, options.votes_per_patch, allowed, excluded_vids)
            hits = _slide_hits(atlas, searcher, scores, ids, options.k, options.regions_per_slide)
            target = "slides (by region votes)"
        else:
            scores, ids = searcher.search(patches.vectors, options.k, allowed, excluded_vids)
            hits = _region_hits(atlas, searcher, scores, ids, options.k)
            target = "regions"
        notes = patches.notes + searcher.notes
    finally:
        searcher.close()
    if len(hits) < options.k:
        notes.append(f"only {len(hits)} {'slides' if options.group_by else 'regions'} can be returned (k = {options.k})")
    query_info = dict(patches.info, target=target, k=options.k, where=options.where, group_by=options.group_by,
                      model_id=f"patch index, encoder {atlas.meta('patch_encoder') or 'unknown'}")
    return SearchResult(query=query_info, hits=hits, label=label, notes=notes)


def _region_hits(atlas: Atlas, searcher: RegionSearcher, scores: np.ndarray, ids: np.ndarray, k: int) -> list[dict]:
    """Distinct patches over all query patches, by best score (ties by id), with coords and metadata."""
    valid = ids >= 0
    flat_ids, flat_scores = ids[valid], scores[valid]
    order = np.lexsort((flat_ids, -flat_scores))
    unique, first = np.unique(flat_ids[order], return_index=True)
    best = order[first]
    matched = np.bincount(np.searchsorted(unique, flat_ids), minlength=unique.size)
    ranking = np.lexsort((unique, -flat_scores[best]))[:k]
    chosen = [(int(unique[i]), float(flat_scores[best[i]]), int(matched[i])) for i in ranking]
    return _describe(atlas, searcher, [(patch_id, score, {"matched_query_patches": m}) for patch_id, score, m in chosen])


def _slide_hits(atlas: Atlas, searcher: RegionSearcher, scores: np.ndarray, ids: np.ndarray, k: int,
                regions_per_slide: int = 0) -> list[dict]:
    """Slides ranked by region votes, each with its best-matching region; a slide's score is its
    share of all the votes cast (the shares of every voted slide sum to 1). With
    `regions_per_slide`, each slide also lists its best distinct matched regions under `regions`
    (the box, the best similarity to any query patch, the patch row), best first."""
    from threads_search.indexer.patch_ids import decode_patch_ids

    vids, totals, counts = slide_votes(scores, ids)
    shares = totals / totals.sum() if totals.size and totals.sum() > 0 else totals
    hit_vids, _ = decode_patch_ids(ids)
    entries = []
    for vid, total, count in zip(vids[:k], shares[:k], counts[:k]):
        mask = hit_vids == vid
        position = np.argmax(np.where(mask, scores, -np.inf))
        best_id = int(ids.flat[position])
        extra = {"votes": int(count), "best_region_score": round(float(scores.flat[position]), 6)}
        if regions_per_slide > 0:
            extra["regions"] = _slide_regions(searcher, ids[mask], scores[mask], regions_per_slide)
        entries.append((best_id, float(total), extra))
    return _describe(atlas, searcher, entries)


def _slide_regions(searcher: RegionSearcher, ids: np.ndarray, scores: np.ndarray, n: int) -> list[dict]:
    """The best `n` distinct patches among one slide's hits, each by its best score (ties by id)."""
    from threads_search.indexer.patch_ids import decode_patch_ids

    order = np.lexsort((ids, -scores))
    unique, first = np.unique(ids[order], return_index=True)
    ranking = np.lexsort((unique, -scores[order][first]))[:n]
    chosen, best = unique[ranking], scores[order][first][ranking]
    vids, rows = decode_patch_ids(chosen)
    boxes = _patch_boxes(searcher, int(vids[0]), rows) if chosen.size else []
    return [{**box, "score": round(float(score), 6), "patch": int(row)} for box, score, row in zip(boxes, best, rows)]


def _patch_boxes(searcher: RegionSearcher, vid: int, rows: np.ndarray, coords_by_vid: dict | None = None) -> list[dict]:
    """Level-0 boxes {x, y, width, height} of rows of one indexed slide (None values without coordinates)."""
    from threads_search.readers.patch_features import read_coords

    coords_by_vid = {} if coords_by_vid is None else coords_by_vid
    slide = searcher.opened.slides.get(vid)
    if vid not in coords_by_vid:
        layout = slide["layout"] if slide else None
        coords_by_vid[vid] = read_coords(layout.path) if layout is not None and layout.kind != "torch" else None
    coords = coords_by_vid[vid]
    if coords is None:
        return [{"x": None, "y": None, "width": None, "height": None} for _ in rows]
    side = patch_side(coords, slide.get("patch_size_level0") if slide else None)
    return [_box([*coords[int(row)], side, side]) for row in rows]


def _describe(atlas: Atlas, searcher: RegionSearcher, entries: list[tuple[int, float, dict]]) -> list[dict]:
    """Hit dicts: rank, slide id, patient, score, the patch's box (level-0 x, y, width, height), metadata."""
    from threads_search.indexer.patch_ids import decode_patch_ids

    if not entries:
        return []
    vids, rows = decode_patch_ids(np.array([e[0] for e in entries], np.int64))
    metadata = hit_rows(atlas, sorted({int(v) for v in vids}))
    coords_by_vid: dict[int, np.ndarray | None] = {}
    hits = []
    for rank, ((patch_id, score, extra), vid, row) in enumerate(zip(entries, vids, rows), start=1):
        vid, row = int(vid), int(row)
        slide = searcher.opened.slides.get(vid)
        box = _patch_boxes(searcher, vid, [row], coords_by_vid)[0]
        row_metadata = dict(metadata.get(vid, {}))
        hits.append({"rank": rank, "id": row_metadata.pop("item_id", slide["slide_id"] if slide else str(vid)),
                     "modality": row_metadata.pop("modality", "slides"),
                     "patient_id": row_metadata.pop("patient_id", None), "score": round(score, 6),
                     **box, "patch": row, "patch_id": patch_id, **extra, **_plain(row_metadata)})
    return hits


def region_query_from_arguments(slide_id=None, features=None, wsi=None, region: str | None = None,
                                patch: int | None = None, mpp=None, patch_weights=None) -> RegionQuery:
    return RegionQuery(slide_id=slide_id, features=Path(features) if features else None,
                       wsi=Path(wsi) if wsi else None, region=parse_region(region) if region else None,
                       patch=patch, mpp=mpp, patch_weights=Path(patch_weights) if patch_weights else None)
