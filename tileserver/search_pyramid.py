"""A materialized low-zoom pyramid per registered search (issue 21, docs/ARCHITECTURE.md).

Below the zoom where dynamic compositing is cheap (`base` = the first image's native
minzoom - 1), a mosaic tile over hundreds of scenes would read hundreds of files. The
pyramid keeps, per WebMercatorQuad tile from z0 to `base`, the `first` composite of every
band of the search's product in the search's own order, as stored values with a validity
mask, DEFLATE-compressed in one SQLite file per search and caller scope
(`DATA_DIR/pyramids/<search>[-<scope>].db`). Bands, scaling, expression, colormap and the
processing level apply at tile time, as on any image; pixel selections other than `first`,
another `sortby`, a `nodata` override or another resampling cannot be served from it and
are composited dynamically (the `X-Mosaic-Pyramid` header says which).

A background thread per process builds it (base tiles composited from the images, each
parent from its 4 children, 2 x 2 nearest) and brings it up to date when the catalog
generation of the search's products moves: the images added, changed or removed since the
last build (diffed against the list the pyramid keeps, so deletions count too) give the
base tiles to redo and their ancestors. A lease in the catalog (store.take_lease: owner,
expiry by the catalog's clock, renewed between tiles) makes one worker of all those sharing
the catalog, on any machine, build at a time; the others serve what exists. The pyramid's
state stays in its file, written in the same transactions as its tiles, so state and
tiles never disagree. A tile not built yet answers 503 with Retry-After at once (`PyramidBuilding`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy
from cachetools import LRUCache
from morecantile import TileMatrixSet
from morecantile import tms as tms_registry
from rio_tiler.models import ImageData

from tileserver import deadline
from tileserver.catalog.access import scope_of
from tileserver.catalog.models import BandStatistics, Image, Product
from tileserver.catalog.store import NotFound
from tileserver.deadline import RemoteBusy
from tileserver.render.errors import RenderError
from tileserver.render.mosaic import EmptyTile, composite, product_bands, read_image
from tileserver.render.pipeline import (
    RenderParams,
    apply_processing_level,
    render_array,
    request_bands,
)
from tileserver.render.reader import Grid
from tileserver.scaling_rules import ScalingError, level_steps

if TYPE_CHECKING:
    from tileserver.layers import SearchLayer

logger = logging.getLogger(__name__)

TMS_ID = "WebMercatorQuad"  # the one grid a pyramid is kept on
TILE = 256
LEASE_SECONDS = 60.0  # a builder's lease: renewed between tiles; taken over once it lapses
BATCH = 16  # base tiles per transaction
RETRY_AFTER = 5  # seconds, the Retry-After of a tile still building
# a processing level no band defines: read_image then keeps the values as stored
STORED = "\x00stored"
MAX_IMAGES = 10000  # most images a pyramid includes (the catalog's page limit)
# builders one process runs at once: registering a search is cheap, building its pyramid is
# not, so a caller registering many searches queues builds instead of taking every core
MAX_BUILDERS = 2
SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,200}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiles (
    z INTEGER, x INTEGER, y INTEGER, data BLOB NOT NULL, PRIMARY KEY (z, x, y));
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, modified TEXT, bbox TEXT);
"""


class PyramidBuilding(RemoteBusy):
    """The tile's pyramid level is still being built: 503 with Retry-After (app.py)."""

    retry_after = RETRY_AFTER


def now_iso() -> str:
    """Now, UTC, to the second (the state's `updated`)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class PyramidFile:
    """The SQLite tile store of one pyramid; a connection per call (any thread).

    `lease` names its builder's lease in the catalog (the file name: search and scope)."""

    def __init__(self, path: Path):
        self.path = path
        self.lease = f"pyramid:{path.stem}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def connect(self):
        """A connection in autocommit mode (BEGIN/COMMIT where a batch must be one)."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        finally:
            db.close()

    def meta(self) -> dict:
        """The pyramid's state: base, bands, type, generation, images, version, ..."""
        with self.connect() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}

    def set_meta(self, db: sqlite3.Connection, **values) -> None:
        """Store state values (JSON) on an open connection, inside its transaction."""
        db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def read(self, z: int, x: int, y: int) -> bytes | None:
        """One tile's packed pixels; None where it has no valid pixel or is not built."""
        with self.connect() as db:
            row = db.execute("SELECT data FROM tiles WHERE z=? AND x=? AND y=?", (z, x, y))
            found = row.fetchone()
        return found[0] if found else None

    def images(self) -> dict[str, tuple[str, list[float]]]:
        """The images the last build included: id -> (modified, WGS84 bbox)."""
        with self.connect() as db:
            rows = db.execute("SELECT id, modified, bbox FROM images").fetchall()
        return {i: (m, json.loads(b)) for i, m, b in rows}


def pack(data: numpy.ma.MaskedArray) -> bytes:
    """Bands then a one-byte validity plane, DEFLATE-compressed."""
    valid = ~numpy.ma.getmaskarray(data).any(axis=0)
    raw = numpy.ascontiguousarray(data.data).tobytes() + valid.astype("uint8").tobytes()
    return zlib.compress(raw, 6)


def unpack(blob: bytes, count: int, dtype: str) -> numpy.ma.MaskedArray:
    """The masked (band, 256, 256) array `pack` stored."""
    raw = zlib.decompress(blob)
    size = count * TILE * TILE * numpy.dtype(dtype).itemsize
    data = numpy.frombuffer(raw[:size], dtype=dtype).reshape(count, TILE, TILE)
    valid = numpy.frombuffer(raw[size:], dtype="uint8").reshape(TILE, TILE).astype(bool)
    return numpy.ma.MaskedArray(data.copy(), mask=numpy.broadcast_to(~valid, data.shape).copy())


def downsample(children: list[numpy.ma.MaskedArray | None], count: int, dtype: str):
    """A parent from its 4 children (top-left, top-right, bottom-left, bottom-right):
    2 x 2 nearest, taking another pixel of the 2 x 2 block where the first is invalid."""
    data = numpy.zeros((count, TILE, TILE), dtype=dtype)
    mask = numpy.ones((TILE, TILE), dtype=bool)
    half = TILE // 2
    for index, child in enumerate(children):
        if child is None:
            continue
        row, col = divmod(index, 2)
        out = (slice(row * half, (row + 1) * half), slice(col * half, (col + 1) * half))
        part_mask = mask[out]
        part_data = data[(slice(None), *out)]
        child_mask = numpy.ma.getmaskarray(child)[0]
        for dr, dc in ((0, 0), (1, 1), (0, 1), (1, 0)):
            take = part_mask & ~child_mask[dr::2, dc::2]
            part_data[:, take] = child.data[:, dr::2, dc::2][:, take]
            part_mask &= ~take
    if mask.all():
        return None
    return numpy.ma.MaskedArray(data, mask=numpy.broadcast_to(mask, data.shape).copy())


def base_tiles(tms: TileMatrixSet, boxes: Iterable[list[float]], z: int) -> set[tuple[int, int]]:
    """The tiles at `z` meeting any WGS84 box."""
    found = set()
    for west, south, east, north in boxes:
        for tile in tms.tiles(west, south, east, north, [z]):
            found.add((tile.x, tile.y))
    return found


@dataclass
class Plan:
    """What a pyramid stores: the mosaic's bands and the type of their stored values."""

    base: int
    names: list[str]
    dtype: str
    products: list[str]


# every Pyramids of this process, for stop_builders
_EVERY: weakref.WeakSet[Pyramids] = weakref.WeakSet()


def stop_builders(timeout: float = 10.0) -> None:
    """Stop the builders of every app of this process (tests: an app without a lifespan
    must not leave a builder writing to a store its test is about to close)."""
    for pyramids in list(_EVERY):
        pyramids.stop(timeout)


class Pyramids:
    """The pyramids of one app: where they live, the builder threads of this process."""

    def __init__(self, data_dir: Path, enabled: bool):
        self.root = Path(data_dir) / "pyramids"
        self.enabled = enabled
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._threads: dict[Path, threading.Thread] = {}
        self._checked: dict[Path, int] = {}  # generation last found up to date
        self._renewed: dict[Path, float] = {}  # when this process last renewed a lease
        self._files: LRUCache = LRUCache(maxsize=1024)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        _EVERY.add(self)

    def file(self, layer: SearchLayer) -> PyramidFile:
        """The pyramid of the layer's search as its caller sees it (a scope has its own)."""
        if not SAFE_ID.fullmatch(layer.id):
            raise NotFound("no such search")
        scope = scope_of(layer.store)
        name = f"{layer.id}-{scope}.db" if scope else f"{layer.id}.db"
        with self._lock:  # its schema written once per process, not per tile
            if name not in self._files:
                self._files[name] = PyramidFile(self.root / name)
            return self._files[name]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every builder of this process (app shutdown): they stop at their next tile."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
        self._stop.clear()  # an app may start again (its lifespan re-entered): builds resume

    def building(self) -> bool:
        """Whether a builder thread of this process is running."""
        with self._lock:
            return any(t.is_alive() for t in self._threads.values())

    def wait(self, timeout: float = 120.0) -> None:
        """Until this process's builders are done (tests, the CLI)."""
        end = time.monotonic() + timeout
        while self.building() and time.monotonic() < end:
            time.sleep(0.05)

    # ------------------------------------------------------------------ state and build

    def ensure(self, layer: SearchLayer) -> PyramidFile:
        """The layer's pyramid; a builder started when it is behind the catalog."""
        pyramid = self.file(layer)
        generation = layer.generation()
        if self._checked.get(pyramid.path) == generation:
            return pyramid
        meta = pyramid.meta()
        if meta.get("generation") == generation and meta.get("state") == "ready":
            self._checked[pyramid.path] = generation
            return pyramid
        if not self._stop.is_set():
            self.start(layer, pyramid)
        return pyramid

    def start(self, layer: SearchLayer, pyramid: PyramidFile) -> None:
        """A builder thread for the pyramid unless this process runs one (the lease in the
        catalog keeps other processes and machines out); it runs outside the request's deadline."""
        import contextvars

        with self._lock:
            running = self._threads.get(pyramid.path)
            if running is not None and running.is_alive():
                return
            if sum(t.is_alive() for t in self._threads.values()) >= MAX_BUILDERS:
                return  # queued: the next request that finds it behind starts it
            self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
            context = contextvars.copy_context()  # the request's file confinement
            thread = threading.Thread(
                target=context.run,
                args=(self._build, layer, pyramid),
                name=f"pyramid-{layer.id}",
                daemon=True,
            )
            self._threads[pyramid.path] = thread
            thread.start()

    def _build(self, layer: SearchLayer, pyramid: PyramidFile) -> None:
        store = layer.store
        with deadline.running(None):
            if not store.take_lease(pyramid.lease, self.owner, LEASE_SECONDS):
                return  # another worker builds it; we serve what exists
            try:
                self._update(layer, pyramid)
            except InterruptedError as exc:  # shutdown, or the lease lost: resumed later
                logger.info("pyramid of search %s stopped: %s", layer.id, exc)
            except Exception:  # a builder must not take the process down; retried later
                logger.exception("pyramid of search %s failed", layer.id)
                with pyramid.connect() as db:
                    pyramid.set_meta(db, error="the last build failed; it is retried")
            finally:
                store.release_lease(pyramid.lease, self.owner)

    def plan(self, layer: SearchLayer, tms: TileMatrixSet) -> Plan:
        """Base zoom, bands and stored type from the search's first image and product."""
        base = layer.native_zooms(tms)[0] - 1
        product = layer.product
        alpha = product.alpha_band()
        names = [b.name for b in product.bands if b is not alpha]
        products = layer.products({product.id: product})
        stored = RenderParams(bands=tuple(names), processing_level=STORED)
        dtype = product_bands(products, [product.band(n) for n in names], stored).dtype
        return Plan(base, names, dtype, [p.id for p in products])

    def _update(self, layer: SearchLayer, pyramid: PyramidFile) -> None:
        tms = tms_registry.get(TMS_ID)
        generation = layer.generation()  # before listing: a write during the build moves it
        started = now_iso()
        meta = pyramid.meta()
        try:
            plan = self.plan(layer, tms)
        except NotFound:  # the search matches nothing (now): an empty, ready pyramid
            plan = Plan(-1, [], "uint8", [])
        current = {i.id: i for i in layer.all_images(MAX_IMAGES)}
        old = pyramid.images()
        fresh = (
            meta.get("base") != plan.base
            or meta.get("names") != plan.names
            or meta.get("dtype") != plan.dtype
            or "generation" not in meta
        )
        if fresh:
            boxes = [list(i.bbox) for i in current.values()]
        else:
            boxes = []
            for image_id, image in current.items():
                stamp = str(image.modified)
                if image_id not in old or old[image_id][0] != stamp:
                    boxes.append(list(image.bbox))
                    if image_id in old:
                        boxes.append(old[image_id][1])
            boxes += [old[i][1] for i in old.keys() - current.keys()]
        stats = merged_stats(current.values(), plan.names)
        with pyramid.connect() as db:
            if fresh:
                db.execute("DELETE FROM tiles")
            pyramid.set_meta(
                db,
                state="building",
                started=started,
                base=plan.base,
                names=plan.names,
                dtype=plan.dtype,
                products=plan.products,
                first_build=fresh or meta.get("first_build", False),
            )
        redone = 0
        if plan.base >= 0 and boxes:
            todo = base_tiles(tms, boxes, plan.base)
            redone = self._base(layer, pyramid, tms, plan, sorted(todo))
            self._parents(layer, pyramid, plan, todo)
        self._renew(layer, pyramid)
        with pyramid.connect() as db:
            db.execute("BEGIN")
            db.execute("DELETE FROM images")
            db.executemany(
                "INSERT INTO images (id, modified, bbox) VALUES (?, ?, ?)",
                [(i.id, str(i.modified), json.dumps(list(i.bbox))) for i in current.values()],
            )
            pyramid.set_meta(
                db,
                state="ready",
                generation=generation,
                images=len(current),
                stats=stats,
                updated=now_iso(),
                first_build=False,
                last_redone=redone,
                version=int(meta.get("version", 0)) + 1,
                builder=self.owner,  # which worker built this version
                error=None,
            )
            db.execute("COMMIT")
        logger.info("pyramid of search %s: %d base tiles redone", layer.id, redone)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise InterruptedError("the server is shutting down")

    def _renew(self, layer: SearchLayer, pyramid: PyramidFile, due: bool = False) -> None:
        """Renew our lease before a write (and, with `due`, between tiles once a sixth of it
        has passed: a batch of slow tiles must not outlast it); stop when another worker
        took it over (ours lapsed), so two builders never write the same pyramid."""
        now = time.monotonic()
        if due and now - self._renewed.get(pyramid.path, 0.0) < LEASE_SECONDS / 6:
            return
        if not layer.store.renew_lease(pyramid.lease, self.owner, LEASE_SECONDS):
            raise InterruptedError("another worker took the pyramid's lease")
        self._renewed[pyramid.path] = now

    def _base(
        self,
        layer: SearchLayer,
        pyramid: PyramidFile,
        tms: TileMatrixSet,
        plan: Plan,
        todo: list[tuple[int, int]],
    ) -> int:
        """Composite each base tile from the images (stored values, `first`)."""
        stored = RenderParams(bands=tuple(plan.names), processing_level=STORED)
        products: dict[str, Product] = {}
        z = plan.base
        for start in range(0, len(todo), BATCH):
            self._check_stop()
            written = []
            for x, y in todo[start : start + BATCH]:
                self._renew(layer, pyramid, due=True)
                grid = Grid.of_tile(tms, x, y, z, TILE)
                images = layer.tile_images(tms, x, y, z, MAX_IMAGES)
                sources = []
                for image in images:
                    if image.product_id not in products:
                        products[image.product_id] = layer.store.get_product(image.product_id)
                    sources.append((image, products[image.product_id]))

                def read(source, grid=grid):
                    image, product = source
                    return read_image(image, product, plan.names, None, grid, stored, plan.dtype)

                result = composite(sources, read, "first", grid.footprint_pixels, 1)
                written.append((x, y, None if result.data is None else pack(result.data)))
            self._renew(layer, pyramid)
            with pyramid.connect() as db:
                db.execute("BEGIN")
                write(db, z, written)
                db.execute("COMMIT")
        return len(todo)

    def _parents(
        self, layer: SearchLayer, pyramid: PyramidFile, plan: Plan, todo: set[tuple[int, int]]
    ) -> None:
        """Each ancestor of the redone base tiles from its 4 children."""
        count = len(plan.names)
        level = todo
        for z in range(plan.base - 1, -1, -1):
            self._check_stop()
            level = {(x // 2, y // 2) for x, y in level}
            written = []
            for x, y in sorted(level):
                self._renew(layer, pyramid, due=True)
                children = []
                for dy in (0, 1):
                    for dx in (0, 1):
                        blob = pyramid.read(z + 1, 2 * x + dx, 2 * y + dy)
                        children.append(None if blob is None else unpack(blob, count, plan.dtype))
                parent = downsample(children, count, plan.dtype)
                written.append((x, y, None if parent is None else pack(parent)))
            self._renew(layer, pyramid)
            with pyramid.connect() as db:
                db.execute("BEGIN")
                write(db, z, written)
                db.execute("COMMIT")

    # ------------------------------------------------------------------ serving

    def state(self, layer: SearchLayer) -> dict:
        """What GET /searches/{id} says of the pyramid (starting a build when behind)."""
        pyramid = self.ensure(layer)
        meta = pyramid.meta()
        held = layer.store.lease_holder(pyramid.lease) is not None  # a builder, anywhere
        building = held or meta.get("state") == "building" and self.building()
        base = meta.get("base")
        return {
            "served_by": "pyramid",
            "state": "building" if building else meta.get("state", "building"),
            "up_to_date": meta.get("generation") == layer.generation() and not building,
            "zooms": [0, base] if base is not None and base >= 0 else None,
            "images": meta.get("images"),
            "generation": meta.get("generation"),
            "updated": meta.get("updated"),
            "error": meta.get("error"),
            "tms": TMS_ID,
            "honours": "pixel_selection=first and the search's own sortby; other requests "
            "are composited per request",
        }

    def refusal(self, layer: SearchLayer, params: RenderParams) -> str | None:
        """Why the request cannot be served from a pyramid (None: it can)."""
        if layer.mosaic.pixel_selection != "first":
            return f"pixel_selection={layer.mosaic.pixel_selection}"
        if layer.mosaic.sortby is not None:
            return "sortby"
        if params.nodata is not None:
            return "nodata"
        if params.resampling != "nearest":
            return f"resampling={params.resampling}"
        if params.cloud_mask is not None:
            return "cloud_mask"  # the pyramid stores unmasked pixels
        return None

    def tile(
        self,
        layer: SearchLayer,
        tms: TileMatrixSet,
        x: int,
        y: int,
        z: int,
        size: int,
        params: RenderParams,
    ) -> ImageData | None:
        """The tile from the pyramid; None when it cannot serve it (composite dynamically)."""
        pyramid = self.ensure(layer)
        meta = pyramid.meta()
        if "base" not in meta or z > meta["base"]:
            raise PyramidBuilding(f"the low zooms of search '{layer.id}' are being built")
        blob = pyramid.read(z, x, y)
        if blob is None:
            if meta.get("state") != "ready" or meta.get("first_build"):
                raise PyramidBuilding(
                    f"tile {z}/{x}/{y} of search '{layer.id}' is being built; retry shortly"
                )
            raise EmptyTile(f"no image of this mosaic has valid pixels in tile {z}/{x}/{y}")
        names = meta["names"]
        data = unpack(blob, len(names), meta["dtype"])
        product = layer.product
        bands, alpha = request_bands(product, params)
        if alpha is not None and alpha is not product.alpha_band():
            return None  # a mask band asked as alpha: not stored
        if any(b.name not in names for b in bands):
            return None
        products = [layer.store.get_product(p) for p in meta["products"]] or [product]
        if not same_steps(products, [b.name for b in bands], params.processing_level):
            return None  # products convert differently: per image, dynamically
        own = product_bands(products, bands, params)
        selected = data[[names.index(b.name) for b in bands]]
        converted = apply_processing_level(
            selected, own.bands[products[0].id], params.processing_level
        )
        converted = numpy.ma.MaskedArray(converted.data.astype(own.dtype), mask=converted.mask)
        if size != TILE:
            k = size // TILE
            converted = numpy.ma.MaskedArray(
                converted.data.repeat(k, 1).repeat(k, 2),
                mask=converted.mask.repeat(k, 1).repeat(k, 2),
            )
        wanted = {b.name for b in bands}
        stats = {
            n: BandStatistics(**s) for n, s in (meta.get("stats") or {}).items() if n in wanted
        }
        rendered = render_array(
            converted,
            bands,
            params,
            stats=stats or None,
            alpha_band=alpha,
            products=own.bands,
            converted=True,
        )
        grid = Grid.of_tile(tms, x, y, z, size)
        return rendered.image(
            grid.crs, grid.bounds, assets=[], read=0, pyramid=f"g{meta.get('generation')}"
        )


def write(db: sqlite3.Connection, z: int, tiles: list[tuple[int, int, bytes | None]]) -> None:
    """Replace tiles at `z`; None deletes (no valid pixel there any more)."""
    db.executemany(
        "INSERT OR REPLACE INTO tiles (z, x, y, data) VALUES (?, ?, ?, ?)",
        [(z, x, y, blob) for x, y, blob in tiles if blob is not None],
    )
    db.executemany(
        "DELETE FROM tiles WHERE z=? AND x=? AND y=?",
        [(z, x, y) for x, y, blob in tiles if blob is None],
    )


def merged_stats(images: Iterable[Image], names: list[str]) -> dict[str, dict]:
    """Per band, the widest stored min..max over every image (for `auto` scaling)."""
    out: dict[str, dict] = {}
    for image in images:
        for name in names:
            found = image.band_stats.get(name)
            if found is None:
                continue
            if name in out:
                out[name] = {
                    "min": min(out[name]["min"], found.min),
                    "max": max(out[name]["max"], found.max),
                }
            else:
                out[name] = {"min": found.min, "max": found.max}
    return out


def same_steps(products: list[Product], names: list[str], level: str | None) -> bool:
    """Whether every product converts each band to `level` the same way (then converting
    the composite equals converting each image, as a dynamic mosaic does)."""
    try:
        for name in names:
            steps = {
                json.dumps(level_steps(p.band(name).processing_levels, level)) for p in products
            }
            if len(steps) > 1:
                return False
    except (ScalingError, AttributeError) as exc:
        raise RenderError(str(exc)) from exc
    return True
