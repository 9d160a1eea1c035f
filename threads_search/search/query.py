"""The query engine: every query is a nearest-neighbour search in one model's shared space.

A query is an atlas slide, an unseen feature file or slide, an atlas profile, a profile from
an expression file, or a stored prototype; the target is the index of one modality. Metadata
filters run inside the search (FAISS id selectors), hits of the query's own patient are
excluded unless asked for, and each hit carries its metadata.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas.items import find_item, item_metadata, patient_vids
from threads_search.atlas.search_default import resolve_search_model
from threads_search.atlas.schema import MODALITIES, PROFILE_MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import load_atlas_model, resolve_model_id
from threads_search.atlas.where import check_where
from threads_search.errors import InputError
from threads_search.jobs.index import open_index
from threads_search.lru import LruCache

DEFAULT_LABEL_COLUMNS = ("subtype", "diagnosis", "label", "class", "oncotree_code")


@dataclass
class Query:
    """Exactly one of the sources is set."""

    slide_id: str | None = None
    features: Path | None = None
    wsi: Path | None = None
    sample_id: str | None = None
    expression: Path | None = None
    sample: str | None = None  # row of `expression` to use
    prototype: str | None = None  # NAME:CLASS
    mpp: float | None = None  # for `wsi` without resolution metadata
    patch_weights: Path | None = None  # for `wsi`: local weights of a patch encoder that needs them
    sample_modality: str | None = None  # expression | mutations, when `sample_id` names both

    def source(self) -> str:
        given = [name for name in ("slide_id", "features", "wsi", "sample_id", "expression", "prototype")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            options = "--slide-id, --features, --wsi, --sample-id, --expression, --prototype"
            raise InputError(f"give exactly one query ({options}); got {', '.join('--' + g.replace('_', '-') for g in given) or 'none'}")
        return given[0]


@dataclass
class SearchOptions:
    """How to search. `where` is a SQL filter over metadata and `facets` a selection of values per
    metadata column (`{"site": ["site1", "site2"]}`); both narrow the candidates inside the
    search. `one_per_patient` keeps each patient's best hit only (exact: the search fetches
    more until k patients are found or the candidates run out)."""

    target: str = "slides"
    k: int = 10
    where: str | None = None
    include_same_patient: bool = False
    model_id: str | None = None
    label: str | None = None
    device: str = "auto"
    facets: dict[str, list[str | None]] | None = None
    one_per_patient: bool = False


@dataclass
class ResolvedQuery:
    vector: np.ndarray  # (dim,) float32, L2-normalised
    info: dict  # type, id, modality, patient_id, ...
    exclude_vid: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class SearchResult:
    query: dict
    hits: list[dict]
    label: str | None
    notes: list[str]
    searched_with: str | None = None  # 'searching with model ... (recipe, slides index built ...)'

    def majority(self) -> str | None:
        """'4 of 5 top hits: subtype S3' over the label column."""
        if not self.label or not self.hits:
            return None
        counts = Counter(h.get(self.label) for h in self.hits)
        value, count = counts.most_common(1)[0]
        return f"{count} of {len(self.hits)} top hits: {self.label} {value}"

    def to_json(self) -> dict:
        return {"query": self.query, "hits": self.hits, "majority": self.majority(), "notes": self.notes}


class _LazyModel:
    """Loads the model only for queries that must be encoded."""

    def __init__(self, atlas: Atlas, model_id: str) -> None:
        self.atlas, self.model_id, self._model = atlas, model_id, None

    def get(self):
        if self._model is None:
            self._model = load_atlas_model(self.atlas, self.model_id)
        return self._model


def _item(atlas: Atlas, item_id: str, modalities: tuple[str, ...]) -> tuple[int, str, str]:
    rows = find_item(atlas, item_id, modalities)
    if not rows:
        kind = "slide" if modalities == ("slides",) else "sample"
        raise InputError(f"unknown {kind} id '{item_id}' (not in {atlas.root})")
    return rows[0]


def _sample_item(atlas: Atlas, sample_id: str, modality: str | None) -> tuple[int, str, str]:
    """The profile a --sample-id names; a sample that is both an expression and a mutation profile needs --modality."""
    rows = find_item(atlas, sample_id, (modality,) if modality else PROFILE_MODALITIES)
    if not rows:
        where = f" as a {modality} profile" if modality else ""
        raise InputError(f"unknown sample id '{sample_id}'{where} (not in {atlas.root})")
    if len(rows) > 1:
        raise InputError(f"--sample-id {sample_id}: both an expression and a mutation profile; choose one with "
                         f"--modality expression|mutations")
    return rows[0]


def _stored_or_encoded(atlas: Atlas, model: _LazyModel, vid: int, modality: str, encode) -> np.ndarray:
    """An item's stored vector: from its modality's index when that keeps exact vectors (O(1), in
    memory), else one row group of the embedding store, else encoded now."""
    from threads_search.atlas.embeddings import stored_vector
    from threads_search.atlas.indexes import index_location

    if index_location(atlas, model.model_id, modality) is not None:
        index = open_index(atlas, model.model_id, modality)
        if index.holds(np.array([vid]))[0]:
            vectors = index.stored_vectors(np.array([vid]))
            if vectors is not None:
                return vectors[0]
    vector = stored_vector(atlas, model.model_id, modality, vid)
    return vector if vector is not None else encode()


def resolve_query(atlas: Atlas, model: _LazyModel, query: Query) -> ResolvedQuery:
    """The query's vector in the model's space, with what is known about it."""
    source = query.source()
    if source == "slide_id":
        from threads_search.atlas.slides import encode_atlas_slide, slide_record

        vid, _, patient = _item(atlas, query.slide_id, ("slides",))

        def encode():
            return encode_atlas_slide(model.get(), slide_record(atlas, query.slide_id))

        vector = _stored_or_encoded(atlas, model, vid, "slides", encode)
        return ResolvedQuery(vector, {"type": "slide", "id": query.slide_id, "modality": "slides", "patient_id": patient}, vid)
    if source == "features":
        from threads_search.encoders.model import encode_slide_at
        from threads_search.readers.patch_features import inspect_feature_file, read_bag, read_coords

        if getattr(model.get(), "precomputed", False):  # the file is the new slide's own embedding
            return _resolve_slide_embedding(model.get(), query)
        info = inspect_feature_file(query.features)
        model.get().check_features(info.feature_dim, info.patch_encoder)
        coords = read_coords(query.features) if getattr(model.get(), "needs_coordinates", False) else None
        vector = encode_slide_at(model.get(), read_bag(query.features), coords, info.patch_size_level0)
        return ResolvedQuery(vector, {"type": "features", "id": info.slide_id, "file": str(query.features),
                                      "modality": "slides", "patient_id": None})
    if source == "wsi":
        return _resolve_wsi(atlas, model, query)
    if source == "sample_id":
        vid, modality, patient = _sample_item(atlas, query.sample_id, query.sample_modality)
        from threads_search.atlas.profiles import load_profiles

        def encode():
            (matrix,) = load_profiles(atlas, modality, [query.sample_id])
            encoder = model.get().encode_expression if modality == "expression" else model.get().encode_mutations
            return encoder(matrix.values, matrix.genes)[0][0]

        vector = _stored_or_encoded(atlas, model, vid, modality, encode)
        return ResolvedQuery(vector, {"type": "sample", "id": query.sample_id, "modality": modality, "patient_id": patient}, vid)
    if source == "expression":
        return _resolve_expression_file(model, query)
    return _resolve_prototype(atlas, model.model_id, query.prototype)


def _resolve_slide_embedding(model, query: Query) -> ResolvedQuery:
    """A (D,) / (1, D) slide-embedding file as the query of a precomputed model's space."""
    from pathlib import Path

    from threads_search.encoders.model import l2_normalise
    from threads_search.readers.slide_embeddings import read_slide_embedding_file

    path = Path(query.features)
    vector = read_slide_embedding_file(path, f"model '{model.name}' holds precomputed slide embeddings and cannot "
                                             f"encode patch features: query with the slide's own '{model.name}' embedding")
    if vector.shape[0] != model.out_dim:
        raise InputError(f"{path}: a {vector.shape[0]}-d embedding, but model '{model.name}' holds {model.out_dim}-d ones")
    return ResolvedQuery(l2_normalise(vector[None, :])[0], {"type": "slide embedding", "id": path.stem, "file": str(path),
                                                            "modality": "slides", "patient_id": None})


def _resolve_expression_file(model: _LazyModel, query: Query) -> ResolvedQuery:
    from threads_search.readers.profiles import read_expression

    profile = read_expression(query.expression)
    if query.sample is None:
        if len(profile.sample_ids) != 1:
            shown = ", ".join(profile.sample_ids[:5]) + (" ..." if len(profile.sample_ids) > 5 else "")
            raise InputError(f"{query.expression}: {len(profile.sample_ids)} samples ({shown}); choose one with --sample")
        row = 0
    elif query.sample in profile.sample_ids:
        row = profile.sample_ids.index(query.sample)
    else:
        raise InputError(f"{query.expression}: no sample '{query.sample}' (samples: {', '.join(profile.sample_ids[:5])} ...)")
    vectors, alignment = model.get().encode_expression(profile.values[row:row + 1], profile.genes)
    notes = [f"{query.expression.name}: {alignment.describe()}"] if alignment.n_missing else []
    return ResolvedQuery(vectors[0], {"type": "expression_file", "id": profile.sample_ids[row], "file": str(query.expression),
                                      "modality": "expression", "patient_id": None}, notes=notes)


def wsi_extract_config(atlas: Atlas, mpp: float | None = None):
    """How the atlas's slides were extracted, as an `ExtractConfig` for a new raw slide.

    The patch encoder is the atlas's; magnification (x), patch size (px at that
    magnification) and minimum tissue fraction are the most common values the atlas's feature
    files record (`extract`'s defaults where none do). Returns (config, notes); a note says
    when the atlas mixes settings.
    """
    from threads_search.atlas.slides import extraction_settings
    from threads_search.wsi.extract import ExtractConfig

    encoder = atlas.meta("patch_encoder")
    if not encoder:
        raise InputError(f"{atlas.root}: the atlas records no patch encoder, so a raw slide cannot be encoded like its slides")
    settings: Counter = Counter()
    tissue_fractions: Counter = Counter()
    for magnification, attrs in extraction_settings(atlas):
        if magnification is not None and attrs.get("patch_size") is not None:
            settings[(float(magnification), int(attrs["patch_size"]))] += 1
        if attrs.get("min_tissue_fraction") is not None:
            tissue_fractions[float(attrs["min_tissue_fraction"])] += 1
    defaults = ExtractConfig()
    magnification, patch_size = (settings.most_common(1)[0][0] if settings
                                 else (defaults.target_magnification, defaults.patch_size))
    notes = []
    if len(settings) > 1:
        mixed = ", ".join(f"{m:g}x/{p} px on {n}" for (m, p), n in settings.most_common())
        notes.append(f"atlas slides mix extraction settings ({mixed}); the query slide uses {magnification:g}x/{patch_size} px")
    tissue = tissue_fractions.most_common(1)[0][0] if tissue_fractions else defaults.min_tissue_fraction
    config = ExtractConfig(patch_encoder=encoder, target_magnification=magnification, patch_size=patch_size, mpp=mpp,
                           min_tissue_fraction=tissue)
    return config, notes


def extract_like_atlas(atlas: Atlas, wsi: Path, mpp: float | None = None, model=None, weights: Path | None = None):
    """A raw slide's patch features (in memory), extracted as the atlas's slides were.

    Returns (SlideFeatures, notes). `weights` is the local weights file of a patch encoder that
    needs one (CONCH, UNI ...). A patch encoder that cannot run here (unknown name, weights
    needed and not given) is refused with a ModelMismatchError naming it; with `model`, features
    the model was not built for are refused before any patch is read.
    """
    from threads_search.encoders.patch import create_patch_encoder
    from threads_search.errors import ModelMismatchError
    from threads_search.wsi.extract import extract_slide, resolve_device

    config, notes = wsi_extract_config(atlas, mpp)
    try:
        encoder = create_patch_encoder(config.patch_encoder, weights=weights, device=resolve_device(config.device))
    except InputError as error:
        raise ModelMismatchError(
            f"{wsi}: cannot encode it like the atlas's slides, whose patch encoder is '{config.patch_encoder}' ({error}); "
            f"give that encoder's local file with --weights, or run `threads-search extract` on it and search "
            f"with --features") from None
    if model is not None and encoder.output_dim is not None:
        model.check_features(encoder.output_dim, encoder.name)
    slide = extract_slide(wsi, config, encoder=encoder)
    if model is not None:
        model.check_features(slide.features.shape[1], encoder.name)
    return slide, notes


def _resolve_wsi(atlas: Atlas, model: _LazyModel, query: Query) -> ResolvedQuery:
    slide, notes = extract_like_atlas(atlas, query.wsi, query.mpp, model.get(), query.patch_weights)
    from threads_search.encoders.model import encode_slide_at

    vector = encode_slide_at(model.get(), slide.features, slide.coords, slide.attrs.get("patch_size_level0"))
    info = {"type": "wsi", "id": slide.slide_id, "file": str(query.wsi), "modality": "slides", "patient_id": None,
            "patches": int(slide.features.shape[0]), "patch_encoder": slide.attrs["encoder"],
            "magnification": slide.attrs["target_magnification"], "patch_size": slide.attrs["patch_size"]}
    return ResolvedQuery(vector, info, notes=notes)


def _resolve_prototype(atlas: Atlas, model_id: str, spec: str) -> ResolvedQuery:
    from threads_search.search.prototypes import prototype_vector

    name, _, label = spec.partition(":")
    if not label:
        raise InputError(f"--prototype {spec}: expected NAME:CLASS")
    vector = prototype_vector(atlas, name, label, model_id)
    return ResolvedQuery(vector, {"type": "prototype", "id": spec, "modality": None, "patient_id": None})


def hit_rows(atlas: Atlas, vids: list[int]) -> dict[int, dict]:
    """Metadata of items by vid (every column of `items` except vid)."""
    return item_metadata(atlas, vids)


def default_label(atlas: Atlas, requested: str | None) -> str | None:
    columns = atlas.metadata_columns()
    if requested:
        if requested not in columns:
            raise InputError(f"--label {requested}: no such metadata column (columns: {', '.join(columns) or 'none'})")
        return requested
    return next((c for c in DEFAULT_LABEL_COLUMNS if c in columns), None)


# Candidates fetched beyond k so that equal scores at the k-th place are broken by vid, as eval does.
TIE_MARGIN = 8
SCORE_DECIMALS = 6


def search_atlas(atlas: Atlas, query: Query, options: SearchOptions, index=None) -> SearchResult:
    """Run one query against the index of `options.target`."""
    return search_many(atlas, [query], options, index)[0]


def search_many(atlas: Atlas, queries: list[Query], options: SearchOptions, index=None) -> list[SearchResult]:
    """Run several queries with the same options against one index, in one FAISS call.

    Each query keeps its own exclusions (itself, its patient); equal scores are ordered by
    vector id, lower first. `index` replaces the atlas's recorded index of the target: an
    object with `sorted_ids`, `holds`, `model_id`, `modality` and `fan_out(vectors, fetch,
    allowed, exclusions)` (the sharded index of `threads_search.distributed.shards`).
    """
    from threads_search.indexer.bundle import sorted_membership

    if options.target not in MODALITIES:
        raise InputError(f"--target {options.target}: expected one of {', '.join(MODALITIES)}")
    if options.k < 1:
        raise InputError(f"-k {options.k}: must be at least 1")
    where = check_where(atlas, options.where)
    label = default_label(atlas, options.label)
    searched_with = None
    if index is None:
        requested = options.model_id or prototype_model(atlas, queries)
        model_id, searched_with = atlas.cached(("search model", requested, options.target), lambda: _search_model(
            atlas, requested, options.target))
        index = open_index(atlas, model_id, options.target, options.device)
    else:
        model_id = resolve_model_id(atlas, options.model_id) if options.model_id else index.model_id
        if (index.model_id, index.modality) != (model_id, options.target):
            raise InputError(f"the given index holds {index.modality} of model {index.model_id}, "
                             f"not {options.target} of model {model_id}")
    model = _LazyModel(atlas, model_id)
    resolved = [resolve_query(atlas, model, query) for query in queries]
    allowed = allowed_filter(atlas, options, where)
    candidates = index.sorted_ids() if allowed is None else allowed.within(index)
    excluded = [_excluded_vids(atlas, r, options, index) for r in resolved]
    available = [int(candidates.size - sorted_membership(e, candidates).sum()) for e in excluded]
    if options.one_per_patient:
        found = [_best_per_patient(atlas, index, r.vector, options, allowed, e, n)
                 for r, e, n in zip(resolved, excluded, available)]
    else:
        found = _nearest(index, np.stack([r.vector for r in resolved]), options.k, allowed, excluded, max(available))
    metadata = hit_rows(atlas, sorted({v for pairs in found for v, _ in pairs}))
    results = []
    for query_resolved, pairs, n_available in zip(resolved, found, available):
        notes = list(query_resolved.notes)
        if options.k > n_available:
            notes.append(f"only {n_available} {options.target} can be returned (k = {options.k})")
        elif options.one_per_patient and len(pairs) < options.k:
            notes.append(f"only {len(pairs)} patients have {options.target} among the candidates (k = {options.k})")
        hits = []
        for rank, (vid, score) in enumerate(((v, s) for v, s in pairs if v in metadata), start=1):
            row = dict(metadata[vid])
            hits.append({"rank": rank, "id": row.pop("item_id"), "modality": row.pop("modality"),
                         "patient_id": row.pop("patient_id"), "score": round(score, SCORE_DECIMALS), **_plain(row)})
        query_info = dict(query_resolved.info, model_id=model_id, target=options.target, k=options.k, where=options.where)
        if options.facets:
            query_info["facets"] = options.facets
        if options.one_per_patient:
            query_info["one_per_patient"] = True
        results.append(SearchResult(query=query_info, hits=hits, label=label, notes=notes, searched_with=searched_with))
    return results


def _search_model(atlas: Atlas, requested: str | None, target: str) -> tuple[str, str]:
    """(model id, the line that says what is searched) for `target`, once per generation."""
    chosen = resolve_search_model(atlas, requested, target)
    return chosen.model_id, chosen.describe(atlas)


def prototype_model(atlas: Atlas, queries: list[Query]) -> str | None:
    """The model a prototype query's set was built with (its space), None for other queries."""
    from threads_search.search.prototypes import load_prototypes

    if not queries or queries[0].prototype is None:
        return None
    return load_prototypes(atlas, queries[0].prototype.partition(":")[0]).model_id


# Filters an atlas keeps per generation (each with its ids, bitmap and, when tight, its vectors):
# a service answering many different filters keeps the recent ones, not every one it saw, and
# no more than FILTER_CACHE_BYTES of their bitmaps and vectors (the ids themselves not counted).
RECENT_FILTERS = 16
FILTER_CACHE_BYTES = 256 * 2**20


def allowed_filter(atlas: Atlas, options: SearchOptions, where):
    """An IdFilter of the candidates `where` and `facets` allow (cached per generation), None for every item."""
    from threads_search.atlas.facets import check_selection, selection_vids
    from threads_search.indexer.id_filter import IdFilter

    facets = check_selection(atlas, options.facets)
    if where is None and not facets:
        return None
    key = (where.statement if where else None, repr(sorted(facets.items())), options.target)

    def build() -> IdFilter:
        allowed = atlas.filter_vids(where, options.target) if where is not None else None
        if allowed is not None and allowed.size == 0:
            raise InputError(f"--where \"{options.where}\" matches no {options.target}")
        selected = selection_vids(atlas, options.target, facets)
        if selected is not None:
            allowed = selected if allowed is None else np.intersect1d(allowed, selected)
            if allowed.size == 0:
                raise InputError(f"the facet selection {options.facets} matches no {options.target}"
                                 + (" under --where" if options.where else ""))
        return IdFilter(allowed)
    return atlas.cached("id filters", lambda: LruCache(RECENT_FILTERS, max_bytes=FILTER_CACHE_BYTES,
                                                       size_of=lambda kept: kept.cached_bytes())).get(key, build)


def allowed_vids(atlas: Atlas, options: SearchOptions) -> np.ndarray | None:
    """Sorted int64 vids of the candidates `where` and `facets` allow; None for every item."""
    allowed = allowed_filter(atlas, options, check_where(atlas, options.where))
    return None if allowed is None else allowed.ids


def _rank(ids_row: np.ndarray, scores_row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(vid, score) best first; scores equal to the printed precision are ties, lower vid first."""
    pairs = [(int(v), float(s)) for v, s in zip(ids_row, scores_row) if v >= 0]
    return sorted(pairs, key=lambda pair: (-round(pair[1], SCORE_DECIMALS), pair[0]))[:k]


def _nearest(index, vectors: np.ndarray, k: int, allowed, excluded: list[np.ndarray], n_available: int):
    """Top-k (vid, score) of every query row, in one FAISS call."""
    from threads_search.indexer import search

    fetch = min(k + TIE_MARGIN, n_available)
    if not fetch:
        return [[] for _ in excluded]
    fan_out = getattr(index, "fan_out", None)  # a sharded index searches its shards and merges
    if fan_out is not None:
        scores, ids = fan_out(vectors, fetch, allowed, excluded)
    else:
        scores, ids = search(index, vectors, fetch, allowed_ids=allowed, exclude_ids=[e if e.size else None for e in excluded])
    return [_rank(ids[row], scores[row], k) for row in range(len(excluded))]


def _best_per_patient(atlas: Atlas, index, vector: np.ndarray, options: SearchOptions, allowed, excluded: np.ndarray,
                      n_candidates: int) -> list[tuple[int, float]]:
    """Each patient's best hit, best first: fetch more until k patients are found (exact)."""
    from threads_search.atlas.facets import patients_of

    fetch_k = min(max(4 * options.k, 32), max(n_candidates, 1))
    while True:
        found = _nearest(index, vector[None, :], fetch_k, allowed, [excluded], n_candidates)[0]
        patient = patients_of(atlas, [v for v, _ in found])
        best, seen = [], set()
        for vid, score in found:  # best first, so the first hit of a patient is its best
            if patient.get(vid) not in seen:
                seen.add(patient.get(vid))
                best.append((vid, score))
        # Exact once k patients are found within the fetched prefix, or every candidate was fetched.
        if len(best) >= options.k or fetch_k >= n_candidates:
            return best[:options.k]
        fetch_k = min(4 * fetch_k, n_candidates)


def _excluded_vids(atlas: Atlas, resolved: ResolvedQuery, options: SearchOptions, index) -> np.ndarray:
    """Ids the search must not return: the query itself, its patient's items, and ids the index
    still holds for items removed or replaced since it was built."""
    stale = atlas.cached(("stale ids", id(index), options.target),
                         lambda: np.setdiff1d(index.sorted_ids(), atlas.modality_vids(options.target), assume_unique=True))
    parts = [stale]
    if resolved.exclude_vid is not None:
        parts.append(np.array([resolved.exclude_vid], np.int64))  # the query itself is never its own hit
    patient = resolved.info.get("patient_id")
    if patient is not None and not options.include_same_patient:
        parts.append(patient_vids(atlas, options.target, patient))
    return np.unique(np.concatenate(parts))


def _plain(row: dict) -> dict:
    """JSON-friendly metadata values (dates and decimals as text)."""
    out = {}
    for key, value in row.items():
        if value is None or isinstance(value, (str, int, float, bool)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def query_from_arguments(slide_id=None, features=None, wsi=None, sample_id=None, expression=None, sample=None,
                         prototype=None, mpp=None, sample_modality=None, patch_weights=None) -> Query:
    return Query(slide_id=slide_id, features=Path(features) if features else None, wsi=Path(wsi) if wsi else None,
                 sample_id=sample_id, expression=Path(expression) if expression else None, sample=sample,
                 prototype=prototype, mpp=mpp, sample_modality=sample_modality,
                 patch_weights=Path(patch_weights) if patch_weights else None)
