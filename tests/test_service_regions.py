"""`POST /api/search/regions`: the CLI's region search over the patch index through the service,
its answers equal to `search --region ... --format json`, filters and same-patient exclusion, and
refusals of untrusted ids, boxes and filters as one line (never reaching SQL or a path)."""

from __future__ import annotations

import csv
import json

import pytest
from service_support import cli, copy_of, demo_with_images

from threads_search.readers.patch_features import read_coords
from threads_search.service.app import create_app
from threads_search.service.config import ServiceConfig

pytestmark = [pytest.mark.filterwarnings("ignore:Using `httpx`"), pytest.mark.usefixtures("one_faiss_thread")]
TOKEN = "regions-test-token-0123456789"
QUERY_SLIDE = "SYN-S5-0001-01Z-00-DX1"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return demo_with_images(tmp_path_factory)


@pytest.fixture(scope="module")
def indexed(run, tmp_path_factory):
    """A copy of the demo atlas with its patch index (every patch, exact)."""
    atlas = copy_of(run, tmp_path_factory.mktemp("regions_service") / "atlas")
    outcome = cli("index", atlas, "--level", "patches", "--quiet")
    assert outcome.exit_code == 0, outcome.output
    return atlas


@pytest.fixture(scope="module")
def client(indexed):
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServiceConfig(atlas=indexed))) as client:
        yield client


@pytest.fixture(scope="module")
def metadata(run):
    return {row["slide_id"]: row for row in csv.DictReader(open(run / "cohort" / "slides.csv"))}


def _box_of(run, slide_id: str, rows=range(40, 56)) -> dict:
    """A box around some patches of a slide (level-0 px), from its feature file."""
    coords = read_coords(run / "cohort" / "features" / f"{slide_id}.h5")[list(rows)]
    (x0, y0), (x1, y1) = coords.min(axis=0), coords.max(axis=0) + 1
    return {"x": int(x0), "y": int(y0), "w": int(x1 - x0), "h": int(y1 - y0)}


def _cli_json(atlas, *args) -> dict:
    outcome = cli("search", atlas, *args, "--format", "json")
    assert outcome.exit_code == 0, outcome.output
    return json.loads(outcome.stdout[outcome.stdout.index("{"):])


def _without_service_fields(hits: list[dict]) -> list[dict]:
    return [{k: v for k, v in hit.items() if k not in ("vid", "images")} for hit in hits]


@pytest.mark.parametrize("group_by", ["regions", "slides"])
def test_the_endpoint_answers_what_the_cli_prints(run, indexed, client, group_by):
    box = _box_of(run, QUERY_SLIDE)
    response = client.post("/api/search/regions", json={"slide_id": QUERY_SLIDE, "region": box, "k": 6,
                                                         "group_by": group_by, "regions_per_slide": 4})
    assert response.status_code == 200, response.text
    payload = response.json()
    region = f"{box['x']},{box['y']},{box['w']},{box['h']}"
    extra = ["--group-by", "slide", "--regions-per-slide", "4"] if group_by == "slides" else []
    printed = _cli_json(indexed, "--slide-id", QUERY_SLIDE, "--region", region, "-k", "6", *extra)
    assert _without_service_fields(payload["hits"]) == printed["hits"]
    assert {k: v for k, v in payload["query"].items() if k != "images"} == printed["query"]
    assert len(payload["hits"]) == 6 and payload["query"]["region"] == [box["x"], box["y"], box["w"], box["h"]]
    assert payload["query"]["images"]["wsi"] is True and payload["query"]["images"]["vid"] is not None
    # Each box is the hit patch's level-0 square on its slide, and every hit links to its slide's images.
    for hit in payload["hits"]:
        coords = read_coords(run / "cohort" / "features" / f"{hit['id']}.h5")
        boxes = hit["regions"] if group_by == "slides" else [hit]
        assert boxes and (group_by == "regions" or len(boxes) <= 4)
        for entry in boxes:
            assert (entry["x"], entry["y"]) == tuple(int(v) for v in coords[entry["patch"]])
            assert entry["width"] == entry["height"] > 0
        assert hit["vid"] is not None and set(hit["images"]) == {"vid", "thumbnail", "wsi"}
    if group_by == "slides":
        assert all(hit["regions"][0]["score"] == hit["best_region_score"] for hit in payload["hits"])
        assert all([r["score"] for r in h["regions"]] == sorted((r["score"] for r in h["regions"]), reverse=True)
                   for h in payload["hits"])
        assert len({h["id"] for h in payload["hits"]}) == 6


def test_a_patch_query_and_the_query_patches_are_reported(run, client):
    response = client.post("/api/search/regions", json={"slide_id": QUERY_SLIDE, "patch": 3, "k": 4})
    assert response.status_code == 200, response.text
    query = response.json()["query"]
    x, y = read_coords(run / "cohort" / "features" / f"{QUERY_SLIDE}.h5")[3]
    assert query["patch"] == 3 and query["patches"] == 1
    assert (query["query_patches"][0]["x"], query["query_patches"][0]["y"]) == (int(x), int(y))


def test_filters_and_same_patient_exclusion_hold_for_regions_and_slides(run, client, metadata):
    box = _box_of(run, QUERY_SLIDE)
    patient = metadata[QUERY_SLIDE]["patient_id"]
    same_patient = [s for s, row in metadata.items() if row["patient_id"] == patient and s != QUERY_SLIDE]
    for group_by in ("regions", "slides"):
        body = {"slide_id": QUERY_SLIDE, "region": box, "k": 20, "group_by": group_by}
        hits = client.post("/api/search/regions", json=body).json()["hits"]
        assert hits and all(h["patient_id"] != patient for h in hits)
        filtered = client.post("/api/search/regions", json={**body, "where": "site <> 'site5'"}).json()["hits"]
        assert filtered and all(metadata[h["id"]]["site"] != "site5" for h in filtered)
        assert any(metadata[h["id"]]["site"] == "site5" for h in hits)  # the filter removed something
        if same_patient:
            kept = client.post("/api/search/regions", json={**body, "k": 200, "include_same_patient": True}).json()
            assert any(h["id"] in same_patient for h in kept["hits"])
        assert all(h["id"] != QUERY_SLIDE for h in hits)  # never its own hit


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"slide_id": "no-such-slide", "patch": 0}, 400, "unknown slide id 'no-such-slide'"),
    ({"slide_id": "../../../etc/passwd", "patch": 0}, 400, "unknown slide id '../../../etc/passwd'"),
    ({"slide_id": "x' OR '1'='1", "patch": 0}, 400, "unknown slide id"),
    ({"slide_id": QUERY_SLIDE}, 400, "give exactly one of region {x, y, w, h} (level-0 px) or patch"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "region": {"x": 0, "y": 0, "w": 9, "h": 9}}, 400, "give exactly one of"),
    ({"slide_id": QUERY_SLIDE, "region": {"x": 9_000_000, "y": 0, "w": 10, "h": 10}}, 400, "covers no patch of slide"),
    ({"slide_id": QUERY_SLIDE, "region": {"x": -5, "y": 0, "w": 10, "h": 10}}, 422, "region.x: Input should be greater"),
    ({"slide_id": QUERY_SLIDE, "region": {"x": 0, "y": 0, "w": 0, "h": 10}}, 422, "region.w: Input should be greater"),
    ({"slide_id": QUERY_SLIDE, "region": {"x": 0, "y": 0, "w": 1e12, "h": 10}}, 422, "region.w"),
    ({"slide_id": QUERY_SLIDE, "region": {"x": "0; DROP", "y": 0, "w": 1, "h": 1}}, 422, "region.x"),
    ({"slide_id": QUERY_SLIDE, "region": {"x": 0, "y": 0, "w": 1, "h": 1, "path": "/etc"}}, 422, "region.path"),
    ({"slide_id": QUERY_SLIDE, "patch": 10**6}, 400, "--patch 1000000: slide SYN-S5-0001-01Z-00-DX1 has patches 0-"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "group_by": "patients"}, 422, "group_by"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "k": 0}, 422, "k: Input should be greater"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "where": "site = 'nowhere'"}, 400, "matches no slides"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "where": "1=1; DROP TABLE items"}, 400, "--where"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "where": "read_csv('/etc/passwd') IS NOT NULL"}, 400, "--where"),
    ({"slide_id": QUERY_SLIDE, "patch": 0, "where": "no_such_column = 1"}, 400, "no_such_column"),
])
def test_untrusted_input_is_refused_in_one_line(client, indexed, body, status, detail):
    before = client.get("/api/info").json()["items"]
    response = client.post("/api/search/regions", json=body)
    assert response.status_code == status, response.text
    text = response.json()["detail"]
    assert detail in text and "\n" not in text and "Traceback" not in text
    assert client.get("/api/info").json()["items"] == before  # the atlas is unchanged


def test_an_atlas_without_a_patch_index_says_how_to_build_one(run):
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServiceConfig(atlas=run / "atlas"))) as client:
        response = client.post("/api/search/regions", json={"slide_id": QUERY_SLIDE, "patch": 0})
    assert response.status_code == 409
    assert "has no patch index" in response.json()["detail"]
    assert "`threads-search index" in response.json()["detail"] and "--level patches`" in response.json()["detail"]


def test_with_a_token_the_region_route_needs_it(indexed):
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServiceConfig(atlas=indexed, token=TOKEN))) as client:
        body = {"slide_id": QUERY_SLIDE, "patch": 0, "k": 2}
        refused = client.post("/api/search/regions", json=body)
        assert refused.status_code == 401 and "bearer token" in refused.json()["detail"]
        allowed = client.post("/api/search/regions", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200 and len(allowed.json()["hits"]) == 2
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert 'kind="region"' in metrics
