"""The web viewer from the world view down (issue 21 part 5): a search's map opens fitted
to its data and stays painted while zooming out through its pyramid's zooms."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.test_viewer import (  # noqa: F401  (chromium, viewer: fixtures)
    BOX_PIXELS,
    TIMEOUT_MS,
    chromium,
    painted_fraction,
    pytestmark,
    viewer,
)
from tileserver.demo import PRODUCT_ID

VIEW_BOUNDS = """() => {
    const b = window.tileserverViewer.map.getBounds();
    return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()];
}"""
TILES_AT_ZOOM = """(z) => {
    const tiles = [...document.querySelectorAll('.leaflet-tile-pane img.leaflet-tile')]
        .filter((t) => t.src.includes(`/WebMercatorQuad/${z}/`));
    return tiles.length > 0 && tiles.every((t) => t.complete && t.naturalWidth > 0);
}"""


@pytest.mark.slow  # waits for the demo search's pyramid
def test_a_mosaic_opens_fitted_and_stays_on_the_map_while_zooming_out(viewer):  # noqa: F811
    """/searches/{id}/map opens framed on the mosaic; zooming out towards the world view,
    every zoom shows it (from its pyramid below the scenes' own zooms): the data's area is
    painted at each step, no tile refused (issue 21 part 5: no grey gap)."""
    api = httpx.Client(base_url=viewer.base, timeout=60)
    search_id = api.post("/searches", json={"collections": [PRODUCT_ID]}).json()["id"]
    # the pyramid builds in the background (a test of its own): the subject here is the map
    end = time.monotonic() + 180
    while time.monotonic() < end:
        low = api.get(f"/searches/{search_id}").json()["low_zooms"]
        if low.get("state") == "ready" and low.get("up_to_date"):
            break
        time.sleep(0.2)
    tilejson = api.get(f"/searches/{search_id}/tilejson.json").json()
    assert tilejson["minzoom"] == 0
    west, south, east, north = tilejson["bounds"]

    page = viewer.page
    page.goto(f"{viewer.base}/searches/{search_id}/map")
    viewer.wait_mosaic(search_id)
    view = page.evaluate(VIEW_BOUNDS)
    assert view[0] <= west and view[1] <= south and view[2] >= east and view[3] >= north
    # fitted: the data fills the view along one axis (more than a zoom level's half)
    assert max((east - west) / (view[2] - view[0]), (north - south) / (view[3] - view[1])) > 0.5
    fitted = page.evaluate("() => window.tileserverViewer.map.getZoom()")
    assert fitted > low["zooms"][1] + 1  # opened above the pyramid's zooms

    lowest = max(low["zooms"][1] - 3, 0)
    for z in range(fitted - 1, lowest - 1, -1):
        page.evaluate("(z) => window.tileserverViewer.map.setZoom(z, {animate: false})", z)
        page.wait_for_function(TILES_AT_ZOOM, arg=z, timeout=TIMEOUT_MS)
        x0, y0, x1, y1 = (round(v) for v in page.evaluate(BOX_PIXELS, [west, south, east, north]))
        pixels = viewer.map_pixels()[max(y0, 0) + 1 : y1 - 1, max(x0, 0) + 1 : x1 - 1]
        assert pixels.size, z
        assert painted_fraction(pixels) > 0.5, (z, painted_fraction(pixels))
    answers = viewer.mosaic_tiles(search_id)
    zooms = {int(urlsplit(t.url).path.split("/")[-3]) for t in answers}
    assert lowest in zooms and low["zooms"][1] in zooms, zooms
    assert all(t.status == 200 for t in answers), [t for t in answers if t.status != 200]
    assert not viewer.problems.all(aborted_ok=True), viewer.problems
