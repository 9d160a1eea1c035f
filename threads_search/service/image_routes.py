"""Slide images by item id (the vid every hit carries): thumbnail, DeepZoom, attention as data and PNG."""

from __future__ import annotations

import io

from fastapi import APIRouter, Depends, Path as PathParam, Query as QueryParam
from fastapi.responses import Response

from threads_search.service.state import ServiceState, authorised, json_response, service_state

router = APIRouter(prefix="/api/images", dependencies=[Depends(authorised)], tags=["images"])
IMAGE_CACHE = "private, max-age=3600"
VID = PathParam(..., ge=1, description="The item id (vid) of an atlas slide.")


def _slide(state: ServiceState, vid: int):
    from threads_search.service.images import slide_of_vid

    with state.handle.reader() as (atlas, _):
        return slide_of_vid(atlas, vid)


@router.get("/{vid}", summary="Which pictures a slide has; its size and resolution")
def image_info(vid: int = VID, state: ServiceState = Depends(service_state)):
    images = _slide(state, vid)
    wsi = state.images.describe(images)
    return json_response({"vid": vid, "slide_id": images.slide_id,
                          "thumbnail": bool(images.thumbnail_path or images.wsi_path), "wsi": wsi,
                          "dzi": f"/api/images/{vid}/slide.dzi" if wsi else None})


@router.get("/{vid}/thumbnail.png", summary="A thumbnail (from extract, or made from the raw slide and cached)")
def thumbnail(vid: int = VID, size: int = QueryParam(256, ge=32, le=1024), state: ServiceState = Depends(service_state)):
    png = state.images.thumbnail_png(_slide(state, vid), size)
    return Response(png, media_type="image/png", headers={"Cache-Control": IMAGE_CACHE})


@router.get("/{vid}/slide.dzi", summary="The DeepZoom descriptor of the raw slide")
def dzi(vid: int = VID, state: ServiceState = Depends(service_state)):
    return Response(state.images.dzi(_slide(state, vid)), media_type="application/xml")


@router.get("/{vid}/slide_files/{level}/{column}_{row}.jpeg", summary="One DeepZoom tile")
def tile(vid: int = VID, level: int = PathParam(..., ge=0, le=64), column: int = PathParam(..., ge=0),
         row: int = PathParam(..., ge=0), state: ServiceState = Depends(service_state)):
    jpeg = state.images.tile(_slide(state, vid), level, column, row)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": IMAGE_CACHE})


def _attention(state: ServiceState, vid: int, model_id: str | None):
    from threads_search.search.heatmap import slide_attention
    from threads_search.service.images import slide_of_vid

    with state.handle.reader() as (atlas, generation):
        slide_id = slide_of_vid(atlas, vid).slide_id
        key = ("data", generation.number, vid, model_id)
        return state.attention.get(key, lambda: slide_attention(atlas, slide_id, model_id))


@router.get("/{vid}/attention.json", summary="Per-patch attention: true values, coordinates and the colour scale")
def attention_data(vid: int = VID, model_id: str | None = QueryParam(None, max_length=64),
                   state: ServiceState = Depends(service_state)):
    """`weights` sum to one over the slide (heads averaged); `relative` is weight / mean (1 = uniform);
    `positions` place each patch on `scale`, the log2 colour scale the PNG uses (colour stops, labelled ticks)."""
    from threads_search.wsi.heatmap import AttentionScale, relative_attention

    attention = _attention(state, vid, model_id)
    scale = AttentionScale.for_weights(attention.weights)
    images = _slide(state, vid)
    wsi = state.images.describe(images)
    reach = (attention.coords.max(axis=0) + attention.patch_size_level0).tolist()
    fits = None if wsi is None else bool(reach[0] <= wsi["width"] + attention.patch_size_level0
                                         and reach[1] <= wsi["height"] + attention.patch_size_level0)
    return json_response({
        "vid": vid, "slide_id": attention.slide_id, "model_id": attention.model_id, "recipe": attention.recipe,
        "n_patches": int(attention.weights.size), "n_heads": attention.n_heads,
        "patch_size_level0": attention.patch_size_level0, "extent_level0": reach, "fits_wsi": fits,
        "coords": attention.coords.tolist(), "weights": [round(float(w), 8) for w in attention.weights],
        "relative": [round(float(r), 5) for r in relative_attention(attention.weights)],
        "positions": [round(float(p), 5) for p in scale.positions(attention.weights)], "scale": scale.to_json()})


@router.get("/{vid}/attention.png", summary="The attention heatmap over the slide's thumbnail, as `heatmap` draws it")
def attention_png(vid: int = VID, model_id: str | None = QueryParam(None, max_length=64),
                  state: ServiceState = Depends(service_state)):
    from threads_search.search.heatmap import draw_attention_heatmap
    from threads_search.service.images import slide_of_vid

    def draw(atlas, slide_id: str) -> bytes:
        image, _ = draw_attention_heatmap(atlas, slide_id=slide_id, model_id=model_id)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    with state.handle.reader() as (atlas, generation):
        slide_id = slide_of_vid(atlas, vid).slide_id
        png = state.attention.get(("png", generation.number, vid, model_id), lambda: draw(atlas, slide_id))
    return Response(png, media_type="image/png", headers={"Cache-Control": IMAGE_CACHE})
