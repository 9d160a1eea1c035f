"""The search API: by atlas item or prototype (JSON), by uploaded file (multipart), id completion."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query as QueryParam, Request

from threads_search.errors import InputError
from threads_search.service.schemas import RegionSearchRequest, SearchRequest, SearchSettings, Target
from threads_search.service.state import ServiceState, authorised, json_response, service_state

router = APIRouter(prefix="/api", dependencies=[Depends(authorised)], tags=["search"])


def _search(state: ServiceState, query, options, kind: str, upload_name: str | None = None) -> dict:
    from threads_search.service.search_service import search_payload

    with state.searches, state.handle.reader() as (atlas, generation):  # bounded work in flight
        payload = search_payload(atlas, generation, query, options, upload_name, state.index_source)
    state.metrics.count_query(kind, options.target)
    return payload


@router.post("/search", summary="Nearest neighbours of an atlas slide or profile, or of a prototype")
def search(body: SearchRequest, state: ServiceState = Depends(service_state)):
    """The CLI's `search --slide-id | --sample-id | --prototype` with its options; hits as `search --format json`
    prints them, plus `vid` / `images` per hit and the `votes` distribution of the label column."""
    return json_response(_search(state, body.query(), body.options(), body.kind()))


@router.post("/search/regions", summary="Regions of the archive like a box (or a patch) of an atlas slide")
def search_regions(body: RegionSearchRequest, state: ServiceState = Depends(service_state)):
    """The CLI's `search --slide-id ID --region X,Y,W,H | --patch N [--group-by slide]` over the patch
    index: regions (slide id, level-0 `x`, `y`, `width`, `height`, score, metadata), or with
    `group_by: slides` slides ranked by the votes of their regions, each with its best `regions`;
    hits as `search --format json` prints them, plus `vid` / `images` per hit. An atlas without a
    patch index answers 409 naming `threads-search index ATLAS --level patches`."""
    from threads_search.service.search_service import region_payload

    query, options = body.query(), body.options()
    with state.searches, state.handle.reader() as (atlas, generation):
        payload = region_payload(atlas, generation, query, options)
    state.metrics.count_query("region", body.group_by.value)
    return json_response(payload)


def _settings(options_json: str) -> SearchSettings:
    from pydantic import ValidationError

    from threads_search.service.http_errors import validation_line

    try:
        return SearchSettings.model_validate_json(options_json)
    except ValidationError as error:
        raise InputError(f"upload options: {validation_line(error.errors())}") from None


@router.post("/search/upload", summary="Nearest neighbours of an uploaded feature file or expression table")
async def search_upload(request: Request, state: ServiceState = Depends(service_state)):
    """Multipart form: `file`, `kind` (features | expression), `sample` (row of an expression table),
    `options` (JSON search settings). Read with the same readers and refusals as `ingest`."""
    from starlette.concurrency import run_in_threadpool

    from threads_search.search.query import Query
    from threads_search.service.uploads import receive_upload

    upload = await receive_upload(request, state.config.max_upload_bytes)
    try:
        settings = _settings(upload.options_json)
        query = (Query(features=upload.path) if upload.kind == "features"
                 else Query(expression=upload.path, sample=upload.sample))
        payload = await run_in_threadpool(_search, state, query, settings.options(), upload.kind, upload.name)
    finally:
        upload.discard()
    return json_response(payload)


@router.get("/complete", summary="Item ids starting with (then containing) some text")
def complete(q: str = QueryParam(..., min_length=1, max_length=200), modality: Target = Target.slides,
             limit: int = QueryParam(20, ge=1, le=100), state: ServiceState = Depends(service_state)):
    from threads_search.atlas.facets import complete_item_ids

    with state.handle.reader() as (atlas, _):
        return json_response({"modality": modality.value, "ids": complete_item_ids(atlas, modality.value, q, limit)})
