"""Single-image tiles: pixels against values worked out by hand from synthetic rasters."""

from __future__ import annotations

import io
import json
import os

import numpy
import pytest
import rasterio
from rasterio.io import MemoryFile

from tests.synthetic import TILE, gradient, write
from tileserver.opener import DATASETS

Z, X, Y = TILE.z, TILE.x, TILE.y
PRODUCT = {
    "id": "synth",
    "default_bands": ["red", "green", "blue"],
    "bands": [
        {
            "name": n,
            "data_type": "UInt16",
            "data_range": [0, 10000],
            "display_range": [0, 4000],
            "physical_range": [0, 1],
            "band_index": i,
            "nodata": 0,
        }
        for i, n in enumerate(["red", "green", "blue"])
    ]
    + [
        {
            "name": "alpha",
            "type": "mask",
            "is_alpha": True,
            "data_type": "Byte",
            "data_range": [0, 255],
            "band_index": 3,
        }
    ],
}
GEOMETRY = {
    "type": "Polygon",
    "coordinates": [[[13.35, 52.5], [13.71, 52.5], [13.71, 52.72], [13.35, 52.72], [13.35, 52.5]]],
}


def register(client, product: dict, path, name: str = "a", **extra) -> str:
    """Create `product` and one image of it over `path`; returns the image id."""
    assert client.post("/products", json=product).status_code == 201
    image = {
        "name": name,
        "product_id": product["id"],
        "acquired": "2024-01-01T00:00:00Z",
        "geometry": GEOMETRY,
        "files": [{"href": str(path)}],
        **extra,
    }
    image_id = f"{product['id']}:{name}"
    response = client.put(f"/images/{image_id}", json=image)
    assert response.status_code == 200, response.text
    return image_id


def decode(content: bytes) -> numpy.ndarray:
    """Pixels of an encoded PNG/JPEG/WebP/TIFF."""
    with MemoryFile(content) as memfile, memfile.open() as src:
        return src.read()


def display(values, lo=0, hi=4000):
    """The display stretch of SEMANTICS.md: lo..hi -> 0..255, clipped, rounded half up."""
    scaled = (numpy.asarray(values, dtype="float64") - lo) / (hi - lo) * 255
    return numpy.clip(numpy.floor(scaled + 0.5), 0, 255).astype("uint8")


@pytest.fixture()
def synth(tmp_path, empty_client):
    """A product of 3 UInt16 bands + alpha, one image whose pixels are all known."""
    data = gradient("uint16", 3)
    data[:, :8, :] = 0  # nodata rows at the top
    alpha = numpy.full((1, 256, 256), 255, dtype="uint16")
    alpha[0, :, 248:] = 0  # transparent columns on the right
    path = write(tmp_path / "synth.tif", numpy.concatenate([data, alpha]).astype("uint16"))
    register(
        empty_client, PRODUCT, path, name="one", band_stats={"red": {"min": 1000, "max": 3000}}
    )
    return empty_client, data


def tile(client, fmt="png", **params):
    response = client.get(
        f"/images/synth:one/tiles/WebMercatorQuad/{Z}/{X}/{Y}.{fmt}", params=params
    )
    return response


def assert_display_rgba(pixels, data) -> None:
    """An RGBA tile of the synth image with display scaling: the image's 8-pixel nodata
    strips (top rows, right columns) transparent, every other pixel displayed and opaque."""
    assert pixels.shape == (4, 256, 256) and pixels.dtype == "uint8"
    valid = numpy.ones((256, 256), bool)
    valid[:8, :] = False
    valid[:, 248:] = False
    for band in range(3):
        assert numpy.array_equal(pixels[band][valid], display(data[band])[valid])
    assert numpy.array_equal(pixels[3], numpy.where(valid, 255, 0))


def test_display_rgb_png_bytes(synth):
    client, data = synth
    response = tile(client, scaling="display")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    pixels = decode(response.content)
    assert_display_rgba(pixels, data)
    # spot checks worked out by hand: red at (100, 100) is 2000 -> 127.5 -> 128
    assert pixels[0, 100, 100] == 128
    assert pixels[2, 100, 100] == 255  # blue 4000 -> 255


def test_default_is_raw_uint16_png(synth):
    client, data = synth
    pixels = decode(tile(client).content)
    assert pixels.dtype == "uint16"
    assert numpy.array_equal(pixels[:3, 8:, :248], data[:, 8:, :248])


def test_display_with_uint16_output(synth):
    client, data = synth
    pixels = decode(tile(client, scaling="display", data_type="UInt16").content)
    assert pixels.dtype == "uint16"
    # red 2000 -> 127.5 -> 128, green 3000 -> 191.25 -> 191, blue 4000 -> 255
    assert list(pixels[:3, 100, 100]) == [128, 191, 255]


def test_per_band_and_percent_scaling(synth):
    client, data = synth
    pixels = decode(tile(client, scaling=["0,1000", "0,2000", "0,8000"]).content)
    # (60, 10): red 700, green 1700, blue 2700
    assert list(pixels[:3, 60, 10]) == [
        display(700, 0, 1000),
        display(1700, 0, 2000),
        display(2700, 0, 8000),
    ]
    # 0%..50% of the display range 0..4000 is 0..2000
    pixels = decode(tile(client, scaling="0%,50%").content)
    assert pixels[0, 60, 10] == display(700, 0, 2000)


def test_json_scaling_with_default(synth):
    client, _ = synth
    scaling = json.dumps({"red": [0, 1000], "default_": "display"})
    pixels = decode(tile(client, scaling=scaling).content)
    assert pixels[0, 60, 10] == display(700, 0, 1000)
    assert pixels[1, 60, 10] == display(1700)


def test_four_tuple_and_output_range(synth):
    client, _ = synth
    response = tile(client, fmt="npy", bands="red", scaling="0,10000,0,1")
    pixels = numpy.load(io.BytesIO(response.content))
    assert pixels.dtype == "float64"
    assert pixels[0, 60, 10] == pytest.approx(0.07)


def test_auto_uses_stored_statistics(synth):
    client, data = synth
    pixels = decode(tile(client, bands="red", scaling="auto").content)
    # stored red statistics: min 1000, max 3000
    assert pixels[0, 100, 100] == display(2000, 1000, 3000)
    assert pixels[0, 30, 30] == 0  # 600 is below the stored minimum


def test_band_order_and_single_band(synth):
    client, data = synth
    pixels = decode(tile(client, bands="blue,red,green", scaling="display").content)
    assert pixels[0, 60, 10] == display(2700)
    pixels = decode(tile(client, bands="green", scaling="display").content)
    assert pixels.shape == (2, 256, 256)  # gray + alpha
    assert pixels[0, 60, 10] == display(1700)


def test_expression_tif_matches_numpy(synth):
    client, data = synth
    response = tile(client, fmt="tif", expression="(blue-red)/(blue+red)")
    assert response.status_code == 200, response.text
    with MemoryFile(response.content) as memfile, memfile.open() as src:
        values = src.read(1)
        assert src.crs.to_epsg() == 3857
    red, blue = data[0].astype(float), data[2].astype(float)
    with numpy.errstate(all="ignore"):
        expected = (blue - red) / (blue + red)
    assert numpy.allclose(values[8:, :248], expected[8:, :248])


def test_expression_with_colormap_png(synth):
    client, _ = synth
    response = tile(client, expression="(blue-red)/(blue+red)", colormap_name="greys")
    pixels = decode(response.content)
    assert pixels.shape[0] == 4 and pixels.dtype == "uint8"
    # (blue-red)/(blue+red) at (100, 100) = 2000/6000; display over -1..1 -> 170.0 -> 170
    value = display(2000 / 6000, -1, 1)
    assert value == 170
    from rio_tiler.colormap import cmap

    assert tuple(pixels[:3, 100, 100]) == tuple(cmap.get("greys")[170][:3])


def test_physical_scaling_float(synth):
    client, _ = synth
    values = numpy.load(
        io.BytesIO(tile(client, fmt="npy", bands="red", scaling="physical").content)
    )
    assert values.dtype == "float64"
    assert values[0, 100, 100] == pytest.approx(0.2)  # 2000 of 0..10000 -> 0..1
    assert values[1, 100, 100] == 255  # the mask band rio-tiler appends


def test_processing_level_linear_step(synth):
    client, _ = synth
    product = client.get("/products/synth").json()
    product["bands"][0]["processing_levels"] = {
        "radiance": [
            {
                "function": "linear",
                "parameter": [0.5, 10],
                "data_type": "Float32",
                "data_range": [10, 5010],
                "physical_range": [10, 5010],
            }
        ]
    }
    assert client.put("/products/synth", json=product).status_code == 200
    values = numpy.load(
        io.BytesIO(
            tile(
                client, fmt="npy", bands="red", scaling="physical", processing_level="radiance"
            ).content
        )
    )
    assert values[0, 100, 100] == pytest.approx(2000 * 0.5 + 10)
    # display over the level's display range (its data range here): 1010 of 10..5010
    pixels = decode(
        tile(client, bands="red", scaling="display", processing_level="radiance").content
    )
    assert pixels[0, 100, 100] == display(1010, 10, 5010)


def test_requested_mask_band_is_the_alpha_channel(tmp_path, empty_client):
    data = gradient("uint16", 1)
    cloud = numpy.ones((1, 256, 256), dtype="uint16")
    cloud[0, 100:, :] = 0  # masked (cloudy) lower part
    path = write(tmp_path / "m.tif", numpy.concatenate([data, cloud]))
    product = {
        "id": "m",
        "bands": [
            {"name": "v", "data_range": [0, 10000], "display_range": [0, 4000]},
            {
                "name": "clear",
                "type": "mask",
                "data_type": "UInt16",
                "data_range": [0, 1],
                "band_index": 1,
            },
        ],
    }
    register(empty_client, product, path)
    url = f"/images/m:a/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png"
    pixels = decode(
        empty_client.get(url, params={"bands": "v,clear", "scaling": "display"}).content
    )
    assert pixels.shape == (2, 256, 256)
    assert (pixels[1, :100] == 255).all() and (pixels[1, 100:] == 0).all()
    assert pixels[0, 50, 50] == display(1000)


def test_scaling_list_with_an_entry_for_the_alpha_band(synth):
    # the Catalog client's list_alpha case: one entry per requested band, the alpha one too
    client, data = synth
    entries = ["0,4000", "0,4000", "0,4000", "raw"]
    response = tile(client, bands="red,green,blue,alpha", scaling=entries)
    assert response.status_code == 200, response.text
    pixels = decode(response.content)
    assert_display_rgba(pixels, data)
    # the product's alpha band masks a request that does not name it: its entry is allowed
    same = tile(client, bands="red,green,blue", scaling=entries)
    assert same.status_code == 200 and numpy.array_equal(decode(same.content), pixels)
    # one entry more than that is still wrong
    wrong = tile(client, bands="red,green,blue", scaling=[*entries, "raw"])
    assert wrong.status_code == 400 and "5 entries" in wrong.json()["detail"]


def test_default_processing_level_converts_pixels_as_it_sets_ranges(tmp_path, empty_client):
    # DN 0, 2500, 5000, 10000 (columns of 64 pixels); `default` is an alias of a reflectance
    # level DN * 0.0001 over 0..1: display gives 0, 63.75 -> 64, 127.5 -> 128, 255
    dn = numpy.repeat(numpy.array([0, 2500, 5000, 10000], dtype="uint16"), 64)
    path = write(tmp_path / "dn.tif", numpy.broadcast_to(dn, (1, 256, 256)).copy())
    reflectance = [
        {
            "function": "linear",
            "parameter": [0.0001, 0],
            "data_type": "Float32",
            "data_range": [0, 1],
        }
    ]
    product = {
        "id": "dn",
        "bands": [
            {
                "name": "red",
                "data_range": [0, 10000],
                "processing_levels": {"default": "toa_reflectance", "toa_reflectance": reflectance},
            }
        ],
    }
    register(empty_client, product, path)
    url = f"/images/dn:a/tiles/WebMercatorQuad/{Z}/{X}/{Y}"
    pixels = decode(empty_client.get(f"{url}.png", params={"scaling": "display"}).content)
    assert list(pixels[0, 10, ::64]) == [0, 64, 128, 255]
    values = numpy.load(io.BytesIO(empty_client.get(f"{url}.npy").content))
    assert values.dtype == "float32"
    assert list(values[0, 10, ::64]) == pytest.approx([0, 0.25, 0.5, 1])
    # a level named in the request that the band lacks leaves it as stored
    raw = numpy.load(io.BytesIO(empty_client.get(f"{url}.npy?processing_level=DN").content))
    assert raw.dtype == "uint16" and list(raw[0, 10, ::64]) == [0, 2500, 5000, 10000]


def test_jpeg_webp_accept_bytes_refuse_uint16(synth):
    client, _ = synth
    assert tile(client, fmt="jpeg", scaling="display").headers["content-type"] == "image/jpeg"
    assert tile(client, fmt="webp", scaling="display").status_code == 200
    response = tile(client, fmt="jpeg")
    assert response.status_code == 400
    assert "UInt16" in response.json()["detail"]


def test_scale_2x(synth):
    client, _ = synth
    response = client.get(
        f"/images/synth:one/tiles/WebMercatorQuad/{Z}/{X}/{Y}@2x.png", params={"scaling": "display"}
    )
    assert decode(response.content).shape == (4, 512, 512)


def test_etag_and_conditional_request(synth):
    client, _ = synth
    first = tile(client, scaling="display")
    assert first.headers["cache-control"].startswith("public")
    etag = first.headers["etag"]
    again = client.get(
        f"/images/synth:one/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png",
        params={"scaling": "display"},
        headers={"If-None-Match": etag},
    )
    assert again.status_code == 304 and again.content == b""
    other = tile(client, scaling="auto")
    assert other.headers["etag"] != etag


def test_cache_invalidated_when_product_changes(synth):
    client, _ = synth
    before = tile(client, scaling="display").content
    product = client.get("/products/synth").json()
    product["bands"][0]["display_range"] = [0, 2000]
    assert client.put("/products/synth", json=product).status_code == 200
    after = tile(client, scaling="display").content
    assert before != after
    assert decode(after)[0, 100, 100] == display(2000, 0, 2000)


def test_tiles_reuse_the_open_file_and_see_it_rewritten(synth, tmp_path):
    client, data = synth
    first = decode(tile(client, scaling="display", bands="red").content)
    opened = DATASETS.opened  # red and the alpha band are read at once: two datasets
    for scaling in ("raw", "auto"):
        assert tile(client, scaling=scaling, bands="red").status_code == 200
    assert DATASETS.opened == opened  # two more tiles, no open
    path = tmp_path / "synth.tif"
    brighter = numpy.concatenate([data * 2, numpy.full((1, 256, 256), 255)]).astype("uint16")
    write(path, brighter)
    stat = path.stat()  # a new mtime even on a coarse clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    # nodata=1: another tile-cache key (the catalog did not change, so the cached tile stays)
    second = decode(tile(client, scaling="display", bands="red", nodata=1).content)
    assert DATASETS.opened > opened
    assert second[0, 100, 100] == display(4000) != first[0, 100, 100]


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/images/synth:nope/tiles/WebMercatorQuad/10/550/335.png", {}, 404, "nope"),
        ("/images/nocolon/tiles/WebMercatorQuad/10/550/335.png", {}, 404, "nocolon"),
        ("/images/synth:one/tiles/WebMercatorQuad/10/550/335.png", {"bands": "nir"}, 400, "nir"),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"scaling": "bright"},
            400,
            "bright",
        ),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"scaling": "1,2,3"},
            400,
            "scaling",
        ),
        ("/images/synth:one/tiles/WebMercatorQuad/10/550/335.png", {"scaling": "a,b"}, 400, "a,b"),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"scaling": "{oops"},
            400,
            "JSON",
        ),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"data_type": "Int128"},
            400,
            "Int128",
        ),
        ("/images/synth:one/tiles/WebMercatorQuad/25/0/0.png", {}, 400, "zoom 25"),
        ("/images/synth:one/tiles/WebMercatorQuad/3/9/0.png", {}, 404, "outside"),
        ("/images/synth:one/tiles/WebMercatorQuad/10/0/0.png", {}, 404, "outside"),
        ("/images/synth:one/tiles/NoSuchGrid/10/550/335.png", {}, 404, "NoSuchGrid"),
        ("/images/synth:one/tiles/WebMercatorQuad/10/550/335.gif", {}, 422, "fmt"),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"expression": "red+nir"},
            400,
            "nir",
        ),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"expression": "__import__('os')"},
            400,
            "expression",
        ),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"expression": "red", "colormap_name": "nosuch"},
            400,
            "nosuch",
        ),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"bands": "red,green,blue,red", "scaling": "display"},
            400,
            "bands",
        ),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"processing_level": "nosuch"},
            400,
            "nosuch",
        ),
        ("/images/synth:one/tiles/WebMercatorQuad/10/550/335@9x.png", {}, 400, "@9x"),
        (
            "/images/synth:one/tiles/WebMercatorQuad/10/550/335.png",
            {"resampling": "sideways"},
            422,
            "resampling",
        ),
        *(
            ("/images/synth:one/tiles/WebMercatorQuad/10/550/335.png", {"nodata": v}, 400, "nodata")
            for v in ("nan", "-5", "70000", "inf")
        ),
    ],
)
def test_bad_input_is_a_clear_4xx(synth, path, params, status, words):
    client, _ = synth
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert words.lower() in response.json()["detail"].lower()


def test_remote_image_has_no_tiles(synth):
    client, _ = synth
    remote = {
        "name": "far",
        "product_id": "synth",
        "acquired": "2024-06-02T10:00:00Z",
        "geometry": GEOMETRY,
        "storage_state": "remote",
    }
    assert client.put("/images/synth:far", json=remote).status_code == 200
    response = client.get(f"/images/synth:far/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png")
    assert response.status_code == 409
    assert "remote" in response.json()["detail"]


def test_missing_file_is_a_clear_error(synth, tmp_path):
    client, _ = synth
    gone = {
        "name": "gone",
        "product_id": "synth",
        "acquired": "2024-06-03T10:00:00Z",
        "geometry": GEOMETRY,
        "files": [{"href": str(tmp_path / "missing.tif")}],
    }
    assert client.put("/images/synth:gone", json=gone).status_code == 200
    response = client.get(f"/images/synth:gone/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png")
    assert response.status_code in (409, 424)
    detail = response.json()["detail"]
    assert "file 0 of image 'synth:gone'" in detail and "No such file" in detail
    assert str(tmp_path) not in detail  # errors name files by number, never by server path


def test_tilejson_and_wmts(synth):
    client, _ = synth
    doc = client.get("/images/synth:one/tilejson.json", params={"scaling": "display"}).json()
    assert doc["tiles"][0].endswith(
        "/images/synth:one/tiles/WebMercatorQuad/{z}/{x}/{y}.png?scaling=display"
    )
    assert doc["bounds"] == [13.35, 52.5, 13.71, 52.72]
    assert doc["minzoom"] <= 10 <= doc["maxzoom"]
    xml = client.get("/images/synth:one/WMTSCapabilities.xml").text
    assert "{TileMatrix}/{TileCol}/{TileRow}.png" in xml


def test_class_band_uses_its_colormap(tmp_path, empty_client):
    classes = numpy.zeros((1, 256, 256), dtype="uint8")
    classes[0, :, 128:] = 2
    classes[0, :, :128] = 1
    path = write(tmp_path / "classes.tif", classes)
    product = {
        "id": "landcover",
        "bands": [
            {
                "name": "lc",
                "type": "class",
                "data_type": "Byte",
                "data_range": [0, 2],
                "colormap": [[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 255]],
            }
        ],
    }
    register(empty_client, product, path)
    response = empty_client.get(f"/images/landcover:a/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png")
    pixels = decode(response.content)
    assert tuple(pixels[:, 10, 10]) == (255, 0, 0, 255)
    assert tuple(pixels[:, 10, 200]) == (0, 0, 255, 255)


def test_tif_tile_is_georeferenced(synth):
    client, _ = synth
    with MemoryFile(tile(client, fmt="tif").content) as memfile, memfile.open() as src:
        assert src.crs == rasterio.crs.CRS.from_epsg(3857)
        assert src.width == 256


def test_tilejson_rejects_bad_bands_up_front(synth):
    client, _ = synth
    for params in ({"bands": "nir"}, {"expression": "nir/red"}):
        response = client.get("/images/synth:one/tilejson.json", params=params)
        assert response.status_code == 400 and "nir" in response.json()["detail"]
        response = client.get("/images/synth:one/WMTSCapabilities.xml", params=params)
        assert response.status_code == 400


def test_per_band_scaling_order_is_kept_in_cache_and_urls(synth):
    client, _ = synth
    first = decode(tile(client, bands="red", scaling=["0,4000"]).content)
    swapped = decode(
        tile(client, bands="red,green", fmt="tif", scaling=["0,8000", "0,1000"]).content
    )
    ordered = decode(
        tile(client, bands="red,green", fmt="tif", scaling=["0,1000", "0,8000"]).content
    )
    assert first[0, 60, 10] == display(700)
    assert swapped[0, 60, 10] == display(700, 0, 8000)
    assert ordered[0, 60, 10] == display(700, 0, 1000)
    doc = client.get(
        "/images/synth:one/tilejson.json", params=[("scaling", "0,8000"), ("scaling", "0,1000")]
    ).json()
    assert doc["tiles"][0].endswith("?scaling=0%2C8000&scaling=0%2C1000")
