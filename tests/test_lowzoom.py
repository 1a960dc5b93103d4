"""Single images without overviews at every zoom: reduced copies made at ingest (pyramids.py).

The references are worked out with GDAL's own warper on the full-resolution file, not
through the server's readers; the read bound is measured as the bytes the process reads
(Linux /proc/self/io), so it counts whatever GDAL really fetched.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy
import pytest
import rasterio
from click.testing import CliRunner
from morecantile import tms as tms_registry
from rasterio.enums import Resampling
from rasterio.transform import from_bounds, from_origin
from rasterio.warp import reproject
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from tileserver import pyramids
from tileserver.catalog.sqlite import SQLiteStore
from tileserver.cli import cli
from tileserver.ingest.imports import ImportRequest, run_import
from tileserver.opener import DATASETS, Confinement, confined, reading
from tileserver.render.reader import read_bands, tile_reader, zoom_range

WEB = tms_registry.get("WebMercatorQuad")
WHEN = datetime(2024, 6, 1, tzinfo=UTC)
CRS = "EPSG:32633"
ORIGIN = (400000.0, 5800000.0)  # UTM 33N, northern Germany
PIXEL = 10.0


def blocky(rows: numpy.ndarray, cols: numpy.ndarray) -> numpy.ndarray:
    """Constant 64 px squares of distinct values: a misplaced tile lands on other squares."""
    return ((rows // 64) * 37 + (cols // 64) * 11) % 3000 + 1


def write_scene(path: Path, size: int, values) -> Path:
    """A tiled, uncompressed, one-band uint16 GeoTIFF without overviews, nodata 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint16",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, PIXEL, PIXEL),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            rows, cols = numpy.mgrid[row : min(size, row + 512), 0:size]
            dst.write(values(rows, cols).astype("uint16")[None], window=Window(0, row, size, 512))
    return path


def ingest(tmp_path: Path, name: str, size: int, values):
    """The scene imported as product `name`: (store, confinement, image)."""
    folder = tmp_path / f"in-{name}"
    write_scene(folder / "scene.tif", size, values)
    data = tmp_path / "data"
    store = SQLiteStore(tmp_path / "catalog.db")
    confinement = Confinement(data_dir=data)
    request = ImportRequest(cloud_provider="file", bucket_name=str(folder), product=name)
    with confined(confinement), reading(confinement.operator()):
        result = run_import(store, request, data, when=WHEN, confinement=confinement)
    assert not result.failed, result.failed
    return store, confinement, store.list_images(name).images[0]


def reduced_copies(data: Path, product: str) -> list[Path]:
    return sorted(pyramids.reduced_folder(data, product).glob("*.tif"))


def read_tile_band(image, product, z: int, x: int, y: int):
    bands = [product.bands[0]]
    return read_bands(image, bands, tile_reader(x, y, z, 256, "nearest"), WEB, threads=1).array[0]


@pytest.fixture(scope="module")
def blocky_scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blocky")
    store, confinement, image = ingest(tmp, "blocky", 2048, blocky)
    yield store, confinement, image
    store.close()


def test_import_writes_a_reduced_copy_beside_nothing_of_the_source(blocky_scene):
    store, confinement, image = blocky_scene
    copies = reduced_copies(confinement.data_dir, "blocky")
    assert len(copies) == 1
    with rasterio.open(copies[0]) as copy, rasterio.open(image.files[0].href) as src:
        assert (copy.width, copy.height) == (1024, 1024)
        assert copy.bounds == pytest.approx(src.bounds)
        assert copy.overviews(1)  # down to one block: every coarser zoom reads an overview
        assert copy.nodata == 0
        assert not src.overviews(1)  # the source is untouched
    assert sorted(p.name for p in Path(image.files[0].href).parent.iterdir()) == ["scene.tif"]


def neighbourhood_range(href: str, z: int, x: int, y: int, rows, cols):
    """Independently: for tile pixels (rows, cols), the min and max of the full-resolution
    pixels within one tile pixel of each (the 3 x 3 tile pixels around it, projected to
    the file's grid with pyproj through rasterio, bounding box taken)."""
    left, _, _, top = WEB.xy_bounds(x, y, z)
    size = (WEB.xy_bounds(x, y, z)[2] - left) / 256
    with rasterio.open(href) as src:
        full = src.read(1)
        inverse = ~src.transform
        low, high = [], []
        for r, c in zip(rows, cols, strict=True):
            xs = [left + (c + dc) * size for dc in (-1, 2, -1, 2)]
            ys = [top - (r + dr) * size for dr in (-1, -1, 2, 2)]
            ex, ny = transform_points(WEB.rasterio_crs, src.crs, xs, ys)
            px, py = zip(*(inverse * p for p in zip(ex, ny, strict=True)), strict=True)
            c0, c1 = max(0, int(numpy.floor(min(px)))), min(src.width, int(numpy.ceil(max(px))))
            r0, r1 = max(0, int(numpy.floor(min(py)))), min(src.height, int(numpy.ceil(max(py))))
            window = full[r0:r1, c0:c1]
            window = window[window != 0]
            low.append(window.min() if window.size else numpy.inf)
            high.append(window.max() if window.size else -numpy.inf)
    return numpy.array(low), numpy.array(high)


def valid_reference(href: str, z: int, x: int, y: int) -> numpy.ndarray:
    """The tile pixels whose centre falls on the file's valid pixels (GDAL nearest warp)."""
    valid = numpy.zeros((256, 256), dtype="uint8")
    with rasterio.open(href) as src:
        reproject(
            src.dataset_mask(),
            valid,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=from_bounds(*WEB.xy_bounds(x, y, z), 256, 256),
            dst_crs=WEB.rasterio_crs,
            resampling=Resampling.nearest,
        )
    return valid > 0


@pytest.mark.parametrize("z", [3, 6, 8, 9, 10, 11])
def test_low_zoom_tiles_match_the_full_resolution_image_warped(blocky_scene, z):
    """From the reduced copy (coarser than 2 file pixels per tile pixel, z <= 11 here), a
    tile pixel holds the value of a file pixel within one tile pixel of its own place:
    nearest resampling of a half-resolution copy and its overviews moves a value by less
    than one overview pixel, which is at most one tile pixel. A misplaced or wrongly
    scaled tile lands on other 64 px squares."""
    store, confinement, image = blocky_scene
    product = store.get_product("blocky")
    west, south, east, north = image.bbox
    tiles = list(WEB.tiles(west, south, east, north, [z]))[:4]  # tiles() pads a little
    checked = 0
    with confined(confinement):
        for tile in tiles:
            got = read_tile_band(image, product, z, tile.x, tile.y)
            href = image.files[0].href
            mask = numpy.ma.getmaskarray(got)
            valid = valid_reference(href, z, tile.x, tile.y)
            assert (valid == ~mask).mean() >= 0.99, (tile, (valid == ~mask).mean())
            rows, cols = numpy.nonzero(~mask)
            pick = numpy.random.default_rng(z).permutation(rows.size)[:2000]
            rows, cols = rows[pick], cols[pick]
            low, high = neighbourhood_range(href, z, tile.x, tile.y, rows, cols)
            values = got.data[rows, cols].astype(float)
            inside = (low <= values) & (values <= high)
            checked += values.size
            assert not values.size or inside.mean() >= 0.99, (tile, inside.mean())
    assert z < 6 or checked > 0


def bytes_read() -> int:
    """Bytes this process has read through system calls (Linux)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def noise(rows: numpy.ndarray, cols: numpy.ndarray) -> numpy.ndarray:
    """Pixels that do not compress: the bytes read are the pixels read."""
    seed = int(rows[0, 0]) * 7919 + int(cols[0, 0])
    return numpy.random.default_rng(seed).integers(1, 65535, size=rows.shape)


TILE_BYTES = 256 * 256 * 2  # one uint16 output tile
READ_BOUND = 16 * TILE_BYTES  # a few times the output (the overview blocks a tile meets)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/io")
def test_no_zoom_reads_more_than_a_few_times_its_pixels(tmp_path):
    """Every zoom from 0 to the image's maximum reads at most READ_BOUND bytes of a
    4096 px file without overviews (32 MB); without the reduced copy the same tiles read
    the whole file, so the measure can fail."""
    store, confinement, image = ingest(tmp_path, "noise", 4096, noise)
    product = store.get_product("noise")
    west, south, east, north = image.bbox
    lon, lat = (west + east) / 2, (south + north) / 2
    with confined(confinement), reading(confinement.operator("noise")):
        maxzoom = zoom_range(image, WEB)[1]

        def cold_read(z: int) -> int:
            DATASETS.clear()  # no open dataset, no block of it cached
            tile = WEB.tile(lon, lat, z)
            before = bytes_read()
            got = read_tile_band(image, product, z, tile.x, tile.y)
            assert z < 6 or (~numpy.ma.getmaskarray(got)).any()  # a pixel or more from z6
            return bytes_read() - before

        read = {z: cold_read(z) for z in range(maxzoom + 1)}
        print({z: round(n / TILE_BYTES, 2) for z, n in read.items()})  # in output tiles
        assert max(read.values()) <= READ_BOUND, read
        for copy in reduced_copies(confinement.data_dir, "noise"):
            copy.unlink()
        without = cold_read(maxzoom - 4)
        assert without > 16 * 1024 * 1024, without  # the whole file, minus what it skips
    store.close()


def test_overviews_command_makes_what_is_missing(tmp_path, monkeypatch):
    store, confinement, image = ingest(tmp_path, "late", 1024, blocky)
    store.close()
    copies = reduced_copies(confinement.data_dir, "late")
    assert len(copies) == 1
    copies[0].unlink()  # a catalog filled before imports made copies
    monkeypatch.setenv("TILESERVER_DATA_DIR", str(confinement.data_dir))
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = CliRunner().invoke(cli, ["overviews", "--catalog", url, "--quiet"])
    assert result.exit_code == 0, result.output
    assert '"written": 1' in result.output
    assert [p.name for p in reduced_copies(confinement.data_dir, "late")] == [copies[0].name]
    again = CliRunner().invoke(cli, ["overviews", "--catalog", url, "--quiet"])
    assert '"written": 0, "up_to_date": 1' in again.output


def test_a_file_rewritten_in_place_is_read_instead_of_its_outdated_copy(tmp_path):
    store, confinement, image = ingest(tmp_path, "rewritten", 1024, blocky)
    product = store.get_product("rewritten")
    west, south, east, north = image.bbox
    tile = WEB.tile((west + east) / 2, (south + north) / 2, 9)  # 4+ file pixels per tile pixel

    def values():
        DATASETS.clear()
        with confined(confinement):
            got = read_tile_band(image, product, 9, tile.x, tile.y)
        return set(numpy.unique(got.compressed()).tolist())

    assert len(values()) > 1  # the squares, from the copy
    write_scene(Path(image.files[0].href), 1024, lambda rows, cols: rows * 0 + 777)
    assert values() == {777}  # the new pixels: the copy of the old ones is not read
    assert len(reduced_copies(confinement.data_dir, "rewritten")) == 1  # kept until replaced
    store.close()
