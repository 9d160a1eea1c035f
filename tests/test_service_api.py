"""The JSON API through FastAPI's TestClient on a quick demo atlas: the same hits as the CLI for
every query kind, facets inside the search, and one-line 4xx refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from service_support import cli, demo_with_images

from threads_search.service.app import create_app
from threads_search.service.config import ServiceConfig

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`")
QUERY_SLIDE = "SYN-S5-0001-01Z-00-DX1"
SERVICE_FIELDS = ("vid", "images")
MAX_UPLOAD = 4 * 2**20


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return demo_with_images(tmp_path_factory)


@pytest.fixture(scope="module")
def client(run):
    from fastapi.testclient import TestClient

    config = ServiceConfig(atlas=run / "atlas", reports_dir=run / "report", max_upload_bytes=MAX_UPLOAD)
    with TestClient(create_app(config)) as test_client:
        yield test_client


def cli_hits(run, *args) -> dict:
    outcome = cli("search", run / "atlas", *args, "--format", "json")
    assert outcome.exit_code == 0, outcome.output
    return json.loads(outcome.stdout)


def api_hits(payload: dict) -> list[dict]:
    return [{k: v for k, v in hit.items() if k not in SERVICE_FIELDS} for hit in payload["hits"]]


def assert_one_line_refusal(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.strip() == detail
    for fragment in fragments:
        assert fragment in detail, detail


def _upload(client, path, kind: str, options: dict | None = None, sample: str | None = None, name: str | None = None):
    data = {"kind": kind, "options": json.dumps(options or {})}
    if sample:
        data["sample"] = sample
    with open(path, "rb") as handle:
        return client.post("/api/search/upload", data=data, files={"file": (name or path.name, handle)})


# --- the same hits as the CLI, query kind by query kind -------------------------------------


@pytest.mark.parametrize("body, arguments", [
    ({"slide_id": QUERY_SLIDE, "k": 7}, ["--slide-id", QUERY_SLIDE, "-k", "7"]),
    ({"slide_id": QUERY_SLIDE, "k": 5, "where": "cohort = 'train'", "include_same_patient": True},
     ["--slide-id", QUERY_SLIDE, "-k", "5", "--where", "cohort = 'train'", "--include-same-patient"]),
    ({"slide_id": QUERY_SLIDE, "k": 12, "one_per_patient": True, "include_same_patient": True},
     ["--slide-id", QUERY_SLIDE, "-k", "12", "--one-per-patient", "--include-same-patient"]),
    ({"sample_id": "SYN-S5-0002-01A", "modality": "expression", "k": 6},
     ["--sample-id", "SYN-S5-0002-01A", "--modality", "expression", "-k", "6"]),
    ({"sample_id": "SYN-S5-0002-01A", "modality": "mutations", "k": 4, "target": "expression"},
     ["--sample-id", "SYN-S5-0002-01A", "--modality", "mutations", "-k", "4", "--target", "expression"]),
    ({"slide_id": QUERY_SLIDE, "k": 4, "target": "mutations"}, ["--slide-id", QUERY_SLIDE, "-k", "4", "--target", "mutations"]),
    ({"prototype": "subtype-expression:clear_cell", "k": 5}, ["--prototype", "subtype-expression:clear_cell", "-k", "5"]),
], ids=["slide", "slide-where-same-patient", "slide-one-per-patient", "sample", "sample-to-expression",
        "slide-to-mutations", "prototype"])
def test_atlas_queries_give_the_cli_hits(run, client, body, arguments):
    response = client.post("/api/search", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    expected = cli_hits(run, *arguments)
    assert api_hits(payload) == expected["hits"]
    assert len(payload["hits"]) == body["k"]
    assert payload["majority"] == expected["majority"] and payload["notes"] == expected["notes"]
    assert {k: v for k, v in payload["query"].items() if k != "images"} == expected["query"]


def test_an_uploaded_feature_file_gives_the_cli_hits(run, client):
    features = run / "cohort" / "features" / f"{QUERY_SLIDE}.h5"
    response = _upload(client, features, "features", {"k": 6, "where": "site <> 'site5'"})
    assert response.status_code == 200, response.text
    payload = response.json()
    expected = cli_hits(run, "--features", features, "-k", "6", "--where", "site <> 'site5'")
    assert api_hits(payload) == expected["hits"]
    assert payload["query"]["file"] == features.name and payload["query"]["id"] == QUERY_SLIDE
    assert all(h["site"] != "site5" for h in payload["hits"])


def test_an_uploaded_expression_row_gives_the_cli_hits(run, client, tmp_path):
    with open(run / "cohort" / "expression.csv") as handle:
        rows = list(csv.reader(handle))
    two_rows = tmp_path / "two.csv"
    with open(two_rows, "w", newline="") as handle:
        csv.writer(handle).writerows(rows[:3])
    sample = rows[2][0]
    response = _upload(client, two_rows, "expression", {"k": 5}, sample=sample)
    assert response.status_code == 200, response.text
    expected = cli_hits(run, "--expression", two_rows, "--sample", sample, "-k", "5")
    assert api_hits(response.json()) == expected["hits"]
    assert response.json()["query"]["id"] == sample
    # Without the row the refusal is the CLI's, naming the samples.
    assert_one_line_refusal(_upload(client, two_rows, "expression", {"k": 5}), 400, "2 samples", rows[1][0], "choose one")


def test_one_hit_per_patient_is_exact(run, client):
    """Each patient's best slide, in score order, from every embedded slide by numpy: the same k hits."""
    from threads_search.atlas.embeddings import load_embeddings
    from threads_search.atlas.store import open_atlas

    response = client.post("/api/search", json={"slide_id": QUERY_SLIDE, "k": 15, "one_per_patient": True})
    hits = response.json()["hits"]
    model_id = response.json()["query"]["model_id"]
    with open_atlas(run / "atlas", read_only=True) as atlas:
        rows = atlas.sql("SELECT vid, item_id, patient_id FROM items WHERE modality = 'slides'").fetchall()
        vids, vectors = load_embeddings(atlas, model_id, "slides")
    names = {vid: (item, patient) for vid, item, patient in rows}
    query_vid = next(v for v, (item, _) in names.items() if item == QUERY_SLIDE)
    query_patient = names[query_vid][1]
    scores = vectors @ vectors[list(vids).index(query_vid)]
    best, seen = [], {query_patient}  # the query's own patient is excluded by default
    for index in np.lexsort((vids, -scores)):
        item, patient = names[int(vids[index])]
        if patient not in seen:
            seen.add(patient)
            best.append(item)
    assert [h["id"] for h in hits] == best[:15]
    assert len({h["patient_id"] for h in hits}) == 15
    # A patient with two slides among the plain top 15 makes the dedupe matter here.
    plain = client.post("/api/search", json={"slide_id": QUERY_SLIDE, "k": 15}).json()["hits"]
    assert len({h["patient_id"] for h in plain}) < 15 and [h["id"] for h in plain] != [h["id"] for h in hits]


# --- facets ----------------------------------------------------------------------------------


def test_facets_filter_inside_the_search_like_the_equivalent_where(run, client):
    body = {"slide_id": QUERY_SLIDE, "k": 8, "facets": {"site": ["site4", "site1"], "stage": ["I"]}}
    payload = client.post("/api/search", json=body).json()
    expected = cli_hits(run, "--slide-id", QUERY_SLIDE, "-k", "8", "--where", "site IN ('site4', 'site1') AND stage = 'I'")
    assert api_hits(payload) == expected["hits"] and len(payload["hits"]) == 8
    assert payload["query"]["facets"] == body["facets"]
    # Facets and --where combine with AND.
    both = client.post("/api/search", json={**body, "where": "sex = 'female'"}).json()["hits"]
    assert both and all(h["sex"] == "female" and h["site"] in ("site4", "site1") and h["stage"] == "I" for h in both)


def test_facet_counts_under_a_filter_match_the_metadata_table(run, client):
    with open(run / "cohort" / "slides.csv") as handle:
        slides = list(csv.DictReader(handle))
    response = client.post("/api/facets", json={"where": "cohort = 'train'", "facets": {"site": ["site1"]},
                                                "columns": ["site", "subtype"]})
    counts = {c: {e["value"]: e["count"] for e in entries} for c, entries in response.json()["facets"].items()}
    train = [s for s in slides if s["cohort"] == "train"]
    # A column's own selection does not narrow its counts (several values can be ticked); the others' do.
    assert counts["site"] == {site: sum(s["site"] == site for s in train) for site in {s["site"] for s in train}}
    site1 = [s for s in train if s["site"] == "site1"]
    assert counts["subtype"] == {t: sum(s["subtype"] == t for s in site1) for t in {s["subtype"] for s in site1}}
    default = client.post("/api/facets", json={}).json()["facets"]
    assert "subtype" in default and "age" not in default  # a many-valued numeric column is no facet


def test_votes_show_every_class_with_its_share_of_the_database(run, client):
    with open(run / "cohort" / "slides.csv") as handle:
        subtypes = [row["subtype"] for row in csv.DictReader(handle)]
    payload = client.post("/api/search", json={"slide_id": QUERY_SLIDE, "k": 9}).json()
    votes = payload["votes"]
    assert votes["label"] == "subtype" and votes["n_hits"] == 9
    by_class = {entry["value"]: entry for entry in votes["classes"]}
    assert set(by_class) == set(subtypes)  # rare classes listed even with no vote
    for value, entry in by_class.items():
        assert entry["votes"] == sum(h["subtype"] == value for h in payload["hits"])
        assert entry["database_share"] == pytest.approx(subtypes.count(value) / len(subtypes), abs=1e-6)


# --- refusals: one line each, 4xx ----------------------------------------------------------


@pytest.mark.parametrize("body, status, fragments", [
    ({"slide_id": "no-such-slide"}, 400, ["unknown slide id 'no-such-slide'"]),
    ({"sample_id": "no-such-sample"}, 400, ["unknown sample id 'no-such-sample'"]),
    ({"slide_id": QUERY_SLIDE, "where": "no_such_column = 1"}, 400, ["no_such_column", "columns:", "subtype"]),
    ({"slide_id": QUERY_SLIDE, "where": "cohort = "}, 400, ["--where"]),
    ({"slide_id": QUERY_SLIDE, "facets": {"no_such": ["x"]}}, 400, ["facet 'no_such': no such metadata column"]),
    ({"slide_id": QUERY_SLIDE, "facets": {"site": ["site9"]}}, 400, ["matches no slides"]),
    ({"slide_id": QUERY_SLIDE, "k": 0}, 422, ["k: Input should be greater than or equal to 1"]),
    ({"slide_id": QUERY_SLIDE, "target": "images"}, 422, ["target"]),
    ({"slide_id": QUERY_SLIDE, "sql": "DROP TABLE items"}, 422, ["sql: Extra inputs are not permitted"]),
    ({}, 400, ["give exactly one of slide_id, sample_id, prototype; got none"]),
    ({"slide_id": QUERY_SLIDE, "prototype": "subtype-expression:clear_cell"}, 400, ["got slide_id, prototype"]),
    ({"prototype": "subtype-expression:no_class"}, 400, ["has no class 'no_class'"]),
    ({"slide_id": QUERY_SLIDE, "model_id": "ffff"}, 409, ["--model ffff"]),
])
def test_bad_requests_get_a_one_line_reason(client, body, status, fragments):
    assert_one_line_refusal(client.post("/api/search", json=body), status, *fragments)


def test_uploads_are_refused_like_ingest_refuses_files(client, tmp_path, rng):
    from conftest import write_trident

    wrong_dims = write_trident(tmp_path / "wrong.h5", rng.normal(size=(20, 384)).astype(np.float16))
    assert_one_line_refusal(_upload(client, wrong_dims, "features"), 422, "384")
    with_nan = rng.normal(size=(20, 768)).astype(np.float32)
    with_nan[7, 3] = np.nan
    assert_one_line_refusal(_upload(client, write_trident(tmp_path / "nan.h5", with_nan), "features"), 400,
                            "row 7 holds NaN or Inf")
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert_one_line_refusal(_upload(client, corrupt, "features"), 400, "not a readable HDF5 file")
    assert_one_line_refusal(_upload(client, corrupt, "features", name="../../etc/passwd"), 400,
                            "expected a features file (.h5, .hdf5, .pt)")
    assert_one_line_refusal(_upload(client, corrupt, "pickle"), 400, "kind 'pickle' is not one of features, expression")
    assert_one_line_refusal(_upload(client, wrong_dims, "features", {"k": -1}), 400, "upload options: k:")
    negative = tmp_path / "negative.csv"
    negative.write_text("sample_id,TP53,KRAS\nS1,1.0,x\n")
    assert_one_line_refusal(_upload(client, negative, "expression"), 400, "'x' is not a number")


def test_an_oversized_upload_is_refused_before_it_is_read(client, tmp_path):
    big = tmp_path / "big.h5"
    big.write_bytes(b"\0" * (MAX_UPLOAD + 2**17))
    assert_one_line_refusal(_upload(client, big, "features"), 413, f"limit of {MAX_UPLOAD:,} bytes")
    # A client that does not declare the size is refused too (chunked transfer).
    response = client.post("/api/search/upload", content=iter([b"--x\r\n", b"data"]),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert_one_line_refusal(response, 411, "Content-Length")


# --- what the atlas holds --------------------------------------------------------------------


def test_info_items_completion_and_reports(run, client):
    info = client.get("/api/info").json()
    with open(run / "cohort" / "slides.csv") as handle:
        slides = list(csv.DictReader(handle))
    assert info["items"]["slides"] == len(slides) and info["label"] == "subtype"
    assert info["slides_with_wsi"] == sum(not s["slide_id"].startswith("SYN-S6-") for s in slides)
    assert info["prototypes"][0]["name"] == "subtype-expression" and "clear_cell" in info["prototypes"][0]["classes"]
    found = client.get("/api/complete", params={"q": "SYN-S5-000"}).json()["ids"]
    assert found == sorted(s["slide_id"] for s in slides if s["slide_id"].startswith("SYN-S5-000"))[:20]
    assert client.get("/api/complete", params={"q": "0001-01Z-00-DX1"}).json()["ids"][0].endswith("0001-01Z-00-DX1")
    item = client.get("/api/items", params={"id": QUERY_SLIDE}).json()
    expected = next(s for s in slides if s["slide_id"] == QUERY_SLIDE)
    assert item["patient_id"] == expected["patient_id"] and item["metadata"]["subtype"] == expected["subtype"]
    assert_one_line_refusal(client.get("/api/items", params={"id": "nope"}), 404, "unknown slides id 'nope'")
    listed = client.get("/api/reports").json()["reports"]
    assert "slide_to_slide.json" in listed and "demo.json" in listed
    stored = client.get("/api/reports/slide_to_slide.json").json()
    assert stored == json.loads((run / "report" / "slide_to_slide.json").read_text())
    assert client.get("/api/reports/..%2Fatlas%2Fatlas.duckdb").status_code == 404
    assert_one_line_refusal(client.get("/api/reports/demo"), 404, "no report 'demo'")


def test_classify_matches_the_cli(run, client):
    response = client.post("/api/classify", json={"prototypes": "subtype-expression", "where": "cohort = 'heldout'"})
    outcome = cli("classify", run / "atlas", "--prototypes", "subtype-expression", "--where", "cohort = 'heldout'",
                  "--format", "json")
    expected = json.loads(outcome.stdout)
    payload = response.json()
    assert payload["balanced_accuracy"] == expected["balanced_accuracy"]
    assert [s["predicted"] for s in payload["slides"]] == [s["predicted"] for s in expected["slides"]]


def test_health_and_metrics_count_what_was_served(client):
    client.post("/api/search", json={"slide_id": QUERY_SLIDE, "k": 3})
    client.post("/api/search", json={"slide_id": "no-such-slide"})
    assert client.get("/health").json()["status"] == "ok"
    text = client.get("/metrics").text
    searches = {line.split("status=")[1].split('"')[1]: int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith('threads_search_requests_total{route="/api/search"')}
    assert searches["200"] >= 1 and searches["400"] >= 1
    count = next(int(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                 if l.startswith('threads_search_request_seconds_count{route="/api/search"}'))
    assert count == sum(searches.values())
    assert 'threads_search_queries_total{kind="slide_id",target="slides"}' in text
    assert QUERY_SLIDE not in text  # labels are route templates and query kinds, never ids


def test_the_api_leaves_the_atlas_unchanged_and_offers_no_write_verbs(run, client):
    database = run / "atlas" / "atlas.duckdb"
    before = (database.stat().st_mtime_ns, database.stat().st_size)
    client.post("/api/search", json={"slide_id": QUERY_SLIDE, "k": 5, "facets": {"site": ["site4"]}})
    client.post("/api/facets", json={"facets": {"site": ["site4"]}})
    assert (database.stat().st_mtime_ns, database.stat().st_size) == before
    methods = {m for path in client.get("/openapi.json").json()["paths"].values() for m in path}
    assert methods <= {"get", "post"}
    assert "access-control-allow-origin" not in client.get("/api/info", headers={"Origin": "http://evil.example"}).headers
