"""Copying a catalog between stores (SQLite <-> pgSTAC), in batches, resumable.

Records are copied as they are (ids, created and modified times included), so tile cache
keys, STAC item ids and registered search ids stay the same in the new store. Every batch
is one transaction in the destination; a checkpoint file, written after each batch, holds
the paging token of each product, so a run that stops (crash, Ctrl-C, lost connection)
resumes where it was. Batches are upserts: the batch that was in flight is written again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from tileserver.catalog.parcels import layer_file
from tileserver.catalog.store import CatalogStore


class CopyReport(BaseModel):
    """What a copy did."""

    products: int = 0
    images: int = 0
    searches: int = 0
    keys: int = 0
    parcel_layers: int = 0
    parcels: int = 0
    resumed: bool = False


class Checkpoint(BaseModel):
    """Progress of a copy: products finished, and the next page token of the current one."""

    source: str
    destination: str
    done: list[str] = []
    tokens: dict[str, str] = {}
    images: int = 0
    parcel_layers: list[str] = []  # copied


def checkpoint_path(folder: Path, source: str, destination: str) -> Path:
    """Where the checkpoint of a copy from `source` to `destination` is kept."""
    digest = hashlib.sha256(f"{source}\n{destination}".encode()).hexdigest()[:16]
    return folder / f"migrate-{digest}.json"


def _save(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically (a crash mid-write keeps the previous one)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(checkpoint.model_dump_json())
    os.replace(partial, path)


def copy_catalog(
    source: CatalogStore,
    destination: CatalogStore,
    checkpoint: Path,
    names: tuple[str, str] = ("", ""),
    batch: int = 500,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> CopyReport:
    """Copy API keys, products, images, searches and parcel layers from `source` into
    `destination`.

    Keys go first: a destination that serves with the source's products also refuses
    whom the source refused.

    `checkpoint` is the file that makes the copy resumable (removed once it is complete);
    `names` are the catalog URLs recorded in it so a checkpoint is never used for another
    pair. `on_batch` is called with the images copied so far after each batch.
    """
    state = Checkpoint(source=names[0], destination=names[1])
    report = CopyReport()
    if checkpoint.exists():
        state = Checkpoint.model_validate_json(checkpoint.read_text())
        if (state.source, state.destination) != names:
            raise ValueError(f"{checkpoint} belongs to another copy: remove it to start over")
        report.resumed = True
    for key in source.list_keys():
        destination.put_key(key)
        report.keys += 1
    products = source.list_products()
    total = sum(source.count_images(p.id) for p in products)
    bar = tqdm(total=total, initial=state.images, unit="image", disable=not progress)
    try:
        for product in products:
            destination.put_product(product, keep_times=True)
            report.products += 1
            if product.id in state.done:
                continue
            token = state.tokens.get(product.id)
            while True:
                page = source.list_images(product.id, limit=batch, token=token)
                if page.images:
                    destination.put_images(page.images, keep_times=True)
                    report.images += len(page.images)
                    state.images += len(page.images)
                    bar.update(len(page.images))
                token = page.next_token
                if token is None:
                    break
                state.tokens[product.id] = token
                _save(checkpoint, state)
                if on_batch is not None:
                    on_batch(state.images)
            state.done.append(product.id)
            state.tokens.pop(product.id, None)
            _save(checkpoint, state)
        for registered in source.list_searches():
            destination.register_search(registered.search)
            report.searches += 1
    finally:
        bar.close()
    copy_parcels(source, destination, state, report, checkpoint, batch, progress)
    checkpoint.unlink(missing_ok=True)
    return report


def copy_parcels(
    source: CatalogStore,
    destination: CatalogStore,
    state: Checkpoint,
    report: CopyReport,
    checkpoint: Path,
    batch: int,
    progress: bool,
) -> None:
    """Copy every parcel layer, each in one destination transaction, streamed in batches.

    A layer keeps its name, load time, source, fields, skips and JRC dataset; a resumed copy
    skips the layers the checkpoint lists as done.
    """
    src, dst = source.parcels(), destination.parcels()
    if src is None:
        return
    layers = src.layers()
    if layers and dst is None:
        raise ValueError(f"the destination keeps no parcel layers ({len(layers)} to copy)")
    for layer in layers:
        if layer.name in state.parcel_layers:
            continue
        chunks = src.export(layer.name, batch)
        dst.put_layer(layer.name, layer_file(layer), chunks, progress=progress, copy_of=layer)
        report.parcel_layers += 1
        report.parcels += layer.count
        state.parcel_layers.append(layer.name)
        _save(checkpoint, state)
