"""Deterministic demo data: a Sentinel-2 L2A-like product over one UTM area.

Eight dates, 10 km x 10 km in EPSG:32633: B02 B03 B04 B08 at 10 m (one COG), B11 and
the SCL class band at 20 m (one COG each), STAC items beside them. Some dates are
cloudy (SCL 8/9 with shadows 3), some have a slanted orbit edge of nodata, and two
are shifted east so footprints only partly overlap. Same seed, same bytes, every run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.shutil import copy as copy_dataset

from tileserver.catalog.models import Band, Product, Resolution
from tileserver.catalog.store import CatalogStore, NotFound
from tileserver.ingest.safe import SCL_CLASSES, scl_legend

PRODUCT_ID = "sentinel-2-l2a"
VERSION = "1"  # bump when the generated data changes
CRS = "EPSG:32633"
ORIGIN = (500000.0, 5800000.0)  # upper-left corner, near 52.3 N 15.0 E
SIZE = 1024  # pixels at 10 m
DATES = [
    datetime(2024, 5, 3, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 5, 13, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 5, 23, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 6, 2, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 6, 12, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 6, 22, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 7, 2, 10, 20, 31, tzinfo=UTC),
    datetime(2024, 7, 12, 10, 20, 31, tzinfo=UTC),
]
# per date: cloud blobs, orbit edge (nodata on the left), east shift in 10 m pixels
SCENARIO = [
    (0, False, 0),
    (6, False, 0),
    (0, True, 0),
    (14, False, 256),
    (0, False, 0),
    (3, True, 256),
    (0, False, 0),
    (9, False, 0),
]
# surface reflectance x 10000 per land cover: B02 B03 B04 B08 B11
REFLECTANCE = {
    "vegetation": (300, 600, 350, 3800, 1900),
    "bare": (900, 1200, 1500, 2200, 2900),
    "water": (500, 450, 300, 150, 80),
    "urban": (1300, 1400, 1500, 2000, 2300),
}
SCL = {
    "nodata": 0,
    "shadow": 3,
    "vegetation": 4,
    "bare": 5,
    "water": 6,
    "urban": 5,
    "cloud_medium": 8,
    "cloud_high": 9,
}
SPECTRAL = [  # name, center wavelength nm, resolution m
    ("B02", 492.4, 10),
    ("B03", 559.8, 10),
    ("B04", 664.6, 10),
    ("B08", 832.8, 10),
    ("B11", 1613.7, 20),
]


def demo_product() -> Product:
    """The demo product with Catalog band attributes (reflectance x 10000, physical 0..1)."""
    bands = []
    for i, (name, center, res) in enumerate(SPECTRAL):
        bands.append(
            Band(
                name=name,
                type="spectral",
                data_type="UInt16",
                nodata=0,
                data_range=(0, 10000),
                display_range=(0, 3000) if name in ("B02", "B03", "B04") else (0, 5000),
                physical_range=(0, 1),
                physical_range_unit="reflectance",
                resolution=Resolution(value=res),
                file_index=0 if res == 10 else 1,
                band_index=i if res == 10 else 0,
                wavelength_nm_center=center,
            )
        )
    colormap, labels = scl_legend()
    bands.append(
        Band(
            name="SCL",
            type="class",
            data_type="Byte",
            nodata=0,
            data_range=(0, 11),
            resolution=Resolution(value=20),
            file_index=2,
            band_index=0,
            colormap=colormap,
            class_labels=labels,
        )
    )
    return Product(
        id=PRODUCT_ID,
        name="Sentinel-2 L2A (demo)",
        description="Generated demo data shaped like Sentinel-2 L2A surface reflectance.",
        default_bands=["B04", "B03", "B02"],
        bands=bands,
        readers=["public"],
    )


def landscape(rng: numpy.random.Generator, size: int) -> numpy.ndarray:
    """Land cover per 10 m pixel: fields in blocks, a river, a town."""
    block = 64
    kinds = numpy.array(["vegetation", "bare", "vegetation", "urban"])
    fields = rng.choice(len(kinds) - 1, size=(size // block, size // block), p=[0.55, 0.3, 0.15])
    cover = numpy.kron(fields, numpy.ones((block, block), dtype=int))
    rows, cols = numpy.mgrid[0:size, 0:size]
    cover[(numpy.hypot(rows - 700, cols - 300) < 90)] = 3  # town
    river = numpy.abs(cols - (size * 0.6 + 80 * numpy.sin(rows / 90.0))) < 12
    cover = numpy.where(river, 4, cover)
    return numpy.array(["vegetation", "bare", "vegetation", "urban", "water"])[cover]


def clouds(rng: numpy.random.Generator, count: int, size: int) -> numpy.ndarray:
    """Cloud opacity 0..1 from gaussian blobs."""
    opacity = numpy.zeros((size, size))
    rows, cols = numpy.mgrid[0:size, 0:size]
    for _ in range(count):
        r, c = rng.uniform(0, size, 2)
        radius = rng.uniform(30, 110)
        opacity += numpy.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * radius**2))
    return numpy.clip(opacity, 0, 1)


def scene_arrays(index: int, cover: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """10 m reflectances (5 bands, B11 still at 10 m) and the 10 m SCL of one date."""
    rng = numpy.random.default_rng(1000 + index)
    n_clouds, orbit_edge, _ = SCENARIO[index]
    size = cover.shape[0]
    season = index / (len(DATES) - 1)  # vegetation greens up through the series
    refl = numpy.zeros((5, size, size))
    for kind, values in REFLECTANCE.items():
        where = cover == kind
        values = numpy.array(values, dtype=float)
        if kind == "vegetation":
            values = values * numpy.array([1.0, 1.0, 1.2 - 0.4 * season, 0.6 + 0.5 * season, 1.0])
        refl[:, where] = values[:, None]
    refl *= rng.normal(1.0, 0.04, size=(1, size, size))
    scl = numpy.vectorize(SCL.get)(cover).astype("uint8")
    if n_clouds:
        opacity = clouds(rng, n_clouds, size)
        shadow = numpy.roll(opacity, (40, 40), axis=(0, 1)) > 0.5
        shadow &= opacity < 0.3
        refl[:, shadow] *= 0.45
        scl[shadow] = SCL["shadow"]
        refl = refl * (1 - opacity) + 7500 * opacity
        scl[opacity > 0.4] = SCL["cloud_medium"]
        scl[opacity > 0.7] = SCL["cloud_high"]
    if orbit_edge:
        rows, cols = numpy.mgrid[0:size, 0:size]
        outside = cols < 180 + rows * 0.35
        refl[:, outside] = 0
        scl[outside] = SCL["nodata"]
    data = numpy.clip(numpy.rint(refl), 1, 10000).astype("uint16")
    data[:, scl == SCL["nodata"]] = 0
    return data, scl


def write_cog(path: Path, data: numpy.ndarray, transform: Affine, descriptions, nodata) -> None:
    """Write a COG (deflate, internal overviews) through an in-memory GTiff."""
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype,
        "crs": CRS,
        "transform": transform,
        "nodata": nodata,
    }
    with MemoryFile() as memfile, memfile.open(**profile) as mem:
        mem.write(data)
        for i, description in enumerate(descriptions, start=1):
            mem.set_band_description(i, description)
        copy_dataset(
            mem,
            path,
            driver="COG",
            compress="DEFLATE",
            blocksize=256,
            overview_resampling="nearest",
        )


def stac_item(name: str, when: datetime, footprint: dict, bbox, cloud: float, hrefs) -> dict:
    """A STAC 1.0 item with eo/raster/classification band metadata."""

    def raster(name_):
        return {"data_type": "uint16", "nodata": 0, "scale": 0.0001, "offset": 0}

    ten = [n for n, _, r in SPECTRAL if r == 10]
    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    centers = {n: c / 1000 for n, c, _ in SPECTRAL}
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
        ],
        "id": name,
        "geometry": footprint,
        "bbox": list(bbox),
        "properties": {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eo:cloud_cover": cloud,
            "platform": "sentinel-2a",
            "constellation": "sentinel-2",
            "proj:epsg": 32633,
        },
        "links": [],
        "assets": {
            "bands_10m": {
                "href": hrefs[0],
                "type": cog,
                "roles": ["data"],
                "gsd": 10,
                "eo:bands": [{"name": n, "center_wavelength": centers[n]} for n in ten],
                "raster:bands": [raster(n) for n in ten],
            },
            "B11": {
                "href": hrefs[1],
                "type": cog,
                "roles": ["data"],
                "gsd": 20,
                "eo:bands": [{"name": "B11", "center_wavelength": centers["B11"]}],
                "raster:bands": [raster("B11")],
            },
            "SCL": {
                "href": hrefs[2],
                "type": cog,
                "roles": ["data"],
                "gsd": 20,
                "raster:bands": [{"data_type": "uint8", "nodata": 0}],
                "classification:classes": [
                    {"value": v, "name": label, **({"color_hint": c.upper()} if c else {})}
                    for v, label, c in SCL_CLASSES
                ],
            },
        },
    }


def generate(folder: Path) -> list[Path]:
    """Write the demo scenes (COGs + STAC items) into `folder`; returns the item paths."""
    from tileserver.ingest.raster import footprint
    from tileserver.opener import Confinement, open_raster

    folder.mkdir(parents=True, exist_ok=True)
    cover = landscape(numpy.random.default_rng(42), SIZE)
    items = []
    for index, when in enumerate(DATES):
        n_clouds, _, shift = SCENARIO[index]
        name = f"S2A_MSIL2A_{when:%Y%m%dT%H%M%S}_T33UVU"
        scene = folder / name
        scene.mkdir(exist_ok=True)
        data, scl = scene_arrays(index, numpy.roll(cover, -shift, axis=1))
        x0 = ORIGIN[0] + shift * 10
        t10 = Affine(10, 0, x0, 0, -10, ORIGIN[1])
        t20 = Affine(20, 0, x0, 0, -20, ORIGIN[1])
        b11 = data[4].reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3))
        b11 = numpy.where(scl[::2, ::2] == 0, 0, numpy.rint(b11)).astype("uint16")
        write_cog(scene / "bands_10m.tif", data[:4], t10, ["B02", "B03", "B04", "B08"], 0)
        write_cog(scene / "B11.tif", b11[None], t20, ["B11"], 0)
        write_cog(scene / "SCL.tif", scl[::2, ::2][None], t20, ["SCL"], 0)
        with open_raster(str(scene / "bands_10m.tif"), Confinement(folder).operator()) as src:
            geometry = footprint(src)
        from shapely.geometry import shape

        valid = scl != 0
        cloudy = numpy.isin(scl, (3, 8, 9, 10)) & valid
        cloud = round(100 * cloudy.sum() / max(valid.sum(), 1), 2)
        item = stac_item(
            name,
            when,
            geometry,
            shape(geometry).bounds,
            cloud,
            ["bands_10m.tif", "B11.tif", "SCL.tif"],
        )
        path = scene / f"{name}.json"
        path.write_text(json.dumps(item, indent=2))
        items.append(path)
    (folder / "VERSION").write_text(VERSION)
    return items


def ensure_demo(store: CatalogStore, folder: Path, progress: bool = True) -> str:
    """Generate the demo data unless present and register it; returns the product id."""
    from tileserver.ingest.imports import ImportRequest, run_import

    if (folder / "VERSION").exists() and (folder / "VERSION").read_text() == VERSION:
        items = sorted(folder.glob("*/*.json"))
    else:
        items = generate(folder)
    try:
        store.get_product(PRODUCT_ID)
        if store.count_images(PRODUCT_ID) == len(items):
            return PRODUCT_ID
    except NotFound:
        store.create_product(demo_product())
    request = ImportRequest(cloud_provider="file", bucket_name=str(folder), product=PRODUCT_ID)
    report = run_import(store, request, folder, progress=progress)
    if report.failed:
        raise RuntimeError(f"demo ingest failed: {report.failed}")
    return PRODUCT_ID
