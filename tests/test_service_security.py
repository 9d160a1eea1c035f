"""Who may call the service and what it exposes: loopback by default, a bearer token for any other
host, vendored assets only, and a new atlas generation picked up without a restart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from service_support import cli, demo_with_images, live_server

from threads_search.errors import InputError
from threads_search.service.app import create_app
from threads_search.service.config import ServiceConfig, is_loopback

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`")
TOKEN = "s3cret-token-of-some-length"
STATIC = Path(__file__).parents[1] / "threads_search" / "service" / "static"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return demo_with_images(tmp_path_factory)


def _client(atlas, **options):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ServiceConfig(atlas=atlas, **options)))


def test_any_host_but_loopback_needs_a_token(run):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("my-host")
    with pytest.raises(InputError, match="--host 0.0.0.0: serving beyond this machine needs --token"):
        ServiceConfig(atlas=run / "atlas", host="0.0.0.0").checked()
    with pytest.raises(InputError, match="at least 16 characters"):
        ServiceConfig(atlas=run / "atlas", host="0.0.0.0", token="short").checked()
    assert ServiceConfig(atlas=run / "atlas", host="0.0.0.0", token=TOKEN).checked().token == TOKEN
    outcome = cli("serve", run / "atlas", "--host", "0.0.0.0")
    assert outcome.exit_code == 2 and outcome.output.strip().splitlines() == [
        "error: --host 0.0.0.0: serving beyond this machine needs --token (a bearer token every request must send); "
        "or bind --host 127.0.0.1"]
    assert cli("serve", run / "no-atlas").exit_code == 2
    assert "--max-upload lots: expected a size" in cli("serve", run / "atlas", "--max-upload", "lots").output


def test_with_a_token_every_data_route_needs_it(run):
    with _client(run / "atlas", token=TOKEN) as client:
        for method, path, body in (("get", "/api/info", None), ("post", "/api/search", {"slide_id": "x"}),
                                   ("get", "/api/images/1/thumbnail.png", None), ("get", "/metrics", None),
                                   ("post", "/api/facets", {}), ("get", "/api/complete?q=SYN", None)):
            response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
            assert "missing or wrong bearer token" in response.json()["detail"]
        wrong = client.get("/api/info", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401
        good = client.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200 and good.json()["token_required"] is True
        # The page itself, its assets, the health probe and the API description load without it.
        for path in ("/", "/static/js/app.js", "/health", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path


def test_a_live_server_answers_on_loopback_over_http(run):
    app = create_app(ServiceConfig(atlas=run / "atlas", token=TOKEN))
    with live_server(app) as base:
        assert base.startswith("http://127.0.0.1:")
        request = urllib.request.Request(f"{base}/api/search", method="POST",
                                         data=json.dumps({"slide_id": "SYN-S5-0001-01Z-00-DX1", "k": 3}).encode(),
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
            headers = response.headers
        assert len(payload["hits"]) == 3
        assert headers["x-content-type-options"] == "nosniff" and "default-src 'self'" in headers["content-security-policy"]
        assert headers.get("server") is None  # no server banner
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/info", timeout=30)
        assert refused.value.code == 401


def test_static_assets_are_vendored_and_the_page_loads_nothing_from_elsewhere(run):
    page = (STATIC / "index.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith("/") for s in sources), sources
    for path in STATIC.rglob("*"):
        if path.suffix in (".js", ".css", ".html") and "vendor" not in path.parts:
            assert not re.search(r"https?://(?!schemas\.microsoft\.com)", path.read_text()), path
    assert (STATIC / "vendor" / "openseadragon" / "LICENSE.txt").is_file()
    assert '"6.1.1"' in (STATIC / "vendor" / "openseadragon" / "openseadragon.min.js").read_text()
    with _client(run / "atlas") as client:
        docs = client.get("/docs").text
        assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
        assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
        assert client.get("/static/../atlas.duckdb").status_code == 404


def test_a_new_generation_of_the_atlas_is_served_without_a_restart(run, tmp_path):
    """While the service runs, other processes ingest, embed and index into the same atlas (the server
    never holds the writer's database): the running service answers from the newly published state."""
    served = tmp_path / "served"
    shutil.copytree(run / "atlas", served)
    extra = run / "cohort" / "features" / "SYN-S5-0001-01Z-00-DX1.h5"
    renamed = tmp_path / "NEW-SLIDE-01.h5"
    shutil.copyfile(extra, renamed)
    with _client(served) as client:
        before = client.post("/api/search", json={"slide_id": "NEW-SLIDE-01", "k": 3})
        assert before.status_code == 400 and "unknown slide id 'NEW-SLIDE-01'" in before.json()["detail"]
        generation = client.get("/health").json()["generation"]
        model = client.get("/api/info").json()["default_model"]
        for args in (("ingest", "slides", served, renamed, "--quiet"), ("embed", served, "--model", model, "--quiet"),
                     ("index", served, "--model", model)):
            outcome = subprocess.run([sys.executable, "-c", "from threads_search.cli.app import main; main()",
                                      *map(str, args)], capture_output=True, text=True)
            assert outcome.returncode == 0, outcome.stderr
        after = client.post("/api/search", json={"slide_id": "NEW-SLIDE-01", "k": 3, "include_same_patient": True})
        assert after.status_code == 200, after.text
        # The new slide holds the same features as SYN-S5-0001-01Z-00-DX1, so that slide is its nearest neighbour.
        assert after.json()["hits"][0]["id"] == "SYN-S5-0001-01Z-00-DX1"
        assert after.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert client.get("/health").json()["generation"] == generation + 1
