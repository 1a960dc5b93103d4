"""The Catalog guide's examples through the client against a live server, checked against
values computed here from the catalog's records and the image files (rasterio, numpy)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import numpy
import pytest
import rasterio
from shapely.geometry import box, mapping, shape

from tests.conftest import DEMO_IMAGE, DEMO_TILE, LiveServer, make_settings
from tests.synthetic import TILE, WEB_MERCATOR, write, write_raster
from tileserver.app import create_app
from tileserver.catalog.keys import new_key
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.client import (
    CatalogClient,
    ForbiddenError,
    Image,
    ImageCollection,
    ImageUpload,
    ImageUploadEventType,
    ImageUploadOptions,
    ImageUploadStatus,
    NotFoundError,
    OverviewResampler,
    Product,
    SpectralBand,
)
from tileserver.client import properties as p

PRODUCT = "sentinel-2-l2a"


@pytest.fixture(scope="module")
def cat(live_server) -> CatalogClient:
    client = CatalogClient(live_server.url, api_key="")
    yield client
    client.close()


@pytest.fixture(scope="module")
def records(demo_store):
    """Every demo image as the catalog holds it (read directly, not through the client)."""
    return demo_store.list_images(PRODUCT, limit=1000).images


def aoi() -> dict:
    z, x, y = DEMO_TILE
    west, south, east, north = WEB_MERCATOR.bounds(x, y, z)
    return mapping(box(west, south, east, north))


def test_images_by_geometry_date_and_cloud(cat, records):
    product = Product.get(PRODUCT, client=cat)
    search = (
        product.images()
        .intersects(aoi())
        .filter("2024-05-01" <= p.acquired < "2024-07-01")
        .filter(p.cloud_fraction < 0.05)
        .sort("acquired")
    )
    found = search.collect()
    start, end = datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC)
    expected = sorted(
        (
            r
            for r in records
            if shape(r.geometry).intersects(shape(aoi()))
            and start <= r.acquired < end
            and r.cloud_cover is not None
            and r.cloud_cover < 5
        ),
        key=lambda r: r.acquired,
    )
    assert 0 < len(expected) < len(records)
    assert [i.name for i in found] == [r.name for r in expected]
    assert [i.cloud_fraction for i in found] == pytest.approx(
        [r.cloud_cover / 100 for r in expected]
    )
    assert search.count() == len(expected) == search.summary().count
    assert [i.name for i in search.limit(2)] == [r.name for r in expected[:2]]
    assert isinstance(found, ImageCollection)


def test_summaries_by_month(cat, records):
    summaries = Product.get(PRODUCT, client=cat).images().summary_interval(interval="month")
    expected = Counter(r.acquired.strftime("%Y-%m") for r in records)
    got = {s.interval_start.strftime("%Y-%m"): s.count for s in summaries if s.count}
    assert got == dict(expected)


def demo_band(record, index: int) -> numpy.ndarray:
    """Band `index` (1-based) of the image's first file (its 10 m bands B02 B03 B04 B08)."""
    with rasterio.open(record.files[0].href) as dataset:
        return dataset.read(index)


def test_ndarray_with_each_scaling_form(cat, demo_store):
    record = demo_store.get_image(DEMO_IMAGE)
    b04, b08 = demo_band(record, 3), demo_band(record, 4)
    image = Image.get(DEMO_IMAGE, client=cat)
    valid = (b04 != 0) & (b08 != 0)

    raw = image.ndarray("B04 B08", scaling="raw")
    assert raw.dtype == numpy.uint16 and raw.shape == (2, *b04.shape)
    assert numpy.array_equal(raw.data[:, valid], numpy.stack([b04, b08])[:, valid])
    assert numpy.array_equal(raw.mask[0], ~valid)

    def stretch(values, lo, hi, out_hi):
        return numpy.clip(
            numpy.floor((values.astype(float) - lo) * out_hi / (hi - lo) + 0.5), 0, 255
        )

    display = image.ndarray(["B04", "B08"], scaling="display")
    assert display.dtype == numpy.uint8
    assert numpy.array_equal(display.data[0][valid], stretch(b04, 0, 3000, 255)[valid])
    assert numpy.array_equal(display.data[1][valid], stretch(b08, 0, 5000, 255)[valid])

    physical = image.ndarray("B04", scaling="physical")
    assert physical.dtype == numpy.float64
    assert numpy.allclose(physical.data[0][valid], b04[valid] / 10000)

    ranged = image.ndarray("B04", scaling=(0, 4000, 0, 255), data_type="Byte")
    assert numpy.array_equal(ranged.data[0][valid], stretch(b04, 0, 4000, 255)[valid])

    per_band = image.ndarray("B04 B08", scaling=["display", (0, 5000, 0, 255)], data_type="Byte")
    assert numpy.array_equal(per_band.data[1][valid], stretch(b08, 0, 5000, 255)[valid])

    by_name, info = image.ndarray(
        "B04 B08",
        scaling={"B04": (0, 4000, 0, 255), "default_": "display"},
        raster_info=True,
        bands_axis=-1,
    )
    assert by_name.shape == (*b04.shape, 2)
    assert numpy.array_equal(by_name.data[..., 0][valid], stretch(b04, 0, 4000, 255)[valid])
    assert numpy.array_equal(by_name.data[..., 1][valid], stretch(b08, 0, 5000, 255)[valid])
    assert info["size"] == {"width": b04.shape[1], "height": b04.shape[0]}
    assert [b["name"] for b in info["bands"]] == ["B04", "B08"]

    auto = image.ndarray("B04", scaling="auto")
    # a stretch of B04's own range onto 0..255 (the range may come from an overview, so the
    # extremes can sit a level inside): monotonic in B04 and spanning the output
    assert auto.dtype == numpy.uint8 and auto.min() <= 1 and auto.max() >= 254
    order = numpy.argsort(b04[valid], kind="stable")
    assert (numpy.diff(auto.data[0][valid][order].astype(int)) >= 0).all()

    params = image.scaling_parameters("B04 B08", scaling="display")
    assert params == ([(0, 3000, 0, 255), (0, 5000, 0, 255)], "Byte")


def test_download_writes_the_pixels_where_they_lie(cat, demo_store, tmp_path):
    record = demo_store.get_image(DEMO_IMAGE)
    with rasterio.open(record.files[0].href) as source:
        crs, transform, b04 = source.crs, source.transform, source.read(3)
    image = Image.get(DEMO_IMAGE, client=cat)

    path = image.download("B04", dest=str(tmp_path / "b04.tif"), scaling="raw")
    assert path == str(tmp_path / "b04.tif")
    with rasterio.open(path) as written:
        assert written.crs == crs and written.transform.almost_equals(transform)
        assert written.dtypes == ("uint16",) and written.shape == b04.shape
        assert numpy.array_equal(written.read(1), b04)

    # a coarser grid: same CRS and origin, twice the pixel size, half the pixels
    coarse = image.download("B04", dest=str(tmp_path / "coarse.tif"), resolution=20)
    with rasterio.open(coarse) as written:
        assert written.crs == crs and written.res == (20.0, 20.0)
        assert (written.transform.c, written.transform.f) == pytest.approx(
            (transform.c, transform.f)
        )
        assert written.shape == (round(b04.shape[0] / 2), round(b04.shape[1] / 2))

    # .npy: the same pixels, no georeferencing
    array = numpy.load(
        image.download("B04", dest=str(tmp_path / "b04.npy"), format="npy", scaling="raw")
    )
    assert numpy.array_equal(array.reshape(b04.shape), b04)

    # a collection's download: into a folder, named by image and bands, or to given paths
    collection = ImageCollection([image], client=cat)
    (named,) = collection.download("B04", dest=str(tmp_path / "many"), scaling="raw")
    assert named == str(tmp_path / "many" / f"{DEMO_IMAGE.replace(':', '_')}-B04.tif")
    (given,) = collection.download("B04", dest=[tmp_path / "sub" / "x.npy"], scaling="raw")
    assert numpy.array_equal(numpy.load(given).reshape(b04.shape), b04)
    with rasterio.open(named) as written:
        assert numpy.array_equal(written.read(1), b04) and written.crs == crs


def canvas(records) -> tuple[list[numpy.ndarray], rasterio.Affine]:
    """B04 of each record placed on the grid covering them all (same CRS and pixel size)."""
    opened = []
    for record in records:
        with rasterio.open(record.files[0].href) as dataset:
            opened.append((dataset.transform, dataset.read(3)))
    west = min(t.c for t, _ in opened)
    north = max(t.f for t, _ in opened)
    res = opened[0][0].a
    east = max(t.c + a.shape[1] * res for t, a in opened)
    south = min(t.f - a.shape[0] * res for t, a in opened)
    shape_ = (round((north - south) / res), round((east - west) / res))
    layers = []
    for transform, array in opened:
        layer = numpy.zeros(shape_, array.dtype)
        row, col = round((north - transform.f) / res), round((transform.c - west) / res)
        layer[row : row + array.shape[0], col : col + array.shape[1]] = array
        layers.append(layer)
    return layers, rasterio.Affine(res, 0, west, 0, -res, north)


def newest_on_top(layers: list[numpy.ndarray]) -> numpy.ndarray:
    """Layers in time order composited as the Catalog does: the last valid pixel wins."""
    out = numpy.zeros_like(layers[0])
    for layer in layers:
        out = numpy.where(layer != 0, layer, out)
    return out


def test_stack_flattened_by_month_and_mosaic(cat, records):
    ordered = sorted(records, key=lambda r: r.acquired)
    images = Product.get(PRODUCT, client=cat).images().sort("acquired").collect()
    assert [i.name for i in images] == [r.name for r in ordered]
    layers, _ = canvas(ordered)

    stack = images.stack("B04", scaling="raw", flatten="properties.date.month")
    months = sorted({r.acquired.strftime("%Y-%m") for r in ordered})
    assert stack.shape == (len(months), 1, *layers[0].shape)
    for m, month in enumerate(months):
        members = [
            lay
            for lay, r in zip(layers, ordered, strict=True)
            if r.acquired.strftime("%Y-%m") == month
        ]
        assert numpy.array_equal(stack[m, 0].filled(0), newest_on_top(members))

    june = ImageCollection([i for i in images if i.acquired.month == 6], client=cat)
    mosaic = june.mosaic("B04", scaling="raw")
    # the mosaic's grid covers June's images only: build the expected one from them alone
    june_layers, _ = canvas([r for r in ordered if r.acquired.month == 6])
    assert len(june_layers) > 1
    assert mosaic.shape == (1, *june_layers[0].shape)
    assert numpy.array_equal(mosaic[0].filled(0), newest_on_top(june_layers))


def test_a_collection_from_an_intersects_search_keeps_its_area(cat):
    """As in the Catalog, `collect()` after `intersects(aoi)` makes the AOI the default area
    of the collection's mosaic and stack."""
    images = (
        Product.get(PRODUCT, client=cat)
        .images()
        .intersects(aoi())
        .filter("2024-06-01" <= p.acquired < "2024-07-01")
        .sort("acquired")
        .collect()
    )
    assert images.geocontext == aoi() and images[:1].geocontext == aoi()
    clipped = images.mosaic("B04", scaling="raw")
    plain = ImageCollection(list(images), client=cat)
    assert plain.geocontext is None
    explicit = plain.mosaic("B04", scaling="raw", geocontext=aoi())
    assert numpy.array_equal(clipped.filled(0), explicit.filled(0))
    assert clipped.shape != plain.mosaic("B04", scaling="raw").shape


# --- writing and sharing, with keys ---------------------------------------------------


def footprint() -> dict:
    b = WEB_MERCATOR.bounds(TILE)
    return mapping(box(b.left, b.bottom, b.right, b.top))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("client-keys")
    store = SQLiteStore(folder / "catalog.db")
    tokens = {}
    for user, org in (("alice", "acme"), ("carol", "globex")):
        key, token = new_key(user, org)
        store.put_key(key)
        tokens[user] = token
    grant = [str(folder / "files")]
    settings = make_settings(
        folder,
        key_cache_seconds=0,
        import_grants={"org:acme": grant},
        max_upload_bytes=2_000_000,  # the uploads' limit, reached by one test
    )
    with LiveServer(create_app(settings, store=store)) as server:
        clients = {u: CatalogClient(server.url, api_key=t) for u, t in tokens.items()}
        yield folder, clients, server
        for client in clients.values():
            client.close()
    store.close()


def test_create_search_share_and_read(keyed, monkeypatch):
    folder, clients, server = keyed
    alice, carol = clients["alice"], clients["carol"]
    old = Product(client=alice, id="client-old", name="Old", start_datetime="2015-03-01")
    old.save()
    Product(client=alice, id="client-new", start_datetime="2020-01-01").save()
    assert old.owners == ["user:alice"] and old.state == "saved"
    SpectralBand(
        name="v",
        product=old,
        data_type="UInt16",
        data_range=(0, 1000),
        display_range=(0, 1000),
        nodata=0,
        resolution=10,
    ).save()
    data = numpy.arange(256 * 256, dtype="uint16").reshape(1, 256, 256) % 1000
    path = write(folder / "files" / "v.tif", data)
    Image(
        client=alice,
        product=old,
        name="img",
        acquired="2015-03-02T10:00:00Z",
        geometry=footprint(),
        files=[str(path)],
        cloud_fraction=0.1,
    ).save()

    found = Product.search(client=alice).filter(p.start_datetime < "2016-01-01").sort("id").limit(3)
    assert [q.id for q in found] == ["client-old"]
    assert [b.name for b in Product.get("client-old", client=alice).bands()] == ["v"]
    assert isinstance(Product.get("client-old", client=alice).get_band("v"), SpectralBand)

    # env credentials: a client built from the environment is carol's
    monkeypatch.setenv("TILESERVER_URL", server.url)
    monkeypatch.setenv("TILESERVER_API_KEY", carol.session.headers["Authorization"][7:])
    CatalogClient.set_default_client(None)
    try:
        assert Product.get("client-old") is None
        old.readers = ["org:globex"]
        old.save()
        shared = Product.get("client-old")
        assert shared is not None and shared.readers == ["org:globex"]
        image = shared.get_image("img")
        pixels = image.ndarray("v", scaling="raw")
        valid = data[0] != 0
        assert numpy.array_equal(pixels.data[0][valid], data[0][valid])
        assert numpy.array_equal(pixels.mask[0], ~valid)
        shared.description = "carol was here"
        with pytest.raises(ForbiddenError):
            shared.save()
        assert Product.get_or_create("client-old").state == "saved"
    finally:
        CatalogClient.set_default_client(None)

    image = Image.get("client-old:img", client=alice)
    assert image.cloud_fraction == pytest.approx(0.1)
    image.delete()
    assert Image.get("client-old:img", client=alice) is None
    Product.get("client-old", client=alice).delete()
    assert Product.get("client-old", client=alice) is None


# --- uploads --------------------------------------------------------------------------

UTM = "EPSG:32631"
UTM_ORIGIN = rasterio.Affine(10, 0, 500_000, 0, -10, 5_000_000)


@pytest.fixture(scope="module")
def upload_product(keyed):
    """alice's product with two UInt16 bands, nodata 0, into which images are uploaded."""
    _, clients, _ = keyed
    product = Product(client=clients["alice"], id="client-up", name="Uploads")
    product.save()
    for index, name in enumerate(("red", "nir")):
        SpectralBand(
            name=name,
            product=product,
            band_index=index,
            data_type="UInt16",
            data_range=(0, 10000),
            display_range=(0, 4000),
            nodata=0,
            resolution=10,
        ).save()
    return Product.get("client-up", client=clients["alice"])


def random_pixels(shape, seed) -> numpy.ndarray:
    """Values 1..9999 (0 is nodata), different per pixel."""
    return numpy.random.default_rng(seed).integers(1, 10000, shape, dtype="uint16")


def test_upload_a_file(keyed, upload_product, tmp_path):
    folder, clients, _ = keyed
    data = random_pixels((2, 300, 400), seed=3)
    # outside every folder the server may read: the bytes travel over HTTP
    path = write_raster(tmp_path / "scene.tif", data, UTM, UTM_ORIGIN, nodata=0)
    image = Image(
        product=upload_product,
        name="scene",
        acquired="2024-05-03T10:00:00Z",
        cloud_fraction=0.25,
        extra_properties={"mission": "synthetic"},
    )
    options = ImageUploadOptions(overviews=[2, 4], overview_resampler=OverviewResampler.AVERAGE)
    upload = image.upload(str(path), upload_options=options)
    assert isinstance(upload, ImageUpload) and upload.image_id == "client-up:scene"
    assert upload.status in (
        ImageUploadStatus.PENDING,
        ImageUploadStatus.RUNNING,
        ImageUploadStatus.SUCCESS,
    )
    upload.wait_for_completion(timeout=60)
    assert upload.status == ImageUploadStatus.SUCCESS, upload.errors
    assert upload.errors == []
    assert upload.events[-1].event_type == ImageUploadEventType.COMPLETE

    got = Image.get("client-up:scene", client=clients["alice"])
    assert got.cloud_fraction == pytest.approx(0.25)
    assert got.acquired == datetime(2024, 5, 3, 10, tzinfo=UTC)
    assert got.extra_properties["mission"] == "synthetic"
    assert (got.x_pixels, got.y_pixels) == (400, 300)
    assert got.geotrans == pytest.approx(UTM_ORIGIN.to_gdal())
    raw = got.ndarray("red nir", scaling="raw")
    assert numpy.array_equal(raw.data, data) and not raw.mask.any()
    # the COG the server wrote has the overviews asked for
    (cog,) = (folder / "cogs" / "client-up").glob("upload-*.tif")
    with rasterio.open(cog) as written:
        assert written.overviews(1) == [2, 4]

    # the same name again: refused before any byte is sent (as the Catalog does)
    with pytest.raises(ValueError, match="already exists"):
        Image(product=upload_product, name="scene", acquired="2024-05-04").upload(str(path))
    # one file per image
    with pytest.raises(NotImplementedError, match="one file"):
        Image(product=upload_product, name="two", acquired="2024-05-04").upload([path, path])


def test_upload_an_ndarray_placed_by_raster_info(keyed, upload_product):
    _, clients, _ = keyed
    alice = clients["alice"]
    source = Image.get("client-up:scene", client=alice) or pytest.skip("needs test_upload_a_file")
    # the Catalog's idiom: pixels and their raster_info, changed, uploaded as a new image
    pixels, info = source.ndarray("red nir", scaling="raw", raster_info=True)
    changed = (pixels.data // 2 + 1).astype("uint16")
    image = Image(product=upload_product, name="halved", acquired="2024-06-01T00:00:00Z")
    upload = image.upload_ndarray(
        changed, raster_meta=info, overviews=[2], overview_resampler="nearest"
    )
    upload.wait_for_completion(timeout=60)
    assert upload.status == ImageUploadStatus.SUCCESS, upload.errors

    got = Image.get("client-up:halved", client=alice)
    assert got.geotrans == pytest.approx(tuple(info["geoTransform"]))
    assert got.geotrans == pytest.approx(UTM_ORIGIN.to_gdal())
    assert numpy.array_equal(got.ndarray("red nir", scaling="raw").data, changed)
    # placed by the image's own cs_code and geotrans, one band given as (rows, cols)
    single = Image(
        product=upload_product,
        name="placed",
        acquired="2024-06-02T00:00:00Z",
        cs_code=UTM,
        geotrans=UTM_ORIGIN.to_gdal(),
    )
    with pytest.raises(ValueError, match="geotrans"):
        Image(product=upload_product, name="nowhere", acquired="2024-06-02").upload_ndarray(changed)
    with pytest.raises(ValueError, match="data type"):
        single.upload_ndarray(changed.astype("int64"))

    # the uploads are listed per product and per image, newest first
    uploads = upload_product.image_uploads().collect()
    assert [u.image_id for u in uploads][:2] == ["client-up:halved", "client-up:scene"]
    done = upload_product.image_uploads().filter(p.status == ImageUploadStatus.SUCCESS)
    assert {u.image_id for u in done} >= {"client-up:halved", "client-up:scene"}
    assert [u.id for u in got.image_uploads()] == [upload.id]
    assert ImageUpload.get(upload.id, client=alice).status == ImageUploadStatus.SUCCESS


def test_a_failed_upload_says_why_and_registers_nothing(keyed, upload_product, tmp_path):
    _, clients, _ = keyed
    bad = tmp_path / "notes.tif"
    bad.write_bytes(b"not a raster at all")
    upload = Image(product=upload_product, name="bad", acquired="2024-05-05").upload(bad)
    upload.wait_for_completion(timeout=60)
    assert upload.status == ImageUploadStatus.FAILURE
    assert "not a raster" in upload.errors[-1]
    assert upload.events[-1].event_type == ImageUploadEventType.ERROR
    assert str(tmp_path) not in str(upload.errors)
    assert Image.get("client-up:bad", client=clients["alice"]) is None

    one_band = write_raster(tmp_path / "one.tif", random_pixels((1, 64, 64), 4), UTM, UTM_ORIGIN)
    with open(one_band, "rb") as f:  # an open file works as a path does
        upload = Image(product=upload_product, name="one", acquired="2024-05-05").upload(f)
    upload.wait_for_completion(timeout=60)
    assert upload.status == ImageUploadStatus.FAILURE and "nir" in upload.errors[-1]
    assert Image.get("client-up:one", client=clients["alice"]) is None

    # over the server's upload limit: the upload fails with the reason, not an exception
    big = Image(
        product=upload_product,
        name="big",
        acquired="2024-05-05",
        cs_code=UTM,
        geotrans=UTM_ORIGIN.to_gdal(),
    )
    upload = big.upload_ndarray(numpy.ones((2, 1000, 1000), "uint16"))
    assert upload.status == ImageUploadStatus.FAILURE
    assert "2000000 bytes" in upload.errors[-1]
    assert Image.get("client-up:big", client=clients["alice"]) is None


def test_only_writers_upload_and_a_reader_sees_the_image_once_shared(keyed, upload_product):
    _, clients, _ = keyed
    carol = clients["carol"]
    array = random_pixels((2, 32, 32), 5)
    attempt = Image(
        client=carol,
        product="client-up",
        name="carols",
        acquired="2024-07-01",
        cs_code=UTM,
        geotrans=UTM_ORIGIN.to_gdal(),
    )
    with pytest.raises(NotFoundError):  # the product is hidden from carol: 404, not 403
        attempt.upload_ndarray(array)
    assert Image.get("client-up:scene", client=carol) is None
    upload_product.readers = ["org:globex"]
    upload_product.save()
    try:
        seen = Image.get("client-up:scene", client=carol)
        assert seen is not None and seen.ndarray("red", scaling="raw").shape == (1, 300, 400)
        with pytest.raises(ForbiddenError):  # a reader may not add images
            attempt.upload_ndarray(array)
        # nor see alice's upload records
        mine = upload_product.image_uploads().collect()
        assert mine and ImageUpload.get(mine[0].id, client=carol) is None
        assert list(Product.get("client-up", client=carol).image_uploads()) == []
    finally:
        upload_product.readers = []
        upload_product.save()
