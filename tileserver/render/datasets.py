"""Open rasterio datasets kept between requests, one per thread at a time.

A web map asks for its tiles from the same few files over and over. Opening a file per
tile costs the open itself (headers, and for /vsis3/ or /vsicurl/ HTTP requests) and,
worse, GDAL's block cache: decoded blocks belong to a dataset and go when it closes, so
the next tile decompresses the same blocks again. A GDAL dataset must not be used by two
threads at once, so the pool lends each dataset to one caller and takes it back after.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from tileserver.opener import (
    Reach,
    forget_cached,
    open_raster,
    reset_gdal_errors,
    thread_gdal_env,
)

DEFAULT_MAX_IDLE = 64  # idle datasets per process (TILESERVER_OPEN_DATASETS)


def file_version(href: str, version: str) -> tuple[str, ...]:
    """What identifies the bytes behind `href`: size and mtime for a local file.

    A file replaced in place gets a new version and a new dataset; remote hrefs rely on
    `version` (the image's modification time in the catalog).
    """
    if "://" in href or href.startswith("/vsi"):
        return (href, version)
    try:
        stat = os.stat(href)
    except OSError:
        return (href, version)  # the open reports the problem
    return (href, version, str(stat.st_size), str(stat.st_mtime_ns))


def open_dataset(href: str, allowed: Reach) -> DatasetReader:
    """The confined opener's dataset; a remote file that fails to open is forgotten by
    GDAL, so the next open asks the bucket again instead of repeating the failure."""
    try:
        return open_raster(href, allowed)
    except RasterioError:
        forget_cached(href)
        raise


class DatasetPool:
    """Idle open datasets by (href, version), least recently used closed first."""

    def __init__(self, max_idle: int = DEFAULT_MAX_IDLE):
        self.max_idle = max_idle
        self._idle: OrderedDict[tuple, list[DatasetReader]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self.opened = 0  # datasets opened since start (tests and diagnostics)

    @contextmanager
    def dataset(self, href: str, allowed: Reach, version: str = "") -> Iterator[DatasetReader]:
        """An open dataset of `href` for the caller's exclusive use, if `allowed` has it.

        The location is checked at every loan (a grant withdrawn since the open counts); the
        open itself checks drivers and the files GDAL takes along. A dataset whose read
        failed in GDAL (a RasterioError, an OSError) is closed rather than lent again; other
        exceptions (a tile outside the image) keep it.
        """
        allowed.check(href)
        thread_gdal_env()  # for the warp calls rio-tiler makes with the dataset
        key = file_version(href, version)
        dataset = self._take(key)
        if dataset is None:
            self._drop_other_versions(key)
            dataset = open_dataset(href, allowed)
            with self._lock:
                self.opened += 1
        reset_gdal_errors()  # what an earlier failure in this thread left must not fail this use
        try:
            yield dataset
        except (RasterioError, OSError):
            dataset.close()
            raise
        except Exception:
            self._give(key, dataset)
            raise
        except BaseException:
            dataset.close()
            raise
        self._give(key, dataset)

    def _take(self, key: tuple) -> DatasetReader | None:
        with self._lock:
            idle = self._idle.get(key)
            if not idle:
                return None
            dataset = idle.pop()
            self._count -= 1
            if not idle:
                del self._idle[key]
            return dataset

    def _drop_other_versions(self, key: tuple) -> None:
        """Close idle datasets of the same href at another version: a replaced file."""
        with self._lock:
            stale = [k for k in self._idle if k[0] == key[0] and k != key]
            closing = [d for k in stale for d in self._idle.pop(k)]
            self._count -= len(closing)
        for dataset in closing:
            dataset.close()

    def _give(self, key: tuple, dataset: DatasetReader) -> None:
        evicted = []
        with self._lock:
            self._idle.setdefault(key, []).append(dataset)
            self._idle.move_to_end(key)
            self._count += 1
            while self._count > self.max_idle:
                oldest = next(iter(self._idle))
                evicted.append(self._idle[oldest].pop(0))
                self._count -= 1
                if not self._idle[oldest]:
                    del self._idle[oldest]
        for old in evicted:
            old.close()

    def clear(self) -> None:
        """Close every idle dataset (datasets on loan close when given back over the limit)."""
        with self._lock:
            idle = [d for datasets in self._idle.values() for d in datasets]
            self._idle.clear()
            self._count = 0
        for dataset in idle:
            dataset.close()

    def idle(self) -> int:
        """How many datasets wait for a caller."""
        with self._lock:
            return self._count


DATASETS = DatasetPool()
