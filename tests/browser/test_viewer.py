"""The web viewer in headless Chromium: tiles show, controls re-render, nothing fails."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy
import pytest
from rasterio.io import MemoryFile

from tests.conftest import DEMO_IMAGE

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
class Viewer:
    page: object
    problems: Problems
    requests: list[str]
    base: str

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

    def xyz_params(self) -> dict[str, str]:
        url = self.page.input_value("#xyz-url")
        assert "/{z}/{x}/{y}.png" in url, url
        assert url.startswith(self.base + "/images/"), url
        return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


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


@pytest.fixture()
def viewer(chromium, live_server) -> Viewer:
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
    yield Viewer(page, problems, requests, live_server.url)
    context.close()


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
    assert page.url.endswith(f"/images/{other}/map")  # the address follows, to be shared
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
