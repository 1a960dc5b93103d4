"""Where rendered chips are kept: a folder, or Redis shared by every worker.

Chip names are digests of what decides their pixels (see `api.chips.chip_file_name`), so
like tile keys they are versioned: a changed image or product gives new names, and stale
chips are never served; Redis drops them after the TTL, nothing prunes the folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis

from tileserver.cache import Outage, delete_prefix, redis_client
from tileserver.settings import Settings

CHIP_PREFIX = "tileserver:chip:"


class ChipCacheUnavailable(Exception):
    """The chip cache cannot be used (Redis down): chips could be made but not served."""


class ChipStore(Protocol):
    """Rendered chips by name."""

    def ensure(self, name: str, render: Callable[[], bytes]) -> bool:
        """Keep `render()` under `name` unless present; True when rendered now."""

    def get(self, name: str) -> Path | bytes | None:
        """The chip: a file path (folder) or its bytes (Redis); None when absent."""


def chip_dir(settings: Settings) -> Path:
    """Where chips are kept in folder mode."""
    return settings.chip_cache_dir or settings.data_dir / "chips"


class FolderChips:
    """Chips as files of one folder, written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder

    def ensure(self, name: str, render: Callable[[], bytes]) -> bool:
        """Write `render()` to folder/name unless present (atomically); True when rendered."""
        path = self.folder / name
        if path.is_file():
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        content = render()
        handle, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(content)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def get(self, name: str) -> Path | None:
        """The chip's file, or None."""
        path = self.folder / name
        return path if path.is_file() else None


class RedisChips:
    """Chips as Redis values under CHIP_PREFIX, each kept `ttl` seconds after last made or
    listed, so a page's chips outlive the page by the TTL.

    Unlike tiles, a chip only Redis could serve is useless without it: failures raise
    ChipCacheUnavailable (a 503) instead of rendering uncached.
    """

    def __init__(self, client: redis.Redis, ttl: int, prefix: str = CHIP_PREFIX):
        self.client, self.ttl, self.prefix = client, ttl, prefix
        self.outage = Outage("chip cache (Redis)")

    def ensure(self, name: str, render: Callable[[], bytes]) -> bool:
        """Store `render()` unless present; a present chip's TTL starts again."""
        key = self.prefix + name
        try:
            if self.client.expire(key, self.ttl):  # one round trip: exists, and refreshed
                return False
            content = render()
            self.client.set(key, content, ex=self.ttl)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return True

    def get(self, name: str) -> bytes | None:
        """The chip's bytes, or None."""
        try:
            return self.client.get(self.prefix + name)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def clear(self) -> None:
        """Delete our chips only: keys under the prefix."""
        delete_prefix(self.client, self.prefix)

    def _unavailable(self, exc: Exception) -> ChipCacheUnavailable:
        self.outage.failed(exc)  # the details go to the log, not to clients
        return ChipCacheUnavailable("the chip cache is unavailable; try again later")


def open_chip_store(settings: Settings) -> ChipStore:
    """Redis when `cache_url` is set, else the chip folder."""
    if not settings.cache_url:
        return FolderChips(chip_dir(settings))
    return RedisChips(redis_client(settings.cache_url), settings.cache_ttl)
