"""render.mosaic.composite driven directly: paint order, `first`'s early stop, and which
images it reads (and when), against a per-pixel reference worked out here."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy
import pytest

from tileserver.render.mosaic import composite

SHAPE = (8, 8)


def image(name: str, footprint: numpy.ndarray) -> SimpleNamespace:
    """A stand-in image: composite looks at its geometry (for the footprint) and files."""
    return SimpleNamespace(id=name, geometry={"name": name}, files=[], footprint=footprint)


def left(cols: int) -> numpy.ndarray:
    mask = numpy.zeros(SHAPE, bool)
    mask[:, :cols] = True
    return mask


def right(cols: int) -> numpy.ndarray:
    return ~left(SHAPE[1] - cols)


EVERYWHERE = numpy.ones(SHAPE, bool)


class Reader:
    """Pixels of value `value` (one band) valid on each image's footprint minus its holes;
    records what was read, and which reads overlapped in time."""

    def __init__(self, values: dict[str, int], holes: dict[str, numpy.ndarray] | None = None):
        self.values, self.holes = values, holes or {}
        self.read: list[str] = []
        self.lock = threading.Lock()
        self.running = 0
        self.overlapped: set[str] = set()
        self.barrier: threading.Barrier | None = None

    def __call__(self, layer) -> numpy.ma.MaskedArray:
        img = layer[0]
        with self.lock:
            self.read.append(img.id)
            self.running += 1
            if self.running > 1:
                self.overlapped.add(img.id)
        if self.barrier is not None:
            self.barrier.wait(timeout=5)
        invalid = ~img.footprint | self.holes.get(img.id, numpy.zeros(SHAPE, bool))
        data = numpy.full((1, *SHAPE), self.values[img.id], dtype="uint16")
        with self.lock:
            self.running -= 1
        return numpy.ma.MaskedArray(data, mask=invalid[numpy.newaxis].copy())


def reference_first(images, reader: Reader) -> numpy.ma.MaskedArray:
    """Per pixel, the value of the first image (paint order) valid there."""
    out = numpy.ma.masked_all((1, *SHAPE), dtype="uint16")
    for img in reversed(images):
        array = reader((img, None))
        valid = ~numpy.ma.getmaskarray(array)
        out[valid] = array[valid]
    return out


def run(images, reader: Reader, threads: int = 4):
    layers = [(img, None) for img in images]
    return composite(
        layers,
        reader,
        "first",
        lambda g: next(i.footprint for i in images if i.geometry is g),
        threads,
    )


def test_a_tile_inside_the_top_footprint_reads_the_top_image_alone():
    images = [image("a", EVERYWHERE), image("b", EVERYWHERE)]
    reader = Reader({"a": 1, "b": 2})
    result = run(images, reader)
    assert reader.read == ["a"] and result.read == 1
    assert (result.data == 1).all()


def test_a_tile_on_footprint_edges_reads_the_images_that_fill_it_at_once():
    images = [image("a", left(3)), image("b", right(5)), image("c", EVERYWHERE)]
    reader = Reader({"a": 1, "b": 2, "c": 3})
    reader.barrier = threading.Barrier(2)  # a and b must be read at the same time
    result = run(images, reader)
    assert sorted(reader.read) == ["a", "b"] and result.read == 2
    assert reader.overlapped  # the two reads ran together
    reader.barrier = None
    expected = reference_first(images, Reader({"a": 1, "b": 2, "c": 3}))
    assert numpy.array_equal(result.data.filled(0), expected.filled(0))
    assert [i.id for i in result.used] == ["a", "b"]


def test_holes_in_the_first_batch_are_filled_by_later_images_in_paint_order():
    hole = numpy.zeros(SHAPE, bool)
    hole[2:4, 1:3] = True  # inside a's footprint
    images = [
        image("a", left(4)),
        image("b", right(4)),
        image("c", left(6)),
        image("d", EVERYWHERE),
    ]
    values = {"a": 1, "b": 2, "c": 3, "d": 4}
    reader = Reader(values, {"a": hole})
    result = run(images, reader)
    expected = reference_first(images, Reader(values, {"a": hole}))
    assert numpy.array_equal(numpy.ma.getmaskarray(result.data), numpy.ma.getmaskarray(expected))
    assert numpy.array_equal(result.data.filled(0), expected.filled(0))
    assert (result.data[0][2:4, 1:3] == 3).all()  # c, above d in paint order
    assert reader.read[:2] in (["a", "b"], ["b", "a"])  # the first batch filled the tile


def test_an_image_hidden_under_the_batch_stops_the_batch_so_order_holds():
    # b lies under a; c reaches the right side. b must not be read after c.
    hole = numpy.zeros(SHAPE, bool)
    hole[0, 0] = True
    images = [image("a", left(4)), image("b", left(2)), image("c", EVERYWHERE)]
    values = {"a": 1, "b": 2, "c": 3}
    reader = Reader(values, {"a": hole})
    result = run(images, reader)
    assert reader.read[0] == "a" and reader.read.index("b") < reader.read.index("c")
    expected = reference_first(images, Reader(values, {"a": hole}))
    assert numpy.array_equal(result.data.filled(0), expected.filled(0))
    assert result.data[0, 0, 0] == 2  # b, not c, fills a's hole


@pytest.mark.parametrize("selection", ["highest", "lowest", "mean", "count"])
def test_other_selections_read_every_image(selection):
    images = [image("a", left(4)), image("b", EVERYWHERE), image("c", right(2))]
    reader = Reader({"a": 5, "b": 2, "c": 9})
    layers = [(img, None) for img in images]
    result = composite(layers, reader, selection, None, 2)
    assert sorted(reader.read) == ["a", "b", "c"] and result.read == 3
    if selection == "highest":
        assert result.data[0, 0, 7] == 9 and result.data[0, 0, 0] == 5
    if selection == "count":  # one band of counts, (rows, cols)
        assert result.data[0, 7] == 2 and result.data[0, 5] == 1
