"""The encoded-tile cache: an in-process LRU bounded by bytes."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from cachetools import LRUCache


@dataclass(frozen=True)
class CachedTile:
    """Encoded bytes with their media type, ETag and headers that describe them."""

    content: bytes
    media_type: str
    etag: str
    headers: dict[str, str] = field(default_factory=dict)


def make_etag(content: bytes) -> str:
    """A strong ETag from the bytes, so equal tiles validate equally on every worker."""
    return '"' + hashlib.blake2b(content, digest_size=16).hexdigest() + '"'


class TileCache:
    """Thread-safe LRU of encoded tiles; size counted in bytes of content."""

    def __init__(self, max_bytes: int):
        self._cache: LRUCache = LRUCache(maxsize=max(max_bytes, 1), getsizeof=self._size)
        self._lock = threading.Lock()
        self.enabled = max_bytes > 0

    @staticmethod
    def _size(entry: CachedTile) -> int:
        return len(entry.content) + 256

    def get(self, key: str) -> CachedTile | None:
        """The cached tile for `key`, or None."""
        if not self.enabled:
            return None
        with self._lock:
            return self._cache.get(key)

    def put(self, key: str, entry: CachedTile) -> None:
        """Remember a tile (silently skipped when larger than the whole cache)."""
        if not self.enabled or self._size(entry) > self._cache.maxsize:
            return
        with self._lock:
            self._cache[key] = entry

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._cache.clear()
