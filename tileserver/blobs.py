"""Blob bytes: received streamed, checked, stored under DATA_DIR by generated names.

A blob's record (catalog.blobs) is created first; its bytes then arrive in one request
(`Receiver`: counted against TILESERVER_MAX_BLOB_BYTES, hashed as they come, written to
`DATA_DIR/blobs/.staging/<id>.<random>`). Only when the byte count and the MD5 agree with
what the record declared are they renamed to `DATA_DIR/blobs/<id>.<key>` (`key` random, kept
in the record) and the record marked `available`, in an update that succeeds only while it
is still `pending`: of two uploads of one blob, one lands and the other's file is removed.
No path holds anything a caller chose: ids and keys are hex the server generated.

Blob files are not under the folders product reads may open (opener.Confinement): bytes a
caller uploads as a blob never become an image's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

from tileserver.catalog.blobs import ID_PATTERN, Blob, BlobStore, not_found
from tileserver.catalog.models import utcnow
from tileserver.catalog.store import Conflict, NotFound

logger = logging.getLogger(__name__)

STALE_SECONDS = 24 * 3600  # staged bytes untouched this long belong to no live upload


class BlobError(ValueError):
    """Bytes that do not match what the record declared: the text says what (a 400)."""


class TooLarge(ValueError):
    """More bytes than TILESERVER_MAX_BLOB_BYTES (a 413)."""


class BlobFiles:
    """The blob files of one data dir."""

    def __init__(self, data_dir: Path, max_bytes: int):
        self.folder = data_dir / "blobs"
        self.staging = self.folder / ".staging"
        self.max_bytes = max_bytes

    def path(self, blob: Blob) -> Path:
        """The file of an available blob (its id and key are hex the server made)."""
        if not ID_PATTERN.match(blob.id) or not blob.key or not ID_PATTERN.match(blob.key):
            raise not_found(blob.id)
        return self.folder / f"{blob.id}.{blob.key}"

    def too_large(self) -> str:
        """The 413's text."""
        return f"blob larger than {self.max_bytes} bytes (TILESERVER_MAX_BLOB_BYTES)"

    def receiver(self, blob: Blob) -> Receiver:
        """Where a pending blob's bytes go; Conflict when it has them already."""
        if blob.storage_state != "pending":
            raise Conflict(
                f"blob '{blob.id}' has its data already: delete it and create it again "
                "to replace the bytes"
            )
        self.staging.mkdir(parents=True, exist_ok=True)
        return Receiver(self, blob)

    def commit(self, store: BlobStore, receiver: Receiver) -> Blob:
        """Check the received bytes against the record, then store them and mark the blob
        available; BlobError (nothing kept) when they do not match."""
        blob, size, md5 = receiver.blob, receiver.size, receiver.digest.hexdigest()
        try:
            if blob.size is not None and blob.size != size:
                raise BlobError(f"received {size} bytes where 'size' said {blob.size}")
            if blob.md5 is not None and blob.md5 != md5:
                raise BlobError(f"the bytes' MD5 is {md5}, not the 'md5' declared ({blob.md5})")
        except BlobError:
            receiver.discard()
            raise
        key = uuid.uuid4().hex
        done = blob.model_copy(
            update={
                "storage_state": "available",
                "size": size,
                "md5": md5,
                "key": key,
                "modified": utcnow(),
            }
        )
        target = self.path(done)
        os.replace(receiver.file, target)
        try:
            return store.update(done, state_was="pending")
        except (Conflict, NotFound):  # another upload landed first, or the blob was deleted
            target.unlink(missing_ok=True)
            raise

    def remove(self, blob: Blob) -> None:
        """Remove a deleted blob's file (a download under way keeps reading it)."""
        if blob.key:
            self.path(blob).unlink(missing_ok=True)

    def open(self, blob: Blob) -> Path:
        """The file to send; NotFound while the blob has no data, or when it vanished."""
        if blob.storage_state != "available":
            raise Conflict(f"blob '{blob.id}' has no data yet: send it to its data_url")
        path = self.path(blob)
        if not path.is_file():
            logger.warning("blob %s: its file is missing", blob.id)
            raise NotFound(f"blob '{blob.id}' has lost its data")
        return path

    def purge_expired(self, store: BlobStore, limit: int = 100) -> int:
        """Delete blobs past their `expires` (records, then files), and staged bytes of
        uploads cut off over STALE_SECONDS ago (a crash, a restart); how many blobs."""
        cutoff = time.time() - STALE_SECONDS
        for staged in self.staging.iterdir() if self.staging.is_dir() else []:
            with contextlib.suppress(OSError):
                if staged.stat().st_mtime < cutoff:
                    staged.unlink()
        count = 0
        for blob in store.expired(utcnow(), limit):
            try:
                self.remove(store.delete(blob.id))
            except NotFound:
                continue
            count += 1
        return count


class Receiver:
    """The bytes of one blob as they arrive: written, counted against the limit, hashed."""

    def __init__(self, files: BlobFiles, blob: Blob):
        self.files, self.blob = files, blob
        self.size = 0
        self.digest = hashlib.md5(usedforsecurity=False)
        self.file = files.staging / f"{blob.id}.{uuid.uuid4().hex}"
        self.handle = open(self.file, "wb")  # noqa: SIM115 (closed by finish/discard)

    def write(self, chunk: bytes) -> None:
        """Write a chunk; TooLarge (and nothing kept) past the byte limit."""
        self.size += len(chunk)
        if self.size > self.files.max_bytes:
            self.discard()
            raise TooLarge(self.files.too_large())
        self.digest.update(chunk)
        self.handle.write(chunk)

    def finish(self) -> None:
        """All bytes are in."""
        self.handle.close()

    def discard(self) -> None:
        """The bytes are not kept."""
        self.handle.close()
        self.file.unlink(missing_ok=True)
