"""The pool of open datasets: reuse, one thread per dataset, replaced files, limits."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy
import pytest
from rasterio.errors import RasterioIOError
from rio_tiler.errors import TileOutsideBounds

from tests.synthetic import gradient, write
from tileserver.opener import Confinement, DatasetPool

ANYWHERE = Confinement(data_dir=Path("/nonexistent")).operator()  # the operator's reach


@pytest.fixture()
def raster(tmp_path):
    return write(tmp_path / "a.tif", gradient(count=1))


def test_a_dataset_is_opened_once_and_lent_again(raster):
    pool = DatasetPool()
    with pool.dataset(str(raster), ANYWHERE) as first:
        expected = first.read(1)
    with pool.dataset(str(raster), ANYWHERE) as second:
        assert second is first
        assert not second.closed
        numpy.testing.assert_array_equal(second.read(1), expected)
    assert pool.opened == 1
    assert pool.idle() == 1


def test_threads_reading_at_once_get_their_own_dataset(raster):
    pool = DatasetPool()
    held, barrier = [], threading.Barrier(3)

    def borrow():
        with pool.dataset(str(raster), ANYWHERE) as dataset:
            held.append(dataset)
            barrier.wait(timeout=10)  # all three hold one at the same time

    threads = [threading.Thread(target=borrow) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(d) for d in held}) == 3
    assert pool.opened == 3
    assert pool.idle() == 3


def test_a_file_replaced_in_place_is_read_anew(raster):
    pool = DatasetPool()
    with pool.dataset(str(raster), ANYWHERE) as dataset:
        old = dataset.read(1)
    write(raster, gradient(count=1, step=3))
    stat = os.stat(raster)  # same second on coarse clocks: force a new mtime
    os.utime(raster, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pool.dataset(str(raster), ANYWHERE) as dataset:
        new = dataset.read(1)
    assert not numpy.array_equal(old, new)
    numpy.testing.assert_array_equal(new, gradient(count=1, step=3)[0])
    assert pool.opened == 2
    assert pool.idle() == 1  # the dataset of the old file was closed


def test_a_new_catalog_version_opens_a_new_dataset(raster):
    pool = DatasetPool()
    with pool.dataset(str(raster), ANYWHERE, "2024-01-01") as first:
        pass
    with pool.dataset(str(raster), ANYWHERE, "2024-02-01") as second:
        assert second is not first
    assert first.closed


def test_least_recently_used_datasets_close_beyond_the_limit(tmp_path):
    pool = DatasetPool(max_idle=2)
    paths = [write(tmp_path / f"{i}.tif", gradient(count=1)) for i in range(3)]
    opened = []
    for path in paths:
        with pool.dataset(str(path), ANYWHERE) as dataset:
            opened.append(dataset)
    assert [d.closed for d in opened] == [True, False, False]
    assert pool.idle() == 2
    pool.clear()
    assert all(d.closed for d in opened)
    assert pool.idle() == 0


def test_a_dataset_whose_read_failed_in_gdal_is_not_lent_again(raster):
    pool = DatasetPool()
    with pytest.raises(RasterioIOError), pool.dataset(str(raster), ANYWHERE) as dataset:
        raise RasterioIOError("a block could not be decoded")
    assert dataset.closed
    assert pool.idle() == 0


def test_other_exceptions_keep_the_dataset(raster):
    pool = DatasetPool()
    with pytest.raises(TileOutsideBounds), pool.dataset(str(raster), ANYWHERE) as dataset:
        raise TileOutsideBounds("a tile beside the image")  # a 404, not a broken file
    assert not dataset.closed
    with pool.dataset(str(raster), ANYWHERE) as again:
        assert again is dataset


def test_a_missing_file_raises_as_rasterio_does(tmp_path):
    pool = DatasetPool()
    with pytest.raises(RasterioIOError), pool.dataset(str(tmp_path / "missing.tif"), ANYWHERE):
        pass
    assert pool.idle() == 0
