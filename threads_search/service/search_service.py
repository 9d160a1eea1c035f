"""A search as the page needs it: the CLI's JSON result plus image links and the vote distribution."""

from __future__ import annotations

from collections import Counter

from threads_search.atlas.store import Atlas
from threads_search.service.handle import Generation

MISSING = "(missing)"


def image_availability(atlas: Atlas, generation: Generation) -> dict[str, tuple[bool, bool]]:
    from threads_search.atlas.slide_images import image_availability as recorded

    return generation.cached("image_availability", lambda: recorded(atlas))


def _images(available: dict[str, tuple[bool, bool]], slide_id: str, vid: int | None) -> dict:
    thumbnail, wsi = available.get(slide_id, (False, False))
    return {"vid": vid, "thumbnail": thumbnail or wsi, "wsi": wsi}


def vote_distribution(atlas: Atlas, result, options) -> dict | None:
    """Label counts among the hits beside each label's share of the searchable items (so a rare
    class with two votes shows against its base rate)."""
    from threads_search.atlas.facets import facet_counts
    from threads_search.search.query import allowed_vids

    if not result.label:
        return None
    votes = Counter(MISSING if h.get(result.label) is None else str(h.get(result.label)) for h in result.hits)
    base = facet_counts(atlas, options.target, [result.label], allowed_vids(atlas, options))[result.label]
    total = sum(n for _, n in base) or 1
    share = {MISSING if value is None else value: n / total for value, n in base}
    classes = sorted(set(votes) | set(share), key=lambda c: (-votes.get(c, 0), -share.get(c, 0.0), c))
    return {"label": result.label, "n_hits": len(result.hits), "majority": result.majority(),
            "classes": [{"value": c, "votes": votes.get(c, 0), "database_share": round(share.get(c, 0.0), 6)}
                        for c in classes]}


def search_payload(atlas: Atlas, generation: Generation, query, options, upload_name: str | None = None,
                   index_source=None) -> dict:
    """`search_atlas`'s JSON (hits exactly as the CLI prints them) with, per hit, `vid` and
    `images` ({vid, thumbnail, wsi}); the query's images when it is an atlas slide; and `votes`.

    `index_source(atlas, model_id, target)` gives the index to search instead of the recorded
    one (`serve --ray`: shards on Ray actors), or None for the recorded one."""
    from threads_search.search.query import search_atlas

    index = None
    if index_source is not None:
        from dataclasses import replace

        from threads_search.atlas.search_default import resolve_search_model
        from threads_search.search.query import prototype_model

        chosen = resolve_search_model(atlas, options.model_id or prototype_model(atlas, [query]), options.target,
                                      sharded=True)
        options = replace(options, model_id=chosen.model_id)
        index = index_source(atlas, chosen.model_id, options.target)
    result = search_atlas(atlas, query, options, index)
    payload = _with_images(atlas, generation, result.to_json(), options.target)
    if upload_name is not None:
        payload["query"]["file"] = upload_name  # the server's temporary path means nothing to the client
    payload["votes"] = vote_distribution(atlas, result, options)
    return payload


def _with_images(atlas: Atlas, generation: Generation, payload: dict, target: str) -> dict:
    """Per hit `vid` and `images`; the query's `images` when it is an atlas slide."""
    from threads_search.atlas.facets import vids_of

    available = image_availability(atlas, generation)
    vids = vids_of(atlas, target, [h["id"] for h in payload["hits"]])
    for hit in payload["hits"]:
        hit["vid"] = vids.get(hit["id"])
        hit["images"] = _images(available, hit["id"], hit["vid"]) if hit["modality"] == "slides" else None
    info = payload["query"]
    if info.get("type") in ("slide", "region") and info.get("modality") == "slides" and not info.get("file"):
        vid = vids_of(atlas, "slides", [info["id"]]).get(info["id"])
        info["images"] = _images(available, info["id"], vid)
    return payload


def region_payload(atlas: Atlas, generation: Generation, query, options) -> dict:
    """`search_regions`'s JSON (hits exactly as `search --region ... --format json` prints them:
    regions, or with group_by slides the voted slides with their `regions`) plus `vid` / `images`
    per hit and the query slide's `images`, so the page can draw each box on its slide."""
    from threads_search.search.regions import search_regions

    return _with_images(atlas, generation, search_regions(atlas, query, options).to_json(), "slides")
