"""The web viewer in headless Chromium: tiles show, controls re-render, nothing fails."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy
import pytest
from rasterio.io import MemoryFile

from tests.conftest import DEMO_IMAGE
from tileserver.demo import DATES, PRODUCT_ID

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAP_BACKGROUND = (230, 233, 237)  # --map-bg in static/viewer.css
TILE_PATH = "/tiles/WebMercatorQuad/"
TIMEOUT_MS = 20_000
SEARCH_VIEW = 'input[name="view"][value="search"]'
IMAGE_VIEW = 'input[name="view"][value="image"]'

if os.environ.get("CI") == "true":  # CI installs Chromium: a skip there would hide a failure
    pytestmark = [pytest.mark.browser]
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing in CI: .ci/run must install chromium"
else:
    pytestmark = [
        pytest.mark.browser,
        pytest.mark.skipif(
            not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium"
        ),
    ]

import playwright.sync_api as sync_api  # noqa: E402  (a test extra: always installed)

TILES_LOADED = """() => {
    const tiles = [...document.querySelectorAll('.leaflet-tile-pane img.leaflet-tile')];
    return tiles.length > 0 && tiles.every((t) => t.complete && t.naturalWidth > 0);
}"""
MOSAIC_SHOWN = """(id) => {
    const status = document.querySelector('#status');
    return status.dataset.state === 'ready'
        && status.textContent.startsWith('Showing the mosaic')
        && document.querySelector('#xyz-url').value.includes(`/searches/${id}/tiles/`);
}"""
LISTED = """(els) => els.map((el) => [
    el.querySelector('.result-date').textContent, el.querySelector('.result-cloud').textContent
])"""
BOX_BOUNDS = """() => {
    const b = window.tileserverViewer.state.boxLayer.getBounds();
    return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
}"""
SERIES_BOUNDS = """() => {
    const b = window.tileserverViewer.series.outline.getBounds();
    return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
}"""
BOX_PIXELS = """([west, south, east, north]) => {
    const map = window.tileserverViewer.map;
    const nw = map.latLngToContainerPoint([north, west]);
    const se = map.latLngToContainerPoint([south, east]);
    return [nw.x, nw.y, se.x, se.y];
}"""
SHOWN_PNG = """async () => {
    const blob = await (await fetch(document.querySelector('#series-plot').src)).blob();
    const bytes = new Uint8Array(await blob.arrayBuffer());
    return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(''));
}"""
XYZ_PARAMS_ARE = """(expected) => {
    const value = document.querySelector('#xyz-url').value;
    if (!value) return false;
    const query = new URL(value).searchParams;
    return [...query.keys()].length === Object.keys(expected).length
        && Object.entries(expected).every(([k, v]) => query.get(k) === v);
}"""


@dataclass
class Problems:
    """What went wrong in a page: console errors, failed requests, 4xx/5xx answers."""

    console: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    bad_status: list[str] = field(default_factory=list)

    def all(self, aborted_ok: bool = False) -> list[str]:
        """Every problem; with aborted_ok, not the tiles Leaflet cancels when a layer goes."""
        failed = [f for f in self.failed if not (aborted_ok and "ERR_ABORTED" in f)]
        return self.console + failed + self.bad_status


@dataclass
class TileAnswer:
    status: int
    content_type: str
    url: str


@dataclass
class Viewer:
    page: object
    problems: Problems
    requests: list[str]
    base: str
    responses: list[TileAnswer] = field(default_factory=list)  # of tile requests
    posts: list[tuple[str, dict]] = field(default_factory=list)  # (path, JSON body)

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base + path)
        self.wait_ready()

    def wait_ready(self) -> None:
        """The status line says the layer loaded, and every tile <img> has pixels."""
        self.page.wait_for_selector('#status[data-state="ready"]', timeout=TIMEOUT_MS)
        self.page.wait_for_function(TILES_LOADED, timeout=TIMEOUT_MS)

    def wait_rendered(self, **params: str) -> None:
        """The XYZ URL carries exactly these parameters, and the layer made of them loaded."""
        self.page.wait_for_function(XYZ_PARAMS_ARE, arg=params, timeout=TIMEOUT_MS)
        self.wait_ready()

    def map_pixels(self) -> numpy.ndarray:
        """The map area as an (rows, cols, 3) uint8 array, from a PNG screenshot."""
        png = self.page.locator("#map").screenshot()
        with MemoryFile(png) as memfile, memfile.open() as dataset:
            data = dataset.read()
        return numpy.moveaxis(data[:3], 0, -1)

    def tile_requests(self, **expected: str) -> list[dict[str, str]]:
        """Query parameters of the tile requests so far that carry every expected value."""
        found = []
        for url in self.requests:
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            if all(query.get(k) == v for k, v in expected.items()):
                found.append(query)
        return found

    def wait_mosaic(self, search_id: str) -> None:
        """The status says this search's mosaic loaded, and every tile <img> has pixels."""
        self.page.wait_for_function(MOSAIC_SHOWN, arg=search_id, timeout=TIMEOUT_MS)
        self.page.wait_for_function(TILES_LOADED, timeout=TIMEOUT_MS)

    def mosaic_tiles(self, search_id: str) -> list[TileAnswer]:
        """The answers to this search's mosaic tile requests so far."""
        return [r for r in self.responses if f"/searches/{search_id}/tiles/" in r.url]

    def posted(self, path: str) -> list[dict]:
        """The JSON bodies POSTed to a path (without the root), in order."""
        return [body for where, body in self.posts if where == path]

    def xyz_params(self) -> dict[str, str]:
        url = self.page.input_value("#xyz-url")
        assert "/{z}/{x}/{y}.png" in url, url
        assert url.startswith(self.base + "/images/"), url
        return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def address_params(page) -> dict[str, str]:
    """The query parameters of the page's address."""
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def painted_fraction(pixels: numpy.ndarray) -> float:
    """The share of pixels that differ from the map's plain background."""
    diff = numpy.abs(pixels.astype(int) - numpy.array(MAP_BACKGROUND)).max(axis=-1)
    return float((diff > 12).mean())


def colour_count(pixels: numpy.ndarray) -> int:
    return len(numpy.unique(pixels.reshape(-1, 3), axis=0))


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def open_viewer(chromium, base: str) -> Iterator[Viewer]:
    """A fresh browser page on a server, recording problems, tile requests and POSTs."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems = Problems()
    requests: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.console.append(m.text))
    page.on("pageerror", lambda exc: problems.console.append(f"uncaught: {exc}"))
    page.on("requestfailed", lambda r: problems.failed.append(f"{r.url}: {r.failure}"))
    page.on(
        "response", lambda r: r.status >= 400 and problems.bad_status.append(f"{r.status} {r.url}")
    )
    page.on("request", lambda r: TILE_PATH in r.url and requests.append(r.url))
    viewer = Viewer(page, problems, requests, base)

    def on_response(response) -> None:
        if TILE_PATH in response.url:
            content_type = response.headers.get("content-type", "")
            viewer.responses.append(TileAnswer(response.status, content_type, response.url))

    def on_request(request) -> None:
        if request.method == "POST":
            viewer.posts.append((urlsplit(request.url).path, request.post_data_json))

    page.on("response", on_response)
    page.on("request", on_request)
    try:
        yield viewer
    finally:
        context.close()


@pytest.fixture()
def viewer(chromium, live_server) -> Viewer:
    with open_viewer(chromium, live_server.url) as opened:
        yield opened


def test_home_shows_newest_image_tiles_without_errors(viewer):
    viewer.open("/")
    page = viewer.page
    assert "tileserver" in page.title()
    assert page.locator("#product option").count() >= 1
    options = page.locator("#image option")
    assert options.count() == 8  # the demo's dates, newest first
    assert page.input_value("#image") == options.first.get_attribute("value")
    assert re.match(r"\d{4}-\d\d-\d\d .* · cloud \d+%", options.first.inner_text())

    pixels = viewer.map_pixels()
    assert painted_fraction(pixels) > 0.15, "the map shows hardly any imagery"
    assert colour_count(pixels) > 200, "the imagery is flat, not a picture"
    assert pixels.std() > 10

    params = viewer.xyz_params()
    assert params["bands"] == "B04,B03,B02" and params["scaling"] == "display"
    assert viewer.tile_requests(bands="B04,B03,B02", scaling="display")
    assert not viewer.problems.all(), viewer.problems


def test_map_page_preselects_and_rerenders_on_change(viewer):
    viewer.open(f"/images/{DEMO_IMAGE}/map")
    page = viewer.page
    assert page.input_value("#image") == DEMO_IMAGE
    assert page.input_value("#product") == DEMO_IMAGE.split(":")[0]
    assert DEMO_IMAGE in viewer.requests[0]

    with page.expect_request(lambda r: TILE_PATH in r.url and "scaling=auto" in r.url):
        page.select_option("#scaling", "auto")
    viewer.wait_rendered(bands="B04,B03,B02", scaling="auto")

    with page.expect_request(lambda r: TILE_PATH in r.url and "B08%2CB03%2CB02" in r.url):
        page.select_option("#band-r", "B08")
    viewer.wait_rendered(bands="B08,B03,B02", scaling="auto")
    assert viewer.xyz_params() == {"bands": "B08,B03,B02", "scaling": "auto"}
    assert viewer.tile_requests(bands="B08,B03,B02", scaling="auto")

    page.check('input[name="mode"][value="single"]')
    page.select_option("#colormap", "greys")
    viewer.wait_rendered(bands="B08", scaling="auto", colormap_name="greys")
    assert viewer.tile_requests(bands="B08", scaling="auto", colormap_name="greys")
    assert all(DEMO_IMAGE in url for url in viewer.requests)
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_choosing_another_image_shows_its_tiles(viewer):
    viewer.open(f"/images/{DEMO_IMAGE}/map")
    page = viewer.page
    other = page.locator("#image option").nth(0).get_attribute("value")
    assert other != DEMO_IMAGE
    with page.expect_request(lambda r: TILE_PATH in r.url and other in r.url):
        page.select_option("#image", other)
    page.wait_for_function(
        "(id) => document.querySelector('#xyz-url').value.includes(id)", arg=other
    )
    viewer.wait_ready()
    # the address follows, to be shared: the map page of what is shown, and how
    assert urlsplit(page.url).path == f"/images/{other}/map"
    assert address_params(page) == {"bands": "B04,B03,B02", "scaling": "display"}
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_expression_with_colormap_shows_tiles(viewer):
    viewer.open(f"/images/{DEMO_IMAGE}/map")
    page = viewer.page
    page.check('input[name="mode"][value="expression"]')
    page.fill("#expression", "(B08-B04)/(B08+B04)")
    page.select_option("#colormap", "viridis")
    page.click("#apply")
    expected = {
        "expression": "(B08-B04)/(B08+B04)",
        "colormap_name": "viridis",
        "scaling": "display",
    }
    viewer.wait_rendered(**expected)
    assert viewer.xyz_params() == expected
    assert viewer.tile_requests(**expected)
    pixels = viewer.map_pixels()
    assert painted_fraction(pixels) > 0.15
    assert colour_count(pixels) >= 3
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_bad_expression_shows_the_server_detail(viewer):
    viewer.open("/")
    page = viewer.page
    page.check('input[name="mode"][value="expression"]')
    page.fill("#expression", "B99*2")
    page.press("#expression", "Enter")
    status = page.locator('#status[data-state="error"]')
    status.wait_for()
    assert "400" in status.inner_text() and "B99" in status.inner_text()


def test_opacity_slider_sets_layer_opacity(viewer):
    viewer.open("/")
    page = viewer.page
    layer = page.locator(".leaflet-tile-pane .leaflet-layer").last
    assert float(layer.evaluate("el => getComputedStyle(el).opacity")) == 1
    page.focus("#opacity")
    for _ in range(12):  # step 0.05, from 1 down to 0.4, as a keyboard user would
        page.keyboard.press("ArrowLeft")
    assert page.inner_text("#opacity-value") == "40%"
    assert float(layer.evaluate("el => el.style.opacity")) == pytest.approx(0.4)


def test_copy_button_copies_the_xyz_url(viewer):
    viewer.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    viewer.open("/")
    page = viewer.page
    page.click("#copy-url")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('copied')")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.input_value("#xyz-url") and "{z}/{x}/{y}" in copied


# ---------------------------------------------------------------- the search panel


def demo_clouds(base: str) -> dict[str, float]:
    """eo:cloud_cover of every demo image by day (YYYY-MM-DD), from the server's STAC API."""
    answer = httpx.post(f"{base}/stac/search", json={"collections": [PRODUCT_ID], "limit": 100})
    answer.raise_for_status()
    features = answer.json()["features"]
    assert len(features) == len(DATES)
    return {f["properties"]["datetime"][:10]: f["properties"]["eo:cloud_cover"] for f in features}


def cloud_text(cover: float) -> str:
    """The viewer's cloud label: rounded half up, as JavaScript's Math.round does."""
    return f"cloud {math.floor(cover + 0.5)}%"


def listed(viewer: Viewer) -> list[list[str]]:
    """The result list as [date, cloud label] rows, top to bottom."""
    return viewer.page.eval_on_selector_all("#search-results .result", LISTED)


def is_search_post(response) -> bool:
    return response.request.method == "POST" and urlsplit(response.url).path == "/searches"


def run_search(viewer: Viewer, **fields: str) -> str:
    """Fill the search panel (start, end, cloud), press Search: the id, once its mosaic shows."""
    page = viewer.page
    page.check(SEARCH_VIEW)
    page.select_option("#product", PRODUCT_ID)
    for name, value in fields.items():
        page.fill(f"#search-{name}", value)
    with page.expect_response(is_search_post) as answer:
        page.click("#search")
    search_id = answer.value.json()["id"]
    viewer.wait_mosaic(search_id)
    return search_id


def test_search_lists_the_matching_images_newest_first(viewer):
    """Dates and a cloud limit list exactly the demo images that meet them, newest first."""
    clouds = demo_clouds(viewer.base)
    start, end = DATES[1].date(), DATES[5].date()
    in_range = [d.date().isoformat() for d in DATES if start <= d.date() <= end]
    cloudy = sorted(clouds[day] for day in in_range if clouds[day] > 0)
    assert len(cloudy) >= 2, "the demo has several cloudy dates in this range"
    limit = cloudy[0]  # the least cloudy of them passes, the cloudier ones do not
    expected = sorted((day for day in in_range if clouds[day] <= limit), reverse=True)
    assert 0 < len(expected) < len(in_range) < len(DATES)

    viewer.open("/")
    run_search(viewer, start=start.isoformat(), end=end.isoformat(), cloud=str(limit))
    page = viewer.page
    assert listed(viewer) == [[day, cloud_text(clouds[day])] for day in expected]
    assert page.inner_text("#search-count") == f"{len(expected)} images"

    body = {
        "collections": [PRODUCT_ID],
        "datetime": f"{start}T00:00:00Z/{end}T23:59:59Z",
        "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, limit]},
        "filter-lang": "cql2-json",
    }
    assert viewer.posted("/stac/search") == [{**body, "limit": 100}]
    assert viewer.posted("/searches") == [body]
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_search_without_matches_says_so(viewer):
    """A range between two demo dates matches nothing: said so, and nothing is registered."""
    viewer.open("/")
    page = viewer.page
    page.check(SEARCH_VIEW)
    day = (DATES[0] + (DATES[1] - DATES[0]) / 2).date().isoformat()
    page.fill("#search-start", day)
    page.fill("#search-end", day)
    page.click("#search")
    page.wait_for_function(
        "() => document.querySelector('#search-count').textContent === 'No image matches'"
    )
    assert page.locator("#search-results .result").count() == 0
    assert "No image matches" in page.inner_text("#status")
    assert len(viewer.posted("/stac/search")) == 1 and not viewer.posted("/searches")
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_search_shows_the_mosaic_tiles(viewer):
    """The mosaic's tiles come from /searches/{id}/tiles/ as PNGs, never below its minzoom."""
    viewer.open("/")
    start, end = DATES[2].date().isoformat(), DATES[6].date().isoformat()
    search_id = run_search(viewer, start=start, end=end)
    page = viewer.page

    tiles = viewer.mosaic_tiles(search_id)
    assert tiles, "no mosaic tile was requested"
    assert all(t.status == 200 and t.content_type == "image/png" for t in tiles), tiles
    tilejson = httpx.get(f"{viewer.base}/searches/{search_id}/tilejson.json").json()
    zooms = {int(urlsplit(t.url).path.split("/")[-3]) for t in tiles}
    assert min(zooms) >= tilejson["minzoom"], zooms

    assert page.inner_text("#search-id") == search_id
    assert page.input_value("#xyz-url") == (
        f"{viewer.base}/searches/{search_id}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png"
        "?bands=B04%2CB03%2CB02&scaling=display&pixel_selection=first"
    )
    wmts = page.get_attribute("#wmts-link", "href")
    assert wmts.startswith(f"/searches/{search_id}/WMTSCapabilities.xml?"), wmts
    assert httpx.get(viewer.base + wmts).status_code == 200

    pixels = viewer.map_pixels()
    assert painted_fraction(pixels) > 0.15, "the map shows hardly any imagery"
    assert colour_count(pixels) > 200
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_pixel_selection_rerenders_without_registering_again(viewer):
    """Another pixel selection asks for new tiles of the same search; rendering applies too."""
    viewer.open("/")
    search_id = run_search(viewer, start=DATES[0].date().isoformat())
    page = viewer.page
    seen = len(viewer.requests)

    def mosaic_tile(selection: str):
        return lambda r: f"/searches/{search_id}/tiles/" in r.url and selection in r.url

    with page.expect_request(mosaic_tile("pixel_selection=median")):
        page.select_option("#pixel-selection", "median")
    viewer.wait_rendered(bands="B04,B03,B02", scaling="display", pixel_selection="median")
    assert "pixel selection: median" in page.inner_text("#status")
    new = viewer.requests[seen:]
    assert new and all(f"/searches/{search_id}/tiles/" in url for url in new)
    assert viewer.tile_requests(pixel_selection="median", bands="B04,B03,B02")

    with page.expect_request(mosaic_tile("scaling=auto")):
        page.select_option("#scaling", "auto")
    viewer.wait_rendered(bands="B04,B03,B02", scaling="auto", pixel_selection="median")

    assert len(viewer.posted("/searches")) == 1  # the search was registered once
    median = [t for t in viewer.mosaic_tiles(search_id) if "pixel_selection=median" in t.url]
    assert median and all(t.status == 200 and t.content_type == "image/png" for t in median)
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_mosaic_tile_error_shows_the_server_detail(viewer):
    """lastbandhigh on one band is refused (by the TileJSON, before any tile): the page shows
    the server's detail and draws no lastbandhigh tile."""
    viewer.open("/")
    search_id = run_search(viewer, end=DATES[-1].date().isoformat())
    page = viewer.page
    page.check('input[name="mode"][value="single"]')
    viewer.wait_rendered(bands="B04", scaling="display", pixel_selection="first")
    page.select_option("#pixel-selection", "lastbandhigh")
    status = page.locator('#status[data-state="error"]')
    status.wait_for()
    assert "400" in status.inner_text() and "lastbandhigh" in status.inner_text()
    drawn = [t for t in viewer.mosaic_tiles(search_id) if "lastbandhigh" in t.url]
    assert not any(t.status == 200 for t in drawn)


def test_drawn_box_is_the_search_bbox(viewer):
    """A box dragged on the map is the bbox POSTed, as the map reads the rectangle back."""
    viewer.open("/")
    page = viewer.page
    page.check(SEARCH_VIEW)
    page.click("#draw-box")
    area = page.locator("#map").bounding_box()
    start = (area["width"] * 0.4, area["height"] * 0.35)
    end = (area["width"] * 0.6, area["height"] * 0.6)
    page.mouse.move(area["x"] + start[0], area["y"] + start[1])
    page.mouse.down()
    page.mouse.move(area["x"] + end[0], area["y"] + end[1], steps=8)
    page.mouse.up()

    drawn = page.evaluate(BOX_BOUNDS)
    assert drawn[0] < drawn[2] and drawn[1] < drawn[3]
    # the rectangle spans the drag: its corners are where the mouse went down and up
    assert page.evaluate(BOX_PIXELS, drawn) == pytest.approx([*start, *end], abs=1.5)
    assert page.evaluate("() => window.tileserverViewer.map.dragging.enabled()")
    assert page.get_attribute("#draw-box", "aria-pressed") == "false"

    with page.expect_response(is_search_post) as answer:
        page.click("#search")
    search_id = answer.value.json()["id"]
    viewer.wait_mosaic(search_id)
    body = viewer.posted("/stac/search")[-1]
    assert body["bbox"] == pytest.approx(drawn, abs=1e-9)
    assert viewer.posted("/searches")[-1] == {k: v for k, v in body.items() if k != "limit"}
    expected = httpx.post(f"{viewer.base}/stac/search", json=body).json()
    assert expected["numberMatched"] > 0
    assert page.inner_text("#search-count") == f"{expected['numberMatched']} images"

    page.click("#clear-box")
    assert page.evaluate("() => window.tileserverViewer.state.box") is None
    with page.expect_response(is_search_post):
        page.click("#search")
    assert "bbox" not in viewer.posted("/stac/search")[-1]
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_search_map_page_fills_the_panel_and_shows_tiles(viewer):
    """/searches/{id}/map opens on that search: panel filled, matches listed, tiles shown."""
    clouds = demo_clouds(viewer.base)
    bbox = [15.02, 52.27, 15.12, 52.33]
    body = {
        "collections": [PRODUCT_ID],
        "datetime": f"{DATES[2].date()}T00:00:00Z/{DATES[6].date()}T23:59:59Z",
        "bbox": bbox,
        "filter": {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 30]},
        "filter-lang": "cql2-json",
    }
    registered = httpx.post(f"{viewer.base}/searches", json=body)
    assert registered.status_code == 200, registered.text
    search_id = registered.json()["id"]
    matches = httpx.post(f"{viewer.base}/stac/search", json={**body, "limit": 100}).json()
    expected = [f["properties"]["datetime"][:10] for f in matches["features"]]
    assert expected and expected == sorted(expected, reverse=True)

    page = viewer.page
    page.goto(f"{viewer.base}/searches/{search_id}/map")
    viewer.wait_mosaic(search_id)
    assert page.is_checked(SEARCH_VIEW)
    assert page.input_value("#product") == PRODUCT_ID
    assert page.input_value("#search-start") == DATES[2].date().isoformat()
    assert page.input_value("#search-end") == DATES[6].date().isoformat()
    assert float(page.input_value("#search-cloud")) == 30
    assert page.evaluate("() => window.tileserverViewer.state.box") == pytest.approx(bbox)
    assert page.evaluate(BOX_BOUNDS) == pytest.approx(bbox)
    assert listed(viewer) == [[day, cloud_text(clouds[day])] for day in expected]
    assert page.inner_text("#search-id") == search_id

    tiles = viewer.mosaic_tiles(search_id)
    assert tiles and all(t.status == 200 and t.content_type == "image/png" for t in tiles)
    assert not viewer.posted("/searches")  # shown as registered, not registered again
    assert urlsplit(page.url).path == f"/searches/{search_id}/map"
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_clicking_a_result_shows_that_image(viewer):
    """A result, clicked, is shown alone in the image view; the mosaic comes back after."""
    viewer.open("/")
    search_id = run_search(viewer, start=DATES[0].date().isoformat())
    page = viewer.page
    result = page.locator("#search-results .result").nth(2)
    image_id = result.get_attribute("data-image-id")
    assert image_id.startswith(f"{PRODUCT_ID}:")
    with page.expect_request(lambda r: f"/images/{image_id}/tiles/" in r.url):
        result.click()
    page.wait_for_function(
        "(id) => document.querySelector('#xyz-url').value.includes(`/images/${id}/`)",
        arg=image_id,
    )
    viewer.wait_ready()
    assert page.is_checked(IMAGE_VIEW)
    assert page.input_value("#image") == image_id

    page.check(SEARCH_VIEW)
    viewer.wait_mosaic(search_id)
    assert len(viewer.posted("/searches")) == 1
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_viewer_with_a_key_in_its_address(chromium, demo_store, tmp_path):
    """With keys, `/map?api_key=` works: the page puts the key on every request it makes."""
    from tests.conftest import LiveServer, make_settings
    from tileserver.app import create_app
    from tileserver.catalog.keys import new_key
    from tileserver.catalog.migrate import copy_catalog
    from tileserver.catalog.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "catalog.db")  # the demo's records, keyed here
    copy_catalog(demo_store, store, tmp_path / "copy.json", progress=False)
    key, token = new_key("alice", "acme", admin=True)
    store.put_key(key)
    app = create_app(make_settings(tmp_path), store=store)
    with LiveServer(app) as server, open_viewer(chromium, server.url) as viewer:
        assert httpx.get(f"{server.url}/images/{DEMO_IMAGE}/map").status_code == 401
        viewer.open(f"/images/{DEMO_IMAGE}/map?api_key={token}")
        assert painted_fraction(viewer.map_pixels()) > 0.15
        assert viewer.requests and all(f"api_key={token}" in url for url in viewer.requests)
        assert viewer.xyz_params()["api_key"] == token  # the XYZ URL works in QGIS as it is
        assert not viewer.problems.all(), viewer.problems
    store.close()


# ---------------------------------------------------------------- values, legend, presets, address

VALUES_SHOWN = "() => document.querySelector('#values').dataset.state === 'ready'"
LEGEND_LOADED = """() => {
    const img = document.querySelector('#legend');
    return !document.querySelector('#legend-box').hidden && img.complete && img.naturalWidth > 0;
}"""
PAGE_PARAMS_ARE = """(expected) => {
    const query = new URL(location.href).searchParams;
    return [...query.keys()].length === Object.keys(expected).length
        && Object.entries(expected).every(([k, v]) => query.get(k) === v);
}"""


def raster_value(store, image_id: str, band: str, lon: float, lat: float) -> float | None:
    """A band's stored value at lon/lat, read from the image's file with rasterio alone
    (its own grid, nodata as None): what the viewer must show there."""
    import rasterio
    from rasterio.warp import transform

    image = store.get_image(image_id)
    spec = next(b for b in store.get_product(image.product_id).bands if b.name == band)
    with rasterio.open(image.files[spec.file_index].href) as dataset:
        xs, ys = transform("EPSG:4326", dataset.crs, [lon], [lat])
        row, col = dataset.index(xs[0], ys[0])
        value = dataset.read(spec.band_index + 1, window=((row, row + 1), (col, col + 1)))[0, 0]
    return None if value == dataset.nodata else float(value)


def click_map(viewer: Viewer, lon: float, lat: float) -> tuple[float, float]:
    """Click the map at lon/lat; the lon/lat the viewer asked the server about."""
    page = viewer.page
    x, y = page.evaluate(
        "([lat, lon]) => { const p = window.tileserverViewer.map.latLngToContainerPoint("
        "[lat, lon]); return [p.x, p.y]; }",
        [lat, lon],
    )
    box = page.locator("#map").bounding_box()
    with page.expect_response(lambda r: "/point/" in r.url) as answer:
        page.mouse.click(box["x"] + x, box["y"] + y)
    assert answer.value.status == 200, answer.value.text()
    page.wait_for_function(VALUES_SHOWN)
    asked = urlsplit(answer.value.url).path.rsplit("/", 1)[-1]
    asked_lon, asked_lat = (float(v) for v in asked.split(","))
    assert (asked_lon, asked_lat) == pytest.approx((lon, lat), abs=1e-3)
    return asked_lon, asked_lat


def test_a_map_address_renders_with_its_parameters_and_keeps_them(viewer, demo_store):
    """A map page's query is the rendering: controls set from it, parameters without a
    control sent as they are; the address follows changes and keeps those; a click shows
    the raster's value there; the colormapped band has its legend."""
    opened = {
        "bands": "B08",
        "colormap_name": "viridis",
        "scaling": "0,5000",
        "resampling": "bilinear",  # no control: kept
    }
    query = "&".join(f"{k}={v}" for k, v in opened.items())
    viewer.open(f"/images/{DEMO_IMAGE}/map?{query}#map=13/52.29/15.06&basemap=grid")
    page = viewer.page
    assert page.is_checked('input[name="mode"][value="single"]')
    assert page.input_value("#band-r") == "B08"
    assert page.input_value("#colormap") == "viridis"
    assert page.input_value("#scaling") == "custom"
    assert page.input_value("#custom-scaling") == "0,5000"
    assert page.input_value("#extra-params") == "resampling=bilinear"
    assert viewer.xyz_params() == opened
    assert viewer.tile_requests(**opened) and len(viewer.tile_requests(**opened)) == len(
        viewer.requests
    )
    assert address_params(page) == opened
    # the fragment: map view and basemap, restored; the grid is drawn here, nothing loaded
    assert page.evaluate("() => window.tileserverViewer.map.getZoom()") == 13
    center = page.evaluate("() => window.tileserverViewer.map.getCenter()")
    assert (center["lat"], center["lng"]) == pytest.approx((52.29, 15.06), abs=1e-4)
    assert page.input_value("#basemap") == "grid"
    assert page.locator(".leaflet-tile-pane canvas.leaflet-tile").count() > 0

    page.wait_for_function(LEGEND_LOADED)
    legend = page.get_attribute("#legend", "src")
    assert f"/images/{DEMO_IMAGE}/legend.png?" in legend and "colormap_name=viridis" in legend
    assert page.evaluate("() => document.querySelector('#legend').naturalWidth") == 256

    lon, lat = click_map(viewer, 15.055, 52.285)
    expected = raster_value(demo_store, DEMO_IMAGE, "B08", lon, lat)
    assert expected is not None
    value = page.locator("#values table.image-values td").first
    assert float(value.get_attribute("data-value")) == expected
    assert page.locator("#values table.image-values tr").nth(1).locator("th").inner_text() == "B08"

    # downloads of the view: the map's extent within the image, rendered as shown
    png = httpx.get(viewer.base + page.get_attribute("#download-png", "href"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with MemoryFile(png.content) as memfile, memfile.open() as picture:
        assert max(picture.width, picture.height) <= 1024 and picture.count == 4
        assert picture.read(4).mean() > 128  # mostly opaque: the view is inside the image
    href = page.get_attribute("#download-tif", "href")
    tif_query = {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}
    assert urlsplit(href).path == f"/images/{DEMO_IMAGE}/download.tif"
    assert tif_query == {**opened, "bbox": tif_query["bbox"]}
    west, south, east, north = (float(v) for v in tif_query["bbox"].split(","))
    shown = page.evaluate("() => window.tileserverViewer.map.getBounds().toBBoxString()")
    view = [float(v) for v in shown.split(",")]
    image = httpx.get(f"{viewer.base}/images/{DEMO_IMAGE}/tilejson.json").json()["bounds"]
    clipped = [max(view[0], image[0]), max(view[1], image[1])]
    clipped += [min(view[2], image[2]), min(view[3], image[3])]
    assert [west, south, east, north] == pytest.approx(clipped, abs=1e-5)
    tif = httpx.get(viewer.base + href)
    assert tif.status_code == 200 and tif.headers["content-type"].startswith("image/tiff")

    page.select_option("#colormap", "magma")
    changed = {**opened, "colormap_name": "magma"}
    viewer.wait_rendered(**changed)
    page.wait_for_function(PAGE_PARAMS_ARE, arg=changed)
    assert urlsplit(page.url).path == f"/images/{DEMO_IMAGE}/map"
    assert "basemap=grid" in urlsplit(page.url).fragment
    page.wait_for_function(LEGEND_LOADED)
    assert "colormap_name=magma" in page.get_attribute("#legend", "src")

    page.fill("#extra-params", "resampling=bilinear&nodata=0")  # typed: sent, and kept
    page.press("#extra-params", "Enter")
    typed = {**changed, "nodata": "0"}
    viewer.wait_rendered(**typed)
    page.wait_for_function(PAGE_PARAMS_ARE, arg=typed)
    assert all(urlsplit(url).netloc == urlsplit(viewer.base).netloc for url in viewer.requests)
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_presets_come_from_the_bands_and_change_the_tiles(viewer):
    """True colour, false colour and NDVI from the bands' wavelengths (or common names)."""
    viewer.open("/")
    page = viewer.page
    presets = page.eval_on_selector_all("#preset option", "els => els.map((e) => e.value)")
    assert presets == ["", "true-colour", "false-colour", "ndvi", "ndwi"]
    assert page.input_value("#preset") == "true-colour"  # the product's default bands

    with page.expect_request(lambda r: TILE_PATH in r.url and "B08%2CB04%2CB03" in r.url):
        page.select_option("#preset", "false-colour")
    viewer.wait_rendered(bands="B08,B04,B03", scaling="display")
    assert page.is_hidden("#legend-box")

    page.select_option("#preset", "ndvi")
    ndvi = {"expression": "(B08-B04)/(B08+B04)", "colormap_name": "rdylgn", "scaling": "display"}
    viewer.wait_rendered(**ndvi)
    assert viewer.tile_requests(**ndvi)
    page.wait_for_function(LEGEND_LOADED)
    page.wait_for_function(PAGE_PARAMS_ARE, arg=ndvi)

    page.check('input[name="mode"][value="rgb"]')
    viewer.wait_rendered(bands="B08,B04,B03", scaling="display")
    assert page.input_value("#preset") == "false-colour"
    page.select_option("#band-r", "B11")  # a hand-made rendering is no preset
    viewer.wait_rendered(bands="B11,B04,B03", scaling="display")
    assert page.input_value("#preset") == ""

    # another product's bands: by wavelength whatever their names, else by common name
    derived = page.evaluate(
        """() => window.tileserverViewer.presetsOf({bands: [
            {name: "P0", wavelength_nm_min: 430, wavelength_nm_max: 550},
            {name: "P1", wavelength_nm_center: 560},
            {name: "P2", wavelength_nm_center: 655},
            {name: "P3", wavelength_nm_center: 830},
            {name: "MASK", type: "mask", is_alpha: true},
        ]}).map((p) => [p.id, p.bands || p.expression])"""
    )
    assert derived == [
        ["true-colour", ["P2", "P1", "P0"]],
        ["false-colour", ["P3", "P2", "P1"]],
        ["ndvi", "(P3-P2)/(P3+P2)"],
        ["ndwi", "(P1-P3)/(P1+P3)"],
    ]
    named = page.evaluate(
        """() => window.tileserverViewer.presetsOf({bands: [
            {name: "red"}, {name: "nir08"}, {name: "coastal"}]}).map((p) => p.id)"""
    )
    assert named == ["ndvi"]  # no green nor blue: no colour composites
    stored = page.evaluate(
        """() => window.tileserverViewer.presetsOf({bands: [
            {name: "red"}, {name: "nir08"}, {name: "coastal"}],
            presets: {ndvi: {title: "Stored NDVI", expression: "(nir08-red)/(nir08+red)",
                             scaling: ["-0.2,0.8"], colormap_name: "viridis"},
                      pale: {bands: ["red", "red", "coastal"]},
                      one: {bands: ["red"]}}}).map((p) => [p.id, p.label, p.scaling || null])"""
    )
    # stored ones first (a stored name replaces the derived one); one band has no control
    assert stored == [["ndvi", "Stored NDVI", ["-0.2,0.8"]], ["pale", "pale", None]]
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def readme_search() -> dict:
    """The search body of the README's mosaic example (`curl -X POST .../searches`)."""
    import json

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    found = re.search(r"curl -X POST localhost:8000/searches .*?-d '(.*?)'", readme, re.S)
    assert found, "the README's search example is gone"
    return json.loads(found.group(1))


def test_readme_search_keeps_its_filter_and_shows_values_in_cloud_order(viewer, demo_store):
    """The README's example search, opened in the viewer with a least-cloudy order in its
    address: panel filled (its `<` filter too), Search registers the very same search; a
    click lists each image's value in that order and the mosaic's, from the rasters."""
    body = readme_search()
    assert body["filter"] == "eo:cloud_cover < 30"
    registered = httpx.post(f"{viewer.base}/searches", json=body).json()
    search_id = registered["id"]
    clouds = demo_clouds(viewer.base)
    start, end = body["datetime"].split("/")
    matching = sorted(
        (day for day, cover in clouds.items() if start <= day <= end and cover < 30),
        reverse=True,
    )
    assert 0 < len(matching) < len([d for d in clouds if start <= d <= end])

    page = viewer.page
    order = "eo:cloud_cover,-datetime"
    page.goto(f"{viewer.base}/searches/{search_id}/map?bands=B04&sortby={order}")
    viewer.wait_mosaic(search_id)
    assert page.input_value("#search-cloud") == "30"
    assert page.input_value("#order") == order
    assert [day for day, _ in listed(viewer)] == matching
    tiles = viewer.mosaic_tiles(search_id)
    assert tiles and all("sortby=eo%3Acloud_cover%2C-datetime" in t.url for t in tiles)
    assert address_params(page) == {
        "bands": "B04",
        "scaling": "display",
        "pixel_selection": "first",
        "sortby": order,
    }

    with page.expect_response(is_search_post) as answer:
        page.click("#search")
    assert answer.value.json()["id"] == search_id  # the same search, filter and all
    assert viewer.posted("/searches")[-1]["filter"] == {
        "op": "<",
        "args": [{"property": "eo:cloud_cover"}, 30],
    }
    viewer.wait_mosaic(search_id)
    assert urlsplit(page.url).path == f"/searches/{search_id}/map"

    lon, lat = click_map(viewer, 15.055, 52.285)
    rows = page.locator("#values table.drill tr[data-image-id]")
    drilled = [rows.nth(i).get_attribute("data-image-id") for i in range(rows.count())]
    by_cloud = sorted(
        drilled, key=lambda i: clouds[demo_store.get_image(i).acquired.date().isoformat()]
    )
    days = [demo_store.get_image(i).acquired.date().isoformat() for i in drilled]
    assert drilled == by_cloud and len(drilled) >= 2 and set(days) <= set(matching)
    values = [raster_value(demo_store, image_id, "B04", lon, lat) for image_id in drilled]
    shown = [
        rows.nth(i).locator("td").nth(1).get_attribute("data-value") for i in range(len(values))
    ]
    assert shown == ["" if v is None else str(int(v)) for v in values]
    first = next(v for v in values if v is not None)  # pixel selection first, in this order
    assert float(page.get_attribute("#values .shown-value", "data-value")) == first
    assert page.locator("#values svg.drill-chart circle").count() == sum(
        v is not None for v in values
    )

    page.select_option("#order", "")  # the search's own order: newest first
    viewer.wait_rendered(bands="B04", scaling="display", pixel_selection="first")
    page.wait_for_function(
        PAGE_PARAMS_ARE, arg={"bands": "B04", "scaling": "display", "pixel_selection": "first"}
    )
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_a_configured_basemap_loads_from_its_url(chromium, demo_dir, demo_store):
    """TILESERVER_BASEMAP_URL (here this server's own false-colour tiles, a self-hosted
    basemap) is offered, drawn under the imagery when chosen, its credit shown as text."""
    from tests.conftest import LiveServer, make_settings
    from tileserver.app import create_app

    template = f"/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?bands=B08,B04,B03"
    settings = make_settings(demo_dir, basemap_url=template, basemap_attribution="<b>own</b> map")
    app = create_app(settings, store=demo_store)
    with LiveServer(app) as server, open_viewer(chromium, server.url) as viewer:
        viewer.open(f"/images/{DEMO_IMAGE}/map")
        page = viewer.page
        assert page.input_value("#basemap") == "none"
        assert not viewer.tile_requests(bands="B08,B04,B03")
        with page.expect_request(lambda r: TILE_PATH in r.url and "bands=B08,B04,B03" in r.url):
            page.select_option("#basemap", "tiles")
        assert "basemap=tiles" in urlsplit(page.url).fragment
        assert page.inner_text(".leaflet-control-attribution").endswith("<b>own</b> map")
        under, over = page.evaluate(
            """() => { const s = window.tileserverViewer.state;
                return [s.basemap, s.layer].map((l) => Number(l.getContainer().style.zIndex)); }"""
        )
        assert under < over  # the imagery stays on top
        assert all(urlsplit(url).netloc == urlsplit(server.url).netloc for url in viewer.requests)
        assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_mask_clouds_checkbox_masks_the_mosaic_and_stays_in_the_address(viewer):
    """The demo product has an SCL band: the checkbox shows, asks for cloud_mask=default
    tiles (which differ from the unmasked ones), keeps it in the address, and a reload of
    that address restores it."""
    viewer.open("/")
    search_id = run_search(viewer, start=DATES[0].date().isoformat())
    page = viewer.page
    assert page.is_visible("#cloud-mask") and not page.is_checked("#cloud-mask")
    before = viewer.map_pixels()

    def masked(r) -> bool:
        return f"/searches/{search_id}/tiles/" in r.url and "cloud_mask=default" in r.url

    with page.expect_request(masked):
        page.check("#cloud-mask")
    viewer.wait_rendered(
        bands="B04,B03,B02", scaling="display", pixel_selection="first", cloud_mask="default"
    )
    tiles = [t for t in viewer.mosaic_tiles(search_id) if "cloud_mask=default" in t.url]
    assert tiles and all(t.status == 200 for t in tiles)
    assert not numpy.array_equal(viewer.map_pixels(), before)  # the clouds changed
    assert address_params(page).get("cloud_mask") == "default"

    viewer.open(urlsplit(page.url).path + "?" + urlsplit(page.url).query)
    assert page.is_checked("#cloud-mask")
    assert "cloud_mask=default" in page.input_value("#xyz-url")
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_a_drawn_area_gets_its_time_series_plotted(viewer):
    """Two clicks draw an area: the server's PNG plot of its NDVI series shows, and the
    request carried the drawn rectangle, the NDVI preset's expression and the SCL mask."""
    viewer.open("/")
    page = viewer.page
    page.click("#series-draw")
    area = page.locator("#map").bounding_box()
    corners = [
        (area["width"] * 0.4, area["height"] * 0.35),
        (area["width"] * 0.6, area["height"] * 0.6),
    ]
    page.mouse.click(area["x"] + corners[0][0], area["y"] + corners[0][1])
    with page.expect_response(lambda r: "/timeseries" in r.url) as answer:
        page.mouse.click(area["x"] + corners[1][0], area["y"] + corners[1][1])
    assert answer.value.status == 200, answer.value.text()
    page.wait_for_function(
        "() => { const img = document.querySelector('#series-plot');"
        " return !document.querySelector('#series-box').hidden && img.complete"
        " && img.naturalWidth === 800 && img.naturalHeight === 400; }"
    )
    # the bytes the page shows (its blob), decoded here
    png = base64.b64decode(page.evaluate(SHOWN_PNG))
    with MemoryFile(png) as memfile, memfile.open(driver="PNG") as dataset:
        assert (dataset.width, dataset.height) == (800, 400)
        assert colour_count(numpy.moveaxis(dataset.read()[:3], 0, -1)) > 10

    # the outline spans the clicks; the posted ring is the outline (to 6 decimals)
    west, south, east, north = page.evaluate(SERIES_BOUNDS)
    assert page.evaluate(BOX_PIXELS, [west, south, east, north]) == pytest.approx(
        [*corners[0], *corners[1]], abs=1.5
    )
    body = viewer.posted("/timeseries")[-1]
    assert urlsplit(answer.value.url).query == "format=png"
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    assert body["geometry"]["type"] == "Polygon"
    posted = [tuple(c) for c in body["geometry"]["coordinates"][0]]
    assert numpy.allclose(posted, ring, atol=1e-6), (posted, ring)
    assert body["expression"] == "(B08-B04)/(B08+B04)"
    assert body["cloud_mask"] == "SCL:3,8,9,10"
    assert body["product"] == PRODUCT_ID
    assert (body["start_date"], body["end_date"]) == ("2024-01-01", "2024-12-31")
    assert not page.is_hidden("#series-csv")
    # the plotted series has dates in it
    assert httpx.post(f"{viewer.base}/timeseries", json=body).json()["rows"]
    assert not viewer.problems.all(aborted_ok=True), viewer.problems


def test_a_picked_parcel_gets_its_time_series_plotted(viewer, demo_store):
    """With a parcel layer, a click in "Pick parcel" mode asks that parcel's series."""
    west, south, east, north = demo_store.get_image(DEMO_IMAGE).bbox
    lon, lat = (west + east) / 2, (south + north) / 2
    ring = [[lon - 0.005, lat - 0.004], [lon + 0.005, lat - 0.004], [lon + 0.005, lat + 0.004],
            [lon - 0.005, lat + 0.004], [lon - 0.005, lat - 0.004]]  # fmt: skip
    path = Path(demo_store.path).parent / "viewer_parcels.geojson"
    field_ = {"type": "Feature", "properties": {"pid": "field-7"},
              "geometry": {"type": "Polygon", "coordinates": [ring]}}  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [field_]}))
    demo_store.parcels().load("viewer-fields", path)
    try:
        viewer.open("/")
        page = viewer.page
        page.wait_for_selector("#series-pick:not([hidden])")
        page.click("#series-pick")
        x, y = page.evaluate(
            "([lat, lon]) => { const p = window.tileserverViewer.map.latLngToContainerPoint("
            "[lat, lon]); return [p.x, p.y]; }",
            [lat, lon],
        )
        box = page.locator("#map").bounding_box()
        with page.expect_response(lambda r: "/timeseries" in r.url) as answer:
            page.mouse.click(box["x"] + x, box["y"] + y)
        assert answer.value.status == 200, answer.value.text()
        url = urlsplit(answer.value.url)
        assert url.path == "/parcels/viewer-fields/field-7/timeseries"
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert query["format"] == "png" and query["expression"] == "(B08-B04)/(B08+B04)"
        assert query["cloud_mask"] == "SCL:3,8,9,10"
        page.wait_for_function("() => document.querySelector('#series-plot').naturalWidth === 800")
        assert not viewer.problems.all(aborted_ok=True), viewer.problems
    finally:
        demo_store.parcels().delete("viewer-fields")
