"""`cloud_mask` as a rendering parameter (issue 22): a class band's listed classes made
transparent in image tiles and in each image of a mosaic before compositing, so the next
image in paint order shows through. Every expectation is worked out here from the rasters."""

from __future__ import annotations

import io

import numpy
import pytest

from tests.synthetic import TILE, WEB_MERCATOR, write
from tests.test_values import tile_lonlat

Z, X, Y = TILE.z, TILE.x, TILE.y
CLOUDY = [3, 8, 9, 10]
PRODUCT = {
    "id": "cm",
    "bands": [
        {"name": "v1", "data_type": "UInt16", "data_range": [0, 5000], "nodata": 0},
        {
            "name": "SCL",
            "type": "class",
            "data_type": "Byte",
            "data_range": [0, 11],
            "nodata": 0,
            "file_index": 1,
        },
    ],
}
rows, cols = numpy.mgrid[0:256, 0:256]


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    ring = [[b.left, b.bottom], [b.right, b.bottom], [b.right, b.top], [b.left, b.top]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def scene(client, tmp_path, name: str, when: str, base: int, seed: int):
    """v1 (256 x 256 on the tile's grid) and SCL at half resolution (128 x 128, so a tile
    reads it resampled); returns v1 and SCL as the tile sees it (nearest: each 2 x 2)."""
    v1 = (base + rows + cols).astype("uint16")[None]
    scl = numpy.random.default_rng(seed).choice([4, 5, 6, 3, 8, 9, 10], (128, 128))
    scl[:10, :10] = 0  # SCL nodata: masks nothing
    scl = scl.astype("uint8")
    p1 = write(tmp_path / name / "v1.tif", v1, nodata=0)
    p2 = write(tmp_path / name / "scl.tif", scl[None], nodata=0)
    body = {
        "name": name,
        "product_id": "cm",
        "acquired": when,
        "geometry": footprint(),
        "files": [{"href": str(p1)}, {"href": str(p2)}],
    }
    response = client.put(f"/images/cm:{name}", json=body)
    assert response.status_code == 200, response.text
    return v1[0], numpy.repeat(numpy.repeat(scl, 2, axis=0), 2, axis=1)


@pytest.fixture()
def scenes(empty_client, tmp_path):
    """`low` (older) and `top` (newer, painted first), each with its own clouds."""
    assert empty_client.post("/products", json=PRODUCT).status_code == 201
    low = scene(empty_client, tmp_path, "low", "2024-06-01T10:00:00Z", 2000, 1)
    top = scene(empty_client, tmp_path, "top", "2024-06-11T10:00:00Z", 1000, 2)
    return empty_client, low, top


def tile(client, layer: str, fmt: str = "npy", **params):
    return client.get(f"{layer}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.{fmt}", params=params)


def npy(response) -> numpy.ndarray:
    assert response.status_code == 200, response.text
    return numpy.load(io.BytesIO(response.content))


@pytest.mark.parametrize(
    ("mask", "resampling"),
    [("SCL:3,8,9,10", "nearest"), ("default", "nearest"), ("SCL:3,8,9,10", "bilinear")],
)
def test_image_tile_is_transparent_exactly_on_the_listed_classes(scenes, mask, resampling):
    client, _, (v1, scl) = scenes
    cloud = numpy.isin(scl, CLOUDY)
    assert 0.3 < cloud.mean() < 0.7  # the premise: clouds and clear pixels both
    pixels = npy(tile(client, "/images/cm:top", bands="v1", cloud_mask=mask, resampling=resampling))
    # the class band is read nearest whatever the request's resampling: classes exact
    assert numpy.array_equal(pixels[1] == 0, cloud)
    if resampling == "nearest":
        assert numpy.array_equal(pixels[0][~cloud], v1[~cloud])


def test_only_the_named_classes_are_masked(scenes):
    client, _, (_, scl) = scenes
    pixels = npy(tile(client, "/images/cm:top", bands="v1", cloud_mask="SCL:9"))
    assert numpy.array_equal(pixels[1] == 0, scl == 9)


def test_without_cloud_mask_nothing_changes(scenes):
    client, _, (v1, _) = scenes
    plain = tile(client, "/images/cm:top", bands="v1")
    pixels = npy(plain)
    assert (pixels[1] == 255).all() and numpy.array_equal(pixels[0], v1)
    assert tile(client, "/images/cm:top", bands="v1", cloud_mask="none").content == plain.content
    png = tile(client, "/images/cm:top", "png", bands="v1")
    masked = tile(client, "/images/cm:top", "png", bands="v1", cloud_mask="default")
    assert masked.status_code == 200 and masked.content != png.content  # not a cached tile


def test_mosaic_shows_the_lower_image_under_the_top_image_clouds(scenes):
    client, (low_v1, low_scl), (top_v1, top_scl) = scenes
    search = client.post("/searches", json={"collections": ["cm"]})
    assert search.status_code == 200, search.text
    layer = f"/searches/{search.json()['id']}"
    # without a mask the newest image covers the tile
    assert numpy.array_equal(npy(tile(client, layer, bands="v1"))[0], top_v1)
    pixels = npy(tile(client, layer, bands="v1", cloud_mask="SCL:3,8,9,10"))
    top_cloud, low_cloud = numpy.isin(top_scl, CLOUDY), numpy.isin(low_scl, CLOUDY)
    expected = numpy.where(top_cloud, low_v1, top_v1)
    shown = ~(top_cloud & low_cloud)
    assert 0 < (top_cloud & ~low_cloud).sum() and 0 < (top_cloud & low_cloud).sum()
    assert numpy.array_equal(pixels[1] == 255, shown)
    assert numpy.array_equal(pixels[0][shown], expected[shown])


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        ("CLD:1", "cloud_mask band 'CLD'"),
        ("v1:1", "cloud_mask band 'v1'"),
        ("SCL", "is not BAND:classes"),
        ("SCL:a", "must be integers"),
    ],
)
def test_bad_cloud_masks_are_400_naming_the_problem(scenes, mask, text):
    client, _, _ = scenes
    for layer in ("/images/cm:top",):
        answer = tile(client, layer, bands="v1", cloud_mask=mask)
        assert answer.status_code == 400, answer.text
        assert text in answer.json()["detail"]


def test_a_product_without_a_class_band_has_no_default(empty_client, tmp_path):
    product = {"id": "plain", "bands": [PRODUCT["bands"][0]]}
    assert empty_client.post("/products", json=product).status_code == 201
    path = write(tmp_path / "p.tif", (1 + rows + cols).astype("uint16")[None], nodata=0)
    body = {"name": "p", "product_id": "plain", "geometry": footprint()}
    body |= {"acquired": "2024-06-01T00:00:00Z", "files": [{"href": str(path)}]}
    assert empty_client.put("/images/plain:p", json=body).status_code == 200
    answer = tile(empty_client, "/images/plain:p", cloud_mask="default")
    assert answer.status_code == 400 and "declares no cloud mask" in answer.json()["detail"]
    answer = tile(empty_client, "/images/plain:p", cloud_mask="SCL:3")
    assert answer.status_code == 400 and "'SCL'" in answer.json()["detail"]


def test_point_values_take_the_cloud_mask(scenes):
    """The point routes read through the same read_bands: a cloudy pixel of the top image
    has no value, and the mosaic's value there is the lower image's."""
    client, (low_v1, low_scl), (top_v1, top_scl) = scenes
    top_cloud, low_cloud = numpy.isin(top_scl, CLOUDY), numpy.isin(low_scl, CLOUDY)
    row, col = map(int, numpy.argwhere(top_cloud & ~low_cloud)[0])
    lon, lat = tile_lonlat(row, col)
    params = {"bands": "v1", "cloud_mask": "SCL:3,8,9,10"}
    image = client.get(f"/images/cm:top/point/{lon},{lat}", params=params)
    assert image.status_code == 200, image.text
    assert image.json()["values"] == [None]
    assert client.get(f"/images/cm:top/point/{lon},{lat}", params={"bands": "v1"}).json()[
        "values"
    ] == [float(top_v1[row, col])]
    search_id = client.post("/searches", json={"collections": ["cm"]}).json()["id"]
    mosaic = client.get(f"/searches/{search_id}/point/{lon},{lat}", params=params)
    assert mosaic.status_code == 200, mosaic.text
    assert mosaic.json()["mosaic"]["values"] == [float(low_v1[row, col])]


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_mosaic_download_takes_the_cloud_mask(scenes, resampling):
    """Downloads read through render/mosaic.py read_image too: the file's pixels under the
    top image's clouds are the lower image's. The half-resolution SCL is warped onto the
    download's grid with nearest whatever the request's resampling (v1 is on the grid)."""
    client, (low_v1, low_scl), (top_v1, top_scl) = scenes
    search_id = client.post("/searches", json={"collections": ["cm"]}).json()["id"]
    params = {"bands": "v1", "cloud_mask": "default", "resampling": resampling}
    answer = client.get(f"/searches/{search_id}/mosaic.npy", params=params)
    pixels = npy(answer)  # one band, nodata 0 where no image has a pixel
    top_cloud, low_cloud = numpy.isin(top_scl, CLOUDY), numpy.isin(low_scl, CLOUDY)
    expected = numpy.where(top_cloud, low_v1, top_v1)
    shown = ~(top_cloud & low_cloud)
    assert pixels.shape[-2:] == (256, 256)
    assert numpy.array_equal(pixels[0][shown], expected[shown])
    assert (pixels[0][~shown] == 0).all()  # cloudy in both: the band's nodata
