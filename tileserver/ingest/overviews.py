"""Write the reduced copies of tileserver/pyramids.py: at ingest, and for existing catalogs.

The source is read once, in strips, at half its resolution (nearest: class bands keep
their classes, as the demo's COG overviews do), with its nodata and its mask, into a
GTiff under a staging folder, then copied to a COG whose internal overviews go down to
one block. Only `os.replace` puts it where tiles look, so a reader sees no copy or a
whole one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.shutil
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

from tileserver import pyramids
from tileserver.catalog.models import Image
from tileserver.opener import open_raster, open_staged

STRIP_ROWS = 512  # output rows read and written at a time (bounded memory on any size)


@dataclass(frozen=True)
class Reduced:
    """One reduced copy written (or found up to date)."""

    href: str  # the source file, as the catalog names it
    path: Path  # its reduced copy
    written: bool


def write_reduced(read_href: str, href: str, folder: Path) -> Path | None:
    """The reduced copy of `read_href` written as `folder/reduced_name(href)`, or None when
    the file does not need one (small, or overviews of its own).

    `href` is the name the catalog gives the file (an import reads it from its staging
    folder before it moves into place, keeping its size and mtime).
    """
    with open_raster(read_href) as src:
        if not pyramids.needs_reduced(src) or len(set(src.dtypes)) > 1:
            return None  # mixed types (a BEAM-DIMAP VRT): one type per copy would change them
        width, height = pyramids.reduced_shape(src.width, src.height)
        scale_x, scale_y = src.width / width, src.height / height
        transform = src.transform * src.transform.scale(scale_x, scale_y)
        per_dataset = MaskFlags.per_dataset in src.mask_flag_enums[0]
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs,
            "transform": transform,
            "nodata": src.nodata,
            "tiled": True,
            "compress": "DEFLATE",
            "BIGTIFF": "IF_SAFER",
        }
        # a staged file keeps its size and mtime when it is moved into place
        target = folder / pyramids.reduced_name(href, pyramids.source_version(read_href))
        folder.mkdir(parents=True, exist_ok=True)
        fd, strips = tempfile.mkstemp(prefix=".reduced-", suffix=".tif", dir=folder)
        os.close(fd)
        try:
            with rasterio.open(strips, "w", **profile) as dst:
                for band, description in enumerate(src.descriptions, start=1):
                    if description:
                        dst.set_band_description(band, description)
                for row in range(0, height, STRIP_ROWS):
                    rows = min(STRIP_ROWS, height - row)
                    window = Window(0, row * scale_y, src.width, rows * scale_y)
                    out = Window(0, row, width, rows)
                    data = src.read(
                        window=window,
                        out_shape=(src.count, rows, width),
                        resampling=Resampling.nearest,
                    )
                    dst.write(data, window=out)
                    if per_dataset:
                        mask = src.read_masks(
                            1, window=window, out_shape=(rows, width), resampling=Resampling.nearest
                        )
                        dst.write_mask(mask, window=out)
            staged = folder / (".staged-" + target.name)
            with open_staged(strips) as small:  # the confined opener: GTiff only
                rasterio.shutil.copy(
                    small,
                    str(staged),
                    driver="COG",
                    COMPRESS="DEFLATE",
                    BLOCKSIZE=256,
                    OVERVIEW_RESAMPLING="NEAREST",
                    BIGTIFF="IF_SAFER",
                )
            os.replace(staged, target)
        finally:
            for leftover in (strips, str(folder / (".staged-" + target.name))):
                if os.path.exists(leftover):
                    os.remove(leftover)
    return target


def image_reduced(
    image: Image,
    data_dir: Path | None = None,
    folder: Path | None = None,
    read_hrefs: Iterable[str] | None = None,
) -> list[Reduced]:
    """The reduced copies of the image's files that need one, in `folder` (default: where
    tiles look, under `data_dir`); a copy of the file's current bytes is kept, older ones
    of the same file are removed.

    `read_hrefs` are where the files can be read now (an import's staging folder), in
    the order of `image.files`.
    """
    final = pyramids.reduced_folder(data_dir, image.product_id) if data_dir else None
    folder = folder or final
    reads = list(read_hrefs) if read_hrefs is not None else [f.href for f in image.files]
    done = []
    for file, read_href in zip(image.files, reads, strict=True):
        name = pyramids.reduced_name(file.href, pyramids.source_version(read_href))
        if final is not None and (final / name).exists():
            done.append(Reduced(file.href, final / name, written=False))
            continue
        path = write_reduced(read_href, file.href, folder)
        if path is None:
            continue
        done.append(Reduced(file.href, path, written=True))
        if final is not None:
            stale = pyramids.digest(file.href, 32) + "-"
            for old in final.glob(stale + "*.tif"):
                if old.name != name:
                    old.unlink(missing_ok=True)
    return done


def missing(images: Iterable[Image], data_dir: Path) -> Iterator[tuple[Image, list[Reduced]]]:
    """For `tileserver overviews`: each image with the copies made (or found) for it."""
    for image in images:
        if image.storage_state == "remote" or not image.files:
            yield image, []
            continue
        yield image, image_reduced(image, data_dir)
