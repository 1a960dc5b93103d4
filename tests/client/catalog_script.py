"""A script written for the Descartes Labs Catalog client (descarteslabs 3.x), as its users
wrote them: a product with bands, GeoTIFF uploads, searches by date, area and cloud,
monthly summaries, pixels with each scaling form, a stack by month, a mosaic, a download, an
array upload and sharing. tests/client/test_port.py runs it against tileserver after
changing only its import line (and the credentials in the environment).

Writes results.json and arrays.npz into the working directory.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from descarteslabs.catalog import (
    Image,
    ImageUploadStatus,
    Product,
    SpectralBand,
)
from descarteslabs.catalog import properties as p
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from shapely.geometry import box

PRODUCT_ID = sys.argv[1] if len(sys.argv) > 1 else "port-demo"
SHARE_WITH = sys.argv[2] if len(sys.argv) > 2 else "org:globex"
CRS = "EPSG:32631"
X0, Y0, SIZE, STEP = 500_000, 5_000_000, 64, 480  # scene i starts STEP m east of i-1
SCENES = [  # name, acquired, cloud fraction
    ("s0", "2024-05-03T10:00:00Z", 0.10),
    ("s1", "2024-05-20T10:00:00Z", 0.50),
    ("s2", "2024-06-02T10:00:00Z", 0.05),
    ("s3", "2024-06-25T10:00:00Z", 0.15),
]


def scene_pixels(index):
    """Red and NIR of scene `index`: 1..9999, the first scene's top rows nodata (0)."""
    data = np.random.default_rng(index).integers(1, 10000, (2, SIZE, SIZE), dtype="uint16")
    if index == 0:
        data[:, :8, :] = 0
    return data


# a product and its bands
product = Product.get_or_create(PRODUCT_ID, name="Port demo", start_datetime="2024-01-01")
product.save()
for band_index, name in enumerate(["red", "nir"]):
    SpectralBand.get_or_create(
        name,
        product=product,
        band_index=band_index,
        data_type="UInt16",
        data_range=(0, 10000),
        display_range=(0, 4000),
        nodata=0,
        resolution=10,
    ).save()

# upload the scenes as GeoTIFF files
uploads = []
with tempfile.TemporaryDirectory() as folder:
    for index, (name, acquired, cloud) in enumerate(SCENES):
        path = str(Path(folder) / f"{name}.tif")
        transform = from_origin(X0 + index * STEP, Y0, 10, 10)
        profile = dict(driver="GTiff", count=2, width=SIZE, height=SIZE, dtype="uint16")
        with rasterio.open(path, "w", crs=CRS, transform=transform, nodata=0, **profile) as dst:
            dst.write(scene_pixels(index))
        image = Image(product=product, name=name, acquired=acquired, cloud_fraction=cloud)
        uploads.append(image.upload(path))
    for upload in uploads:
        upload.wait_for_completion(timeout=120)
assert all(u.status == ImageUploadStatus.SUCCESS for u in uploads), [u.errors for u in uploads]

# search products by date
products = Product.search().filter(p.start_datetime < "2025-01-01").sort("id").limit(10)
product_ids = [q.id for q in products]

# images by area, date and cloud
aoi = box(*transform_bounds(CRS, "EPSG:4326", X0 + 1000, Y0 - 500, X0 + 1500, Y0 - 100))
search = (
    product.images()
    .intersects(aoi)
    .filter("2024-05-01" <= p.acquired < "2024-07-01")
    .filter(p.cloud_fraction < 0.2)
    .sort("acquired")
)
found = search.collect()
monthly = product.images().summary_interval(interval="month")

# pixels of the first match with each scaling form
image = found[0]
raw, info = image.ndarray("red nir", scaling="raw", raster_info=True)
display = image.ndarray("red nir", scaling="display")
ranged = image.ndarray("red", scaling=(0, 8000, 0, 255), data_type="Byte")
by_band = image.ndarray("red nir", scaling={"red": (0, 8000), "default_": "display"})

# a stack by month and a mosaic of every scene, and a download
everything = product.images().sort("acquired").collect()
stack = everything.stack("red", scaling="raw", flatten="properties.date.month")
mosaic = everything.mosaic("red", scaling="raw")
downloaded = found[-1].download("red nir", dest="last.tif", scaling="raw")

# an array derived from the first match, uploaded as a new image where it lies
half = (raw.filled(0) // 2 + 1).astype("uint16")
derived = Image(product=product, name="s2-half", acquired=image.acquired)
upload = derived.upload_ndarray(half, raster_meta=info, overviews=[2], overview_resampler="average")
upload.wait_for_completion(timeout=120)
back = Image.get(f"{PRODUCT_ID}:s2-half").ndarray("red nir", scaling="raw")

# share the product with another organisation
product.readers = [SHARE_WITH]
product.save()

results = {
    "product_ids": product_ids,
    "found": [i.name for i in found],
    "count": search.count(),
    "monthly": {s.interval_start.strftime("%Y-%m"): s.count for s in monthly if s.count},
    "stack_shape": list(stack.shape),
    "mosaic_shape": list(mosaic.shape),
    "downloaded": downloaded,
    "derived_upload": str(upload.status),
    "uploads": sorted(str(u.status) for u in product.image_uploads()),
    "readers": Product.get(PRODUCT_ID).readers,
}
Path("results.json").write_text(json.dumps(results, indent=1))
np.savez(
    "arrays.npz",
    raw=raw.filled(0),
    display=display.filled(0),
    ranged=ranged.filled(0),
    by_band=by_band.filled(0),
    stack=stack.filled(0),
    mosaic=mosaic.filled(0),
    back=back.filled(0),
)
print(json.dumps(results))
