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

from threads_search.atlas.store import MODALITIES, Atlas, quote_identifier
from threads_search.errors import InputError
from threads_search.atlas.where import matching_vids
from threads_search.jobs.index import open_index
from threads_search.atlas.model_records import load_atlas_model, resolve_model_id

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
    placeholders = ", ".join("?" for _ in modalities)
    rows = atlas.sql(f"SELECT vid, modality, patient_id FROM items WHERE item_id = ? AND modality IN ({placeholders}) "
                     f"ORDER BY modality", [item_id, *modalities]).fetchall()
    if not rows:
        kind = "slide" if modalities == ("slides",) else "sample"
        raise InputError(f"unknown {kind} id '{item_id}' (not in {atlas.root})")
    return rows[0]


def _stored_or_encoded(atlas: Atlas, model: _LazyModel, vid: int, modality: str, encode) -> np.ndarray:
    from threads_search.atlas.embeddings import load_embeddings

    ids, vectors = load_embeddings(atlas, model.model_id, modality, [vid])
    return vectors[0] if ids.size else encode()


def resolve_query(atlas: Atlas, model: _LazyModel, query: Query) -> ResolvedQuery:
    """The query's vector in the model's space, with what is known about it."""
    source = query.source()
    if source == "slide_id":
        from threads_search.atlas.slide_bags import load_slide_bag, slide_records

        vid, _, patient = _item(atlas, query.slide_id, ("slides",))

        def encode():
            (record,) = slide_records(atlas, f"vid = {int(vid)}")
            return model.get().encode_slide(load_slide_bag(record))

        vector = _stored_or_encoded(atlas, model, vid, "slides", encode)
        return ResolvedQuery(vector, {"type": "slide", "id": query.slide_id, "modality": "slides", "patient_id": patient}, vid)
    if source == "features":
        from threads_search.readers.patch_features import inspect_feature_file, read_bag

        info = inspect_feature_file(query.features)
        model.get().check_features(info.feature_dim, info.patch_encoder)
        vector = model.get().encode_slide(read_bag(query.features))
        return ResolvedQuery(vector, {"type": "features", "id": info.slide_id, "file": str(query.features),
                                      "modality": "slides", "patient_id": None})
    if source == "wsi":
        return _resolve_wsi(atlas, model, query)
    if source == "sample_id":
        vid, modality, patient = _item(atlas, query.sample_id, ("expression", "mutations"))
        from threads_search.ingest.profiles import load_profiles

        def encode():
            (matrix,) = load_profiles(atlas, modality, [query.sample_id])
            encoder = model.get().encode_expression if modality == "expression" else model.get().encode_mutations
            return encoder(matrix.values, matrix.genes)[0][0]

        vector = _stored_or_encoded(atlas, model, vid, modality, encode)
        return ResolvedQuery(vector, {"type": "sample", "id": query.sample_id, "modality": modality, "patient_id": patient}, vid)
    if source == "expression":
        return _resolve_expression_file(model, query)
    return _resolve_prototype(atlas, model.model_id, query.prototype)


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
    import json

    from threads_search.wsi.extract import ExtractConfig

    encoder = atlas.meta("patch_encoder")
    if not encoder:
        raise InputError(f"{atlas.root}: the atlas records no patch encoder, so a raw slide cannot be encoded like its slides")
    settings: Counter = Counter()
    tissue_fractions: Counter = Counter()
    for magnification, attrs_json in atlas.sql("SELECT magnification, attrs FROM slides").fetchall():
        attrs = json.loads(attrs_json or "{}")
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


def extract_like_atlas(atlas: Atlas, wsi: Path, mpp: float | None = None, model=None):
    """A raw slide's patch features (in memory), extracted as the atlas's slides were.

    Returns (SlideFeatures, notes). A patch encoder that cannot run here (unknown name,
    local weights needed) is refused with a ModelMismatchError naming it; with `model`, features
    the model was not built for are refused before any patch is read.
    """
    from threads_search.encoders.patch import create_patch_encoder
    from threads_search.errors import ModelMismatchError
    from threads_search.wsi.extract import extract_slide, resolve_device

    config, notes = wsi_extract_config(atlas, mpp)
    try:
        encoder = create_patch_encoder(config.patch_encoder, device=resolve_device(config.device))
    except InputError as error:
        raise ModelMismatchError(
            f"{wsi}: cannot encode it like the atlas's slides, whose patch encoder is '{config.patch_encoder}' ({error}); "
            f"run `threads-search extract` on it with that encoder and search with --features") from None
    if model is not None and encoder.output_dim is not None:
        model.check_features(encoder.output_dim, encoder.name)
    slide = extract_slide(wsi, config, encoder=encoder)
    if model is not None:
        model.check_features(slide.features.shape[1], encoder.name)
    return slide, notes


def _resolve_wsi(atlas: Atlas, model: _LazyModel, query: Query) -> ResolvedQuery:
    slide, notes = extract_like_atlas(atlas, query.wsi, query.mpp, model.get())
    vector = model.get().encode_slide(slide.features)
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
    if not vids:
        return {}
    columns = [c for c in atlas.item_columns() if c != "vid"]
    selected = ", ".join(quote_identifier(c) for c in columns)
    rows = atlas.sql(f"SELECT vid, {selected} FROM items WHERE vid IN ({', '.join(map(str, vids))})").fetchall()
    return {row[0]: dict(zip(columns, row[1:])) for row in rows}


def default_label(atlas: Atlas, requested: str | None) -> str | None:
    columns = atlas.metadata_columns()
    if requested:
        if requested not in columns:
            raise InputError(f"--label {requested}: no such metadata column (columns: {', '.join(columns) or 'none'})")
        return requested
    return next((c for c in DEFAULT_LABEL_COLUMNS if c in columns), None)


def search_atlas(atlas: Atlas, query: Query, options: SearchOptions) -> SearchResult:
    """Run one query against the index of `options.target`."""
    if options.target not in MODALITIES:
        raise InputError(f"--target {options.target}: expected one of {', '.join(MODALITIES)}")
    if options.k < 1:
        raise InputError(f"-k {options.k}: must be at least 1")
    model_id = resolve_model_id(atlas, options.model_id)
    label = default_label(atlas, options.label)
    index = open_index(atlas, model_id, options.target, options.device)
    resolved = resolve_query(atlas, _LazyModel(atlas, model_id), query)
    notes = list(resolved.notes)
    allowed = allowed_vids(atlas, options)
    excluded = _excluded_vids(atlas, resolved, options)
    candidates = (index.sorted_ids() if allowed is None else allowed[index.holds(allowed)])
    n_candidates = int(np.setdiff1d(candidates, excluded).size)
    if options.k > n_candidates:
        notes.append(f"only {n_candidates} {options.target} can be returned (k = {options.k})")
    found = _nearest(atlas, index, resolved.vector, options, allowed, excluded, n_candidates)
    if options.one_per_patient and len(found) < min(options.k, n_candidates):
        notes.append(f"only {len(found)} patients have {options.target} among the candidates (k = {options.k})")
    metadata = hit_rows(atlas, [v for v, _ in found])
    hits = []
    for rank, (vid, score) in enumerate(((v, s) for v, s in found if v in metadata), start=1):
        row = metadata[vid]
        hits.append({"rank": rank, "id": row.pop("item_id"), "modality": row.pop("modality"),
                     "patient_id": row.pop("patient_id"), "score": round(score, 6), **_plain(row)})
    if len(hits) < len(found):
        notes.append(f"{len(found) - len(hits)} hit(s) belong to items replaced since indexing; "
                     f"run `threads-search index {atlas.root} --rebuild`")
    query_info = dict(resolved.info, model_id=model_id, target=options.target, k=options.k, where=options.where)
    if options.facets:
        query_info["facets"] = options.facets
    if options.one_per_patient:
        query_info["one_per_patient"] = True
    return SearchResult(query=query_info, hits=hits, label=label, notes=notes)


def allowed_vids(atlas: Atlas, options: SearchOptions) -> np.ndarray | None:
    """Candidates allowed by `where` and `facets` (sorted int64), None for every item."""
    from threads_search.atlas.facets import selection_vids

    allowed = None
    if options.where:
        allowed = np.array(matching_vids(atlas, options.target, options.where), np.int64)
        if allowed.size == 0:
            raise InputError(f"--where \"{options.where}\" matches no {options.target}")
    selected = selection_vids(atlas, options.target, options.facets)
    if selected is not None:
        allowed = selected if allowed is None else np.intersect1d(allowed, selected)
        if allowed.size == 0:
            raise InputError(f"the facet selection {options.facets} matches no {options.target}"
                             + (" under --where" if options.where else ""))
    return allowed


def _nearest(atlas: Atlas, index, vector: np.ndarray, options: SearchOptions, allowed, excluded: np.ndarray,
             n_candidates: int) -> list[tuple[int, float]]:
    """(vid, score) of the hits, best first; with `one_per_patient` each patient's best only."""
    from threads_search.indexer import search

    def fetch(k: int) -> list[tuple[int, float]]:
        scores, ids = search(index, vector[None, :], k, allowed_ids=allowed,
                             exclude_ids=[excluded] if excluded.size else None)
        return [(int(v), float(s)) for v, s in zip(ids[0], scores[0]) if v >= 0]

    if not options.one_per_patient:
        return fetch(options.k)
    from threads_search.atlas.facets import patients_of

    fetch_k = min(max(4 * options.k, 32), max(n_candidates, 1))
    while True:
        found = fetch(fetch_k)
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


def _excluded_vids(atlas: Atlas, resolved: ResolvedQuery, options: SearchOptions) -> np.ndarray:
    excluded = set()
    if resolved.exclude_vid is not None:
        excluded.add(resolved.exclude_vid)  # the query itself is never its own hit
    patient = resolved.info.get("patient_id")
    if patient is not None and not options.include_same_patient:
        excluded.update(r[0] for r in atlas.sql("SELECT vid FROM items WHERE modality = ? AND patient_id = ?",
                                                [options.target, patient]).fetchall())
    return np.array(sorted(excluded), np.int64)


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
                         prototype=None, mpp=None) -> Query:
    return Query(slide_id=slide_id, features=Path(features) if features else None, wsi=Path(wsi) if wsi else None,
                 sample_id=sample_id, expression=Path(expression) if expression else None, sample=sample,
                 prototype=prototype, mpp=mpp)
