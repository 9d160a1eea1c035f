"""What the atlas holds: summary, item metadata, facets, prototypes, classification, eval reports."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query as QueryParam

from threads_search.service.http_errors import NotFoundError
from threads_search.service.schemas import ClassifyRequest, FacetRequest, Target
from threads_search.service.state import ServiceState, authorised, json_response, service_state

router = APIRouter(prefix="/api", dependencies=[Depends(authorised)], tags=["atlas"])
MAX_REPORT_BYTES = 32 * 2**20


def _summary(atlas) -> dict:
    from threads_search.atlas.facets import facet_columns
    from threads_search.atlas.info import atlas_info
    from threads_search.atlas.search_default import resolve_search_model
    from threads_search.errors import AtlasError
    from threads_search.search.prototypes import load_prototypes
    from threads_search.search.query import default_label

    info = atlas_info(atlas)
    try:  # the model a search without `model` uses
        default_model = resolve_search_model(atlas, None, "slides").model_id
    except AtlasError:
        default_model = None
    prototypes = []
    for record in info["prototypes"]:
        loaded = load_prototypes(atlas, record["name"])
        prototypes.append({"name": loaded.name, "modality": loaded.modality, "label": loaded.label_column,
                           "model_id": loaded.model_id, "classes": loaded.classes, "members": loaded.members})
    return {"atlas": info["atlas"], "items": info["items"], "patients": info["patients"], "models": info["models"],
            "default_model": default_model, "indexes": info["indexes"],
            "metadata_columns": list(info["metadata"]), "label": default_label(atlas, None),
            "facet_columns": {m: facet_columns(atlas, m) for m, n in info["items"].items() if n},
            "prototypes": prototypes}


@router.get("/info", summary="What the atlas holds and how the service is set up")
def info(state: ServiceState = Depends(service_state)):
    from threads_search.service.search_service import image_availability

    with state.handle.reader() as (atlas, generation):
        summary = dict(generation.cached("summary", lambda: _summary(atlas)))
        available = image_availability(atlas, generation)
    summary.update(generation=generation.number, slides_with_thumbnail=sum(t or w for t, w in available.values()),
                   slides_with_wsi=sum(w for _, w in available.values()), max_upload_bytes=state.config.max_upload_bytes,
                   token_required=state.config.token is not None, reports=state.config.reports_dir is not None)
    return json_response(summary)


@router.get("/items", summary="One item's metadata")
def item(id: str = QueryParam(..., max_length=1000), modality: Target = Target.slides,
         state: ServiceState = Depends(service_state)):
    from threads_search.atlas.facets import vids_of
    from threads_search.search.query import _plain, hit_rows
    from threads_search.service.search_service import image_availability

    with state.handle.reader() as (atlas, generation):
        vid = vids_of(atlas, modality.value, [id]).get(id)
        if vid is None:
            raise NotFoundError(f"unknown {modality.value} id '{id}'")
        row = hit_rows(atlas, [vid])[vid]
        available = image_availability(atlas, generation)
    thumbnail, wsi = available.get(id, (False, False))
    images = {"vid": vid, "thumbnail": thumbnail or wsi, "wsi": wsi} if modality is Target.slides else None
    return json_response({"vid": vid, "id": row.pop("item_id"), "modality": row.pop("modality"),
                          "patient_id": row.pop("patient_id"), "metadata": _plain(row), "images": images})


@router.post("/facets", summary="Value counts of metadata columns under a filter and facet selection")
def facets(body: FacetRequest, state: ServiceState = Depends(service_state)):
    """Counts for column C apply the filter and the selections of every other column, so several values of C
    can be chosen; the same selection passed to /api/search narrows the search itself."""
    from threads_search.atlas.facets import facet_columns, facet_counts
    from threads_search.search.query import SearchOptions, allowed_vids

    target = body.target.value
    with state.handle.reader() as (atlas, generation):
        columns = body.columns or generation.cached(("facet_columns", target), lambda: facet_columns(atlas, target))
        allowed = allowed_vids(atlas, SearchOptions(target=target, where=body.where or None))
        counts = facet_counts(atlas, target, columns, allowed, body.facets)
    return json_response({"target": target, "where": body.where, "facets": {
        column: [{"value": value, "count": count} for value, count in rows] for column, rows in counts.items()}})


@router.get("/prototypes", summary="Stored prototype sets and their classes")
def prototypes(state: ServiceState = Depends(service_state)):
    with state.handle.reader() as (atlas, generation):
        return json_response({"prototypes": generation.cached("summary", lambda: _summary(atlas))["prototypes"]})


@router.post("/classify", summary="Zero-shot classification of slides by their nearest prototype")
def classify(body: ClassifyRequest, state: ServiceState = Depends(service_state)):
    from threads_search.search.prototypes import classify_slides

    with state.handle.reader() as (atlas, _):
        result = classify_slides(atlas, body.prototypes, body.where or None)
    slides = [{"slide_id": s, "patient_id": p, "predicted": c, "true": t,
               "scores": {name: round(float(v), 6) for name, v in zip(result.classes, scores)}}
              for s, p, c, t, scores in zip(result.slide_ids, result.patient_ids, result.predicted, result.truth,
                                            result.scores)]
    return json_response({"classes": result.classes, "balanced_accuracy": result.balanced_accuracy(), "slides": slides})


def _report_files(state: ServiceState) -> dict[str, object]:
    folder = state.config.reports_dir
    if folder is None:
        raise NotFoundError("no reports folder (start the service with --reports DIR)")
    return {path.name: path for path in sorted(folder.glob("*.json")) if path.is_file()}


@router.get("/reports", summary="The `eval --json` reports of the --reports folder")
def reports(state: ServiceState = Depends(service_state)):
    return json_response({"reports": list(_report_files(state))})


@router.get("/reports/{name}", summary="One stored report")
def report(name: str, state: ServiceState = Depends(service_state)):
    files = _report_files(state)  # the name must be one of the listed files: never a path
    if name not in files:
        raise NotFoundError(f"no report '{name[:200]}' (reports: {', '.join(files) or 'none'})")
    path = files[name]
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise NotFoundError(f"report '{name}' is larger than {MAX_REPORT_BYTES:,} bytes")
    return json_response(json.loads(path.read_text()))
