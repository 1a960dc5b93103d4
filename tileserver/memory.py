"""Hand memory the allocator keeps back to the system (glibc only; elsewhere nothing).

Tiles are decoded, resampled and encoded in a pool of threads. glibc's malloc gives each
thread an arena of its own (up to 8 per CPU) and keeps what is freed there for reuse; it
returns to the system only what lies at the top of an arena, so the pages freed between
allocations that live on stay in the process. Fewer arenas share their free space, and
`malloc_trim(0)` returns the free pages inside every arena: the remedies GDAL's developers
give for RAM fragmentation. docs/RELIABILITY.md has what they changed under the soak.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os

from starlette.concurrency import run_in_threadpool

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number


@functools.cache
def _libc():
    """The C library when it is glibc (it has malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int | None) -> bool:
    """At most `count` malloc arenas for the threads started from now on (None: one per
    CPU; 0: glibc's default).

    Called before the server's threads exist; the MALLOC_ARENA_MAX environment variable,
    when set, wins (glibc read it at start).
    """
    libc = _libc()
    count = (os.cpu_count() or 1) if count is None else count
    if libc is None or count <= 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Return the free pages of every arena to the system; True if any were."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))


async def trim_every(seconds: float) -> None:
    """Trim in a worker thread every `seconds` until cancelled (the app's lifespan)."""
    if _libc() is None:
        return
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(trim)  # the server's thread pool, as for tiles
        except Exception:  # never take the server down for a trim
            logger.exception("malloc_trim failed")
