"""The encoded-tile cache: an in-process LRU, or Redis shared by every worker.

There is no explicit invalidation: keys are versioned. A tile key holds the image's and its
product's modified times (single-image tiles) or the generations of the products a mosaic
can paint (mosaic tiles, api.searches.mosaic_generation), and every write to an image or
product changes one of them, so each worker, in every process, computes a new key and misses
the stale entry; a write to another product leaves the key alone. Stale entries are never
read again; the LRU drops them when full, and Redis when their TTL runs out (or by its own
maxmemory policy).
Keys carry no catalog identity: one Redis database serves one catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import redis
from cachetools import LRUCache

if TYPE_CHECKING:
    from tileserver.settings import Settings

logger = logging.getLogger(__name__)

TILE_PREFIX = "tileserver:tile:"
REDIS_SCHEMES = ("redis", "rediss", "unix")
CONNECT_TIMEOUT = 1.0  # seconds; a Redis that does not answer must not stall tiles for long
READ_TIMEOUT = 2.0
RETRY_AFTER = 5.0  # seconds without trying Redis after it failed
WARN_EVERY = 30.0  # seconds between two warnings about the same outage
_HEADER = struct.Struct(">I")  # length of the JSON header before a tile's bytes


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


class Cache(Protocol):
    """What tile endpoints need of a cache."""

    enabled: bool
    remote: bool  # get/put do network I/O: call them off the event loop

    def get(self, key: str) -> CachedTile | None:
        """The cached tile for `key`, or None."""

    def put(self, key: str, entry: CachedTile) -> None:
        """Remember a tile."""

    def clear(self) -> None:
        """Forget every tile."""


class TileCache:
    """Thread-safe LRU of encoded tiles; size counted in bytes of content."""

    remote = False

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


def redis_client(url: str) -> redis.Redis:
    """A client of `url` (connects lazily); ValueError naming the URL for other schemes."""
    scheme = urlsplit(url).scheme
    if scheme not in REDIS_SCHEMES:
        raise ValueError(
            f"unsupported cache URL '{url}': use redis://HOST:PORT/DB (or rediss://, unix://)"
        )
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT
    )


def redis_key(prefix: str, key: str) -> str:
    """`prefix` + a digest of `key`: bounded length, and `clear()` finds ours by prefix."""
    return prefix + hashlib.blake2b(key.encode(), digest_size=20).hexdigest()


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """UNLINK every key starting with `prefix` (SCAN, never FLUSHDB); how many went."""
    deleted = 0
    batch: list[bytes] = []
    for name in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(name)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


class Outage:
    """Redis failures: a warning at most every WARN_EVERY s, no retry for RETRY_AFTER s.

    Without the pause, a Redis that times out would add its timeouts to every tile.
    """

    def __init__(self, what: str):
        self.what = what
        self._retry_at = 0.0
        self._warned_at = -WARN_EVERY

    def up(self) -> bool:
        """Whether Redis is worth trying now."""
        return time.monotonic() >= self._retry_at

    def failed(self, exc: Exception) -> None:
        """Note a failure, warn unless warned lately."""
        now = time.monotonic()
        self._retry_at = now + RETRY_AFTER
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning("%s unavailable, going on without it: %s", self.what, exc)


def pack(entry: CachedTile) -> bytes:
    """A tile as one Redis value: header length, JSON header, content."""
    header = json.dumps(
        {"media_type": entry.media_type, "etag": entry.etag, "headers": entry.headers}
    ).encode()
    return _HEADER.pack(len(header)) + header + entry.content


def unpack(value: bytes) -> CachedTile:
    """The tile `pack` wrote."""
    (size,) = _HEADER.unpack_from(value)
    start = _HEADER.size
    header = json.loads(value[start : start + size])
    return CachedTile(
        value[start + size :], header["media_type"], header["etag"], header["headers"]
    )


class RedisCache:
    """Tiles in Redis, shared by every worker; entries expire after `ttl` seconds.

    Redis being down or failing never fails a tile: it is rendered without the cache.
    """

    remote = True

    def __init__(self, client: redis.Redis, ttl: int, prefix: str = TILE_PREFIX):
        self.client, self.ttl, self.prefix = client, ttl, prefix
        self.enabled = True
        self.outage = Outage("tile cache (Redis)")

    def get(self, key: str) -> CachedTile | None:
        """The cached tile for `key`, or None (also when Redis fails)."""
        if not self.outage.up():
            return None
        try:
            value = self.client.get(redis_key(self.prefix, key))
        except redis.RedisError as exc:
            self.outage.failed(exc)
            return None
        if value is None:
            return None
        try:
            return unpack(value)
        except (struct.error, ValueError, KeyError):  # not ours or an older layout: a miss
            return None

    def put(self, key: str, entry: CachedTile) -> None:
        """Remember a tile for `ttl` seconds (skipped when Redis fails)."""
        if not self.outage.up():
            return
        try:
            self.client.set(redis_key(self.prefix, key), pack(entry), ex=self.ttl)
        except redis.RedisError as exc:
            self.outage.failed(exc)

    def ping(self) -> None:
        """Ask Redis whether it answers (readiness); raises redis.RedisError when not."""
        self.client.ping()

    def clear(self) -> None:
        """Delete our tiles only: keys under the prefix."""
        delete_prefix(self.client, self.prefix)


def open_cache(settings: Settings) -> Cache:
    """Redis when `cache_url` is set, else the in-process LRU of `cache_max_bytes`."""
    if not settings.cache_url:
        return TileCache(settings.cache_max_bytes)
    return RedisCache(redis_client(settings.cache_url), settings.cache_ttl)
