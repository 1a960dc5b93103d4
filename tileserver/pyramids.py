"""Reduced copies: the low-resolution pyramid the server keeps for images without overviews.

A tile far below an image's resolution is cheap only when GDAL can read an overview near
the tile's resolution. A file without overviews would be read whole for it (100 million
pixels for a 10,000 px image, per tile). The server never writes beside a source file (it
may be a tenant's, read-only, or in a bucket), so at ingest it writes, under its own
`DATA_DIR/cogs/<product>/reduced/`, a COG of the file at half its resolution with
internal overviews down to one block. Tiles coarser than twice the file's resolution read
that copy, through the same confined opener; finer ones still read the file itself, so
a tile reads at most about four times its own pixels at any zoom.

The copy is named after the file's href and the version of the file it was made from
(size and modification time for a local file): a file rewritten in place is read
directly again until `tileserver overviews` makes a new copy.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from rasterio.io import DatasetReader

# a file whose longest side is above this and has no overviews gets a reduced copy
MIN_REDUCED_SIZE = 512
# a tile coarser than this many file pixels per tile pixel reads the reduced copy
REDUCED_FACTOR = 2.0


def reduced_folder(data_dir: Path, product_id: str) -> Path:
    """Where a product's reduced copies live: under its own COG folder (opener.py lets the
    product read it, and nothing else)."""
    return Path(data_dir) / "cogs" / product_id / "reduced"


def digest(text: str, length: int) -> str:
    """A short hex digest of `text` (file names that reveal no path)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def reduced_name(href: str, version: str) -> str:
    """The file name of the copy of `href` at `version` (source_version): a file rewritten
    in place has no copy under its new version until one is made, and is read directly."""
    return f"{digest(href, 32)}-{digest(version, 12)}.tif"


def source_version(href: str) -> str:
    """What identifies the bytes of `href`: size and mtime of a local file, else the href."""
    if "://" in href or href.startswith("/vsi"):
        return href
    try:
        stat = os.stat(href)
    except OSError:
        return href
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def needs_reduced(dataset: DatasetReader) -> bool:
    """A file big enough to matter that has no overviews of its own (internal or .ovr)."""
    return max(dataset.width, dataset.height) > MIN_REDUCED_SIZE and not dataset.overviews(1)


def reduced_shape(width: int, height: int) -> tuple[int, int]:
    """Half the file's size, rounded up (the copy covers exactly the file's bounds)."""
    return math.ceil(width / REDUCED_FACTOR), math.ceil(height / REDUCED_FACTOR)
