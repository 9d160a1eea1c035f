"""The review page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright), on a
live server bound to 127.0.0.1: queries, thumbnails, facets, one hit per patient, hide, export,
search-from-result, the side-by-side viewer with DeepZoom tiles and the attention overlay.
Assertions are on the DOM; screenshots go to the test's tmp folder (printed with -s)."""

from __future__ import annotations

import csv
import json
import re
import urllib.request
from pathlib import Path

import pytest
from service_support import demo_with_images, live_server, real_slide_atlas

from threads_search.service.app import create_app
from threads_search.service.config import ServiceConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
QUERY_SLIDE = "SYN-S5-0001-01Z-00-DX1"
TOKEN = "browser-test-token-0123456789"
WAIT_MS = 20000
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="browser tests need Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium); CI installs it"),
    pytest.mark.filterwarnings("ignore:Using `httpx`"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh Chromium profile per module; never a downloaded browser."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        yield context
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = demo_with_images(tmp_path_factory)
    with live_server(create_app(ServiceConfig(atlas=run / "atlas", reports_dir=run / "report"))) as base:
        yield run, base


@pytest.fixture
def page(browser):
    """A tab that fails its test on any script error or CSP refusal; a test that provokes a refusal
    lists the HTTP statuses it expects in `page.expected_statuses`."""
    page = browser.new_page()
    errors: list[str] = []
    page.expected_statuses = set()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    page.close()
    refused = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
    unexpected = [e for e in errors if not (refused.match(e) and int(refused.match(e).group(1)) in page.expected_statuses)]
    assert not unexpected, unexpected  # no script error and no content-security-policy refusal


def api(base: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def until(page, expression: str, timeout: int = WAIT_MS) -> None:
    """Wait until a JavaScript expression holds (as a function: the page's CSP refuses string evaluation)."""
    page.wait_for_function(f"() => ({expression})", timeout=timeout)


def ready(page, base: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#status:text-is('ready')")


def search(page, slide_id: str, k: int, expected_hits: int | None = None) -> None:
    page.select_option("#query-kind", "slide_id")
    page.fill("#query-id", slide_id)
    page.fill("#k", str(k))
    page.click("#search-button")
    wait_for_hits(page, expected_hits if expected_hits is not None else k)


def wait_for_hits(page, n: int) -> None:
    until(page, f"document.querySelectorAll('#results .hit').length === {n} "
                           f"&& /hits$/.test(document.querySelector('#status').textContent)")


def grid_ids(page) -> list[str]:
    return page.eval_on_selector_all("#results .hit", "cards => cards.map(c => c.dataset.id)")


def meta_of(page, column: str) -> list[str]:
    script = f"""cards => cards.map(c => [...c.querySelectorAll('.meta')]
                 .map(m => m.textContent).find(t => t.startsWith('{column} ')))"""
    return [text.split(" ", 1)[1] for text in page.eval_on_selector_all("#results .hit", script)]


def test_a_slide_query_with_facets_one_per_patient_hide_export_and_search_from_result(demo, page, shots):
    run, base = demo
    ready(page, base)
    assert "67 slides" in page.text_content("#atlas-name")
    # Completion of slide ids.
    page.fill("#query-id", "SYN-S5-00")
    until(page, "document.querySelectorAll('#id-options option').length > 0")
    options = page.eval_on_selector_all("#id-options option", "o => o.map(x => x.value)")
    assert options and all(o.startswith("SYN-S5-00") for o in options)

    search(page, QUERY_SLIDE, 6)
    expected = api(base, "/api/search", {"slide_id": QUERY_SLIDE, "k": 6})
    assert grid_ids(page) == [h["id"] for h in expected["hits"]]
    with_picture = [h["id"] for h in expected["hits"] if h["images"]["thumbnail"]]
    until(page, f"[...document.querySelectorAll('#results img.thumb')].filter(i => i.complete && "
                           f"i.naturalWidth > 0).length === {len(with_picture)}")
    assert page.eval_on_selector_all("#results .hit", "cs => cs.filter(c => c.querySelector('img.thumb')).map(c => c.dataset.id)") \
        == with_picture
    assert page.locator("#results .placeholder:not(.loading)").count() == 6 - len(with_picture)
    assert page.locator("#results .placeholder.loading").count() == 0
    votes = page.eval_on_selector_all("#vote-table tbody tr", "rows => rows.map(r => [r.dataset.value, +r.querySelector('.votes').textContent])")
    assert sum(n for _, n in votes) == 6 and {v for v, _ in votes} == {c["value"] for c in expected["votes"]["classes"]}
    assert page.text_content("#majority") == expected["majority"]
    page.screenshot(path=str(shots / "1-grid.png"), full_page=True)

    # A facet goes into the search: every hit is from site4, and the other facets' counts follow.
    page.check("#facets [data-facet-column='site'][data-facet-value='site4']")
    until(page, "document.querySelector('#query-text').textContent.includes('site ∈ {site4}')")
    wait_for_hits(page, 6)
    assert meta_of(page, "site") == ["site4"] * 6
    assert grid_ids(page) == [h["id"] for h in api(base, "/api/search", {"slide_id": QUERY_SLIDE, "k": 6,
                                                                         "facets": {"site": ["site4"]}})["hits"]]
    with open(run / "cohort" / "slides.csv") as handle:
        site4 = [row for row in csv.DictReader(handle) if row["site"] == "site4"]
    until(page, f"[...document.querySelectorAll(\"#facets fieldset[data-column='subtype'] .count\")]"
                           f".reduce((s, c) => s + +c.textContent.slice(1, -1), 0) === {len(site4)}")

    # One hit per patient.
    page.check("#one-per-patient")
    until(page, "document.querySelector('#query-text').textContent.includes('one hit per patient')")
    wait_for_hits(page, 6)
    patients = page.eval_on_selector_all("#results .patient", "ps => ps.map(p => p.textContent)")
    assert len(set(patients)) == 6
    assert grid_ids(page) == [h["id"] for h in api(base, "/api/search", {
        "slide_id": QUERY_SLIDE, "k": 6, "facets": {"site": ["site4"]}, "one_per_patient": True})["hits"]]
    until(page, "[...document.querySelectorAll('#results img.thumb')].filter(i => !i.hidden).length === 6")
    page.screenshot(path=str(shots / "2-facet-one-per-patient.png"), full_page=True)

    # Hide one hit; the export leaves it out.
    shown = grid_ids(page)
    page.click(f"#results .hit[data-id='{shown[1]}'] .hide-hit")
    until(page, "document.querySelectorAll('#results .hit').length === 5")
    assert page.text_content("#hit-count") == "5 of 6 hits shown" and shown[1] not in grid_ids(page)
    with page.expect_download() as download:
        page.click("#export-csv")
    with open(download.value.path()) as handle:
        exported = list(csv.DictReader(handle))
    assert [row["id"] for row in exported] == grid_ids(page)
    assert {"rank", "id", "patient_id", "score", "subtype", "site"} <= set(exported[0]) and "vid" not in exported[0]
    assert all(row["site"] == "site4" for row in exported)
    with page.expect_download() as download:
        page.click("#export-json")
    assert [h["id"] for h in json.loads(Path(download.value.path()).read_text())["hits"]] == grid_ids(page)

    # Search from a result: it becomes the query.
    first = grid_ids(page)[0]
    page.click(f"#results .hit[data-id='{first}'] .search-from")
    until(page, f"document.querySelector('#query-text').textContent.startsWith('query: slide {first}')")
    wait_for_hits(page, 6)
    assert page.input_value("#query-id") == first and first not in grid_ids(page)


def test_the_side_by_side_viewer_loads_tiles_and_keeps_both_slides_at_one_scale(demo, page, shots):
    _, base = demo
    ready(page, base)
    page.check("#facets [data-facet-column='site'][data-facet-value='site4']")
    search(page, "SYN-S4-0003-01Z-00-DX1", 4)
    page.click("#results .hit >> nth=0 >> .view-hit")
    page.wait_for_selector("#viewer[data-ready='true']")
    for pane in ("#pane-query", "#pane-hit"):
        until(page, f"+document.querySelector('{pane}').dataset.tilesLoaded > 0")
        assert re.fullmatch(r"\d+ (µm|mm)", page.text_content(f"{pane} .scale-label"))
    first_hit = grid_ids(page)[0]
    assert page.text_content("#pane-hit .pane-title").startswith(f"#1 {first_hit}")

    def scales() -> tuple[float, float]:
        return tuple(float(page.get_attribute(p, "data-microns-per-pixel")) for p in ("#pane-query", "#pane-hit"))

    until(page, "document.querySelector('#pane-hit').dataset.micronsPerPixel")
    query_scale, hit_scale = scales()
    assert query_scale == pytest.approx(hit_scale, rel=0.01)
    page.evaluate("reviewPage.viewers.hit.osd.viewport.zoomBy(4); reviewPage.viewers.hit.osd.viewport.applyConstraints(true)")
    until(page, f"+document.querySelector('#pane-hit').dataset.micronsPerPixel < {hit_scale / 2}")
    page.wait_for_timeout(600)  # the animation settles
    query_scale, hit_scale = scales()
    assert query_scale == pytest.approx(hit_scale, rel=0.02)  # synchronised at equal microns per screen pixel
    # The demo's generated features do not lie on these stand-in pictures: no overlay, and the page says why.
    page.check("#attention-toggle")
    until(page, "document.querySelector('#pane-hit .pane-note').textContent.includes('beyond')")
    assert page.get_attribute("#pane-hit", "data-attention-patches") is None
    page.screenshot(path=str(shots / "3-viewer-demo.png"), full_page=True)
    page.click("#viewer-close")
    assert page.is_hidden("#viewer")


def test_the_attention_overlay_on_a_real_slide_has_a_numeric_scale(tmp_path_factory, page, shots):
    atlas = real_slide_atlas(tmp_path_factory)
    with live_server(create_app(ServiceConfig(atlas=atlas))) as base:
        ready(page, base)
        page.check("#include-same-patient")
        search(page, "cmu_small_region", 10, expected_hits=2)
        page.click("#results .hit >> nth=0 >> .view-hit")
        page.wait_for_selector("#viewer[data-ready='true']")
        page.check("#attention-toggle")
        query_vid = api(base, "/api/items?id=cmu_small_region")["vid"]
        data = api(base, f"/api/images/{query_vid}/attention.json")
        until(page, f"document.querySelector('#pane-query').dataset.attentionPatches === '{data['n_patches']}'")
        assert page.evaluate("reviewPage.viewers.query.osd.world.getItemCount()") == 2  # the slide and its overlay
        # Each pane has its own numeric scale: the slides' patch counts and extremes differ.
        ticks = page.eval_on_selector_all("#pane-query .legend-ticks .tick", "ts => ts.map(t => t.textContent)")
        assert ticks == [t["label"] for t in data["scale"]["ticks"]] and "1x" in ticks
        title = page.text_content("#pane-query .legend-title")
        assert f"1x = 1/{data['n_patches']}" in title and data["model_id"] in title
        hit_vid = api(base, "/api/items?id=" + grid_ids(page)[0])["vid"]
        hit_patches = api(base, f"/api/images/{hit_vid}/attention.json")["n_patches"]
        until(page, f"document.querySelector('#pane-hit').dataset.attentionPatches === '{hit_patches}'")
        assert f"1x = 1/{hit_patches}" in page.text_content("#pane-hit .legend-title")
        until(page, "+document.querySelector('#pane-query').dataset.tilesLoaded > 0")
        page.wait_for_timeout(500)
        page.screenshot(path=str(shots / "4-attention-real-slide.png"), full_page=True)
        page.uncheck("#attention-toggle")
        until(page, "reviewPage.viewers.query.osd.world.getItemCount() === 1")
        assert page.is_hidden("#pane-query .legend") and page.is_hidden("#pane-hit .legend")


def test_an_uploaded_feature_file_is_searched_from_the_page(demo, page):
    run, base = demo
    ready(page, base)
    page.select_option("#query-kind", "features")
    assert page.is_visible("#query-file") and page.is_hidden("#query-id")
    features = run / "cohort" / "features" / f"{QUERY_SLIDE}.h5"
    page.set_input_files("#query-file", str(features))
    page.fill("#k", "5")
    page.click("#search-button")
    wait_for_hits(page, 5)
    assert page.text_content("#query-text").startswith(f"query: features {QUERY_SLIDE}")
    # The file holds that slide's features but is no atlas item: the slide itself comes first (score 1),
    # then the slide query's hits with nobody excluded.
    expected = api(base, "/api/search", {"slide_id": QUERY_SLIDE, "k": 4, "include_same_patient": True})
    assert grid_ids(page) == [QUERY_SLIDE] + [h["id"] for h in expected["hits"]]
    assert page.text_content("#results .hit >> nth=0 >> .score") == "1.0000"
    page.expected_statuses.add(400)
    page.select_option("#query-kind", "slide_id")
    page.fill("#query-id", "no-such-slide")
    page.click("#search-button")
    until(page, "!document.querySelector('#message').hidden")
    assert "unknown slide id 'no-such-slide'" in page.text_content("#message")


def test_with_a_token_the_page_asks_for_it_once(demo, page, browser):
    run, _ = demo
    page.expected_statuses.add(401)  # the first call, before the page has the token
    with live_server(create_app(ServiceConfig(atlas=run / "atlas", token=TOKEN))) as base:
        page.goto(base + "/")
        page.wait_for_selector("#token-form:not([hidden])")
        assert page.text_content("#status") == "token required"
        page.fill("#token-input", TOKEN)
        page.click("#token-form button")
        page.wait_for_selector("#status:text-is('ready')")
        page.check("#facets [data-facet-column='site'][data-facet-value='site4']")
        search(page, "SYN-S4-0003-01Z-00-DX1", 3)
        until(page, "[...document.querySelectorAll('#results img.thumb')].filter(i => i.naturalWidth > 0)"
                               ".length === 3")  # thumbnails fetched with the token
        # In a new tab (its own session storage), a token in the address is taken and removed from it.
        other = browser.new_page()
        try:
            other.goto(f"{base}/#token={TOKEN}")
            other.wait_for_selector("#status:text-is('ready')", timeout=WAIT_MS)
            assert "token" not in other.url and other.is_hidden("#token-form")
        finally:
            other.close()


def test_the_api_docs_page_renders_from_vendored_files(demo, page):
    _, base = demo
    page.goto(base + "/docs")
    page.wait_for_selector(".swagger-ui .title")
    assert "threads-search" in page.text_content(".swagger-ui .title")
    assert page.locator(".opblock-summary-path[data-path='/api/search']").count() == 1


@pytest.fixture(scope="module")
def region_server(tmp_path_factory):
    """The real-slide atlas (features, coordinates and pictures belong together) with its patch index."""
    import shutil

    from service_support import cli

    atlas = tmp_path_factory.mktemp("region_browser") / "atlas"
    shutil.copytree(real_slide_atlas(tmp_path_factory), atlas)
    outcome = cli("index", atlas, "--level", "patches", "--quiet")
    assert outcome.exit_code == 0, outcome.output
    with live_server(create_app(ServiceConfig(atlas=atlas))) as base:
        yield base


def _page_point(page, pane: str, x: float, y: float) -> tuple[float, float]:
    """Where the level-0 pixel (x, y) of a pane's slide is on the page."""
    return tuple(page.evaluate(f"""() => {{
        const osd = reviewPage.viewers.{pane}.osd;
        const p = osd.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point({x}, {y}));
        const r = osd.element.getBoundingClientRect();
        return [r.left + p.x, r.top + p.y];
    }}"""))


def _settled(page) -> None:
    """Wait until the page stops scrolling (the viewer scrolls itself into view smoothly)."""
    previous = None
    for _ in range(50):
        position = page.evaluate("() => [window.scrollX, window.scrollY]")
        if position == previous:
            return
        previous = position
        page.wait_for_timeout(150)


def _rects(page, selector: str) -> list[dict]:
    return page.eval_on_selector_all(selector, """nodes => nodes.map(n => {
        const r = n.getBoundingClientRect();
        const frame = n.closest('.thumb-frame');  // on a thumbnail: also the share of the picture it starts at
        const image = frame ? frame.querySelector('img.thumb').getBoundingClientRect() : null;
        return {x: +n.dataset.x, y: +n.dataset.y, width: +n.dataset.width, height: +n.dataset.height,
                left: r.left, top: r.top, right: r.right, bottom: r.bottom,
                fx: image ? (r.left - image.left) / image.width : null, fy: image ? (r.top - image.top) / image.height : null};
    })""")


def _boxes(entries: list[dict]) -> list[tuple]:
    return [(e["x"], e["y"], e["width"], e["height"]) for e in entries]


def test_a_box_drawn_on_the_query_slide_outlines_the_matching_regions(region_server, page, shots):
    base = region_server
    ready(page, base)
    search(page, "pink", 10, expected_hits=2)
    page.click("#region-start")
    page.wait_for_selector("#viewer[data-ready='true']")
    assert page.is_visible("#region-bar") and page.get_attribute("#region-draw", "aria-pressed") == "true"
    assert "draw a box on the query slide" in page.text_content("#pane-hit")
    until(page, "+document.querySelector('#pane-query').dataset.tilesLoaded > 0")
    _settled(page)
    # Drag a box over the middle of the slide (level-0 600,400 to 1400,1100).
    start, end = _page_point(page, "query", 600, 400), _page_point(page, "query", 1400, 1100)
    with page.expect_response("**/api/search/regions") as answered:
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=8)
        page.mouse.up()
    response = answered.value
    payload = response.json()
    sent = json.loads(response.request.post_data)
    assert sent["slide_id"] == "pink" and sent["group_by"] == "slides"
    drawn = sent["region"]
    assert all(abs(a - b) <= 3 for a, b in zip((drawn["x"], drawn["y"], drawn["x"] + drawn["w"], drawn["y"] + drawn["h"]),
                                                (600, 400, 1400, 1100))), drawn
    assert [int(page.input_value(f"#region-{c}")) for c in "xywh"] == [drawn[c] for c in "xywh"]
    wait_for_hits(page, len(payload["hits"]))
    hits = payload["hits"]
    assert hits and grid_ids(page) == [h["id"] for h in hits] and "pink" not in grid_ids(page)
    assert page.text_content("#query-text").startswith("query: region pink")
    # On each thumbnail, one outline per matching region, placed at the region's share of the slide.
    until(page, f"document.querySelectorAll('#results .thumb-regions[data-outlined]').length === {len(hits)}")
    for index, hit in enumerate(hits):
        card = f"#results .hit >> nth={index}"
        outlines = _rects(page, f"{card} >> .thumb-region")
        assert _boxes(outlines) == _boxes(hit["regions"])
        size = api(base, f"/api/images/{hit['vid']}")["wsi"]
        for outline in outlines:
            assert outline["fx"] * size["width"] == pytest.approx(outline["x"], abs=size["width"] / 100)
            assert outline["fy"] * size["height"] == pytest.approx(outline["y"], abs=size["height"] / 100)
    # The best hit opens beside the query with its regions outlined on its own slide.
    page.wait_for_selector("#viewer[data-ready='true']")
    assert page.text_content("#pane-hit .pane-title").startswith(f"#1 {hits[0]['id']}")
    until(page, f"document.querySelector('#pane-hit').dataset.regionBoxes === '{len(hits[0]['regions'])}'")
    page.wait_for_timeout(600)  # the panes settle on their regions
    _settled(page)
    hit_outlines = _rects(page, "#pane-hit .region-box.hit-box")
    assert _boxes(hit_outlines) == _boxes(hits[0]["regions"])
    for outline in hit_outlines:
        left, top = _page_point(page, "hit", outline["x"], outline["y"])
        right, bottom = _page_point(page, "hit", outline["x"] + outline["width"], outline["y"] + outline["height"])
        assert (outline["left"], outline["top"], outline["right"], outline["bottom"]) == pytest.approx((left, top, right, bottom), abs=1.5)
    query_box = _rects(page, "#pane-query .region-box.query-box")
    assert _boxes(query_box) == [tuple(payload["query"]["region"])]
    assert len(_rects(page, "#pane-query .region-box.query-patch")) == payload["query"]["patches"]
    until(page, "+document.querySelector('#pane-hit').dataset.tilesLoaded > 0")
    page.wait_for_timeout(400)
    page.screenshot(path=str(shots / "5-region-search.png"), full_page=True)
    # Keyboard: Escape leaves the tool; a typed box, regions instead of slides, searched with Enter.
    page.keyboard.press("Escape")
    assert page.get_attribute("#region-draw", "aria-pressed") == "false"
    page.select_option("#region-group", "regions")
    page.fill("#k", "4")
    for name, value in zip("xywh", (900, 600, 400, 400)):
        page.fill(f"#region-{name}", str(value))
    with page.expect_response("**/api/search/regions") as answered:
        page.press("#region-h", "Enter")
    regions = answered.value.json()
    assert json.loads(answered.value.request.post_data)["region"] == {"x": 900, "y": 600, "w": 400, "h": 400}
    wait_for_hits(page, 4)
    assert len(regions["hits"]) == 4 and all(h.get("regions") is None for h in regions["hits"])
    until(page, "document.querySelectorAll('#results .thumb-regions[data-outlined]').length === 4")
    cards = page.locator("#results .hit")
    assert [_boxes(_rects(page, f"#results .hit >> nth={i} >> .thumb-region")) for i in range(cards.count())] == \
        [[(h["x"], h["y"], h["width"], h["height"])] for h in regions["hits"]]
    page.wait_for_selector("#viewer[data-ready='true']")
    assert _boxes(_rects(page, "#pane-query .region-box.query-box")) == [(900, 600, 400, 400)]
    page.screenshot(path=str(shots / "6-region-search-regions.png"), full_page=True)
    # A refused filter is one line on the page; a box on no tissue says which patches there are.
    page.expected_statuses.add(400)
    page.fill("#where", "no_such_column = 1")
    page.press("#region-h", "Enter")
    until(page, "!document.querySelector('#message').hidden && document.querySelector('#status').textContent === 'region search refused'")
    assert "no_such_column" in page.text_content("#message")
    page.fill("#where", "")
    for name, value in zip("xywh", (0, 0, 8, 8)):
        page.fill(f"#region-{name}", str(value))
    page.press("#region-h", "Enter")
    until(page, "document.querySelector('#message').textContent.includes('covers no patch')")
    page.screenshot(path=str(shots / "7-region-refused.png"), full_page=True)


def test_region_search_on_an_atlas_without_a_patch_index_says_how_to_build_one(demo, page):
    _, base = demo
    ready(page, base)
    page.check("#facets [data-facet-column='site'][data-facet-value='site4']")
    search(page, "SYN-S4-0003-01Z-00-DX1", 3)
    page.click("#region-start")
    page.wait_for_selector("#viewer[data-ready='true']")
    assert page.evaluate("document.activeElement.id") == "region-draw"  # the tool is reachable from the keyboard
    page.expected_statuses.add(409)
    for name, value in zip("xywh", (0, 0, 4096, 4096)):
        page.fill(f"#region-{name}", str(value))
    page.press("#region-h", "Enter")
    until(page, "document.querySelector('#status').textContent === 'region search refused'")
    assert "has no patch index" in page.text_content("#message")
    assert "--level patches`" in page.text_content("#message")
    assert grid_ids(page) and len(grid_ids(page)) == 3  # the slide hits stay as they were
