"""Where a request's time went, for `Server-Timing` headers and request logs (as titiler).

A `Timings` recorder lives in a context variable set per request (`recording`); code on
the tile path marks its stages with `timed("read")` and never needs the request. Context
variables follow the request into its worker threads (`threads.ContextPool` copies them),
so reads of several files on several threads land in the same recorder. A stage counts
wall-clock time while at least one thread is in it: four band reads overlapping for 40 ms
are 40 ms of `read`, not 160.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

STAGES = ("catalog", "read", "render", "encode")  # a tile's stages, in the header's order


class Timings:
    """Milliseconds per stage of one request; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, tuple[int, float]] = {}  # stage -> (threads in it, since)
        self.seconds: dict[str, float] = {}

    def enter(self, stage: str) -> None:
        """A thread starts `stage`; the clock runs from the first."""
        now = time.perf_counter()
        with self._lock:
            count, since = self._active.get(stage, (0, now))
            self._active[stage] = (count + 1, since if count else now)

    def leave(self, stage: str) -> None:
        """A thread ends `stage`; the time counts when the last one leaves."""
        now = time.perf_counter()
        with self._lock:
            count, since = self._active[stage]
            if count > 1:
                self._active[stage] = (count - 1, since)
                return
            del self._active[stage]
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - since

    def milliseconds(self) -> dict[str, float]:
        """Finished stages in milliseconds, rounded to 0.01 ms."""
        with self._lock:
            return {stage: round(s * 1000, 2) for stage, s in self.seconds.items()}

    def header(self) -> str:
        """The `Server-Timing` value: `catalog;dur=1.2, read;dur=40.5, ...`."""
        ms = self.milliseconds()
        order = [s for s in STAGES if s in ms] + sorted(set(ms) - set(STAGES))
        return ", ".join(f"{stage};dur={ms[stage]}" for stage in order)


_CURRENT: ContextVar[Timings | None] = ContextVar("tileserver_timings", default=None)


def current() -> Timings | None:
    """The recorder of the request this code runs for (None outside a request)."""
    return _CURRENT.get()


@contextmanager
def recording(timings: Timings | None = None) -> Iterator[Timings]:
    """Record the stages of the code inside (and of the threads it starts) in `timings`."""
    timings = timings or Timings()
    token = _CURRENT.set(timings)
    try:
        yield timings
    finally:
        _CURRENT.reset(token)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Count the time inside as `stage` of the current request; nothing outside one."""
    timings = _CURRENT.get()
    if timings is None:
        yield
        return
    timings.enter(stage)
    try:
        yield
    finally:
        timings.leave(stage)
