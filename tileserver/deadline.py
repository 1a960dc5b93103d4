"""Bounded time for every request: a deadline, cancellation, and slots for remote reads.

A request's `Deadline` lives in a context variable set by `DeadlineMiddleware`; it reaches
the threads that do the work because Starlette's `run_in_threadpool` and every pool of the
server (opener.ContextPool) run their tasks in a copy of the request's context, and the
copies share the one Deadline object. Blocking code cannot be interrupted from outside, so
it calls `check()` between units of work (a file read, an image of a mosaic, a chip, a
download window, a parcel): past the deadline, or once the client has gone, `check()`
raises and the work stops there.

The middleware answers 504 itself when the deadline passes before the response started,
without waiting for the worker thread (whose late answer is discarded). It buffers the
request body (BodyLimit caps it) and then keeps reading the connection, so a client that
disconnects cancels its request's work.

Remote reads (`/vsis3/`, `/vsigs/`, `/vsicurl/`, `http(s)://`) take one of a bounded number
of slots per process: a bucket that hangs holds at most that many threads, and requests
that find no slot within a short wait get a 503 with Retry-After instead of queueing.

Pure ASGI and the standard library only: render/ and catalog/ import this module and must
not depend on FastAPI or Starlette.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

DEFAULT_REMOTE_READS = 32
DEFAULT_REMOTE_WAIT = 2.0
# what a GDAL path or URL reads over the network (nested paths like /vsizip//vsicurl/ too)
REMOTE_MARKERS = (
    "/vsis3",
    "/vsigs",
    "/vsicurl",
    "/vsiaz",
    "/vsiadls",
    "/vsioss",
    "/vsiswift",
    "/vsiwebhdfs",
    "/vsihdfs",
    "http://",
    "https://",
    "ftp://",
)


class DeadlineExceeded(Exception):
    """The request ran out of time, or its client went away: its work stops."""


class RemoteBusy(Exception):
    """Every remote-read slot stayed taken for the whole wait: try again shortly."""

    retry_after = 5  # seconds, the Retry-After of the 503


class Deadline:
    """When one request's time is up (monotonic seconds), and whether it was cancelled."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds if seconds else math.inf
        self.reason: str | None = None  # set once: the request stops at its next check

    def remaining(self) -> float:
        """Seconds left (0 once cancelled or expired; inf without a limit)."""
        if self.reason is not None:
            return 0.0
        return max(0.0, self.expires - time.monotonic())

    def cancel(self, reason: str) -> None:
        """Make every later check() of this request raise DeadlineExceeded(reason)."""
        if self.reason is None:
            self.reason = reason

    def check(self) -> None:
        """Raise DeadlineExceeded once the request is cancelled or out of time."""
        if self.reason is None and time.monotonic() >= self.expires:
            self.cancel(timeout_detail(self.seconds))
        if self.reason is not None:
            raise DeadlineExceeded(self.reason)


def timeout_detail(seconds: float | None) -> str:
    """The 504's detail: what happened and what the caller can do."""
    return (
        f"the request took longer than the server's limit of {seconds:g} s and was stopped; "
        "ask for less (a smaller area, fewer images or bands) or try again later"
    )


CLIENT_GONE = "the client disconnected; the request's work was abandoned"
_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "tileserver_deadline", default=None
)


def current() -> Deadline | None:
    """The running request's deadline (None outside a request: the CLI, tests)."""
    return _current.get()


def check() -> None:
    """A checkpoint between units of work: raise if the request is out of time or cancelled."""
    deadline = _current.get()
    if deadline is not None:
        deadline.check()


def remaining() -> float:
    """Seconds the running request has left (inf outside a request)."""
    deadline = _current.get()
    return math.inf if deadline is None else deadline.remaining()


@contextmanager
def running(deadline: Deadline | None) -> Iterator[Deadline | None]:
    """Run the block under `deadline` (tests and work started outside a request)."""
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


# ---------------------------------------------------------------- remote-read slots


@functools.lru_cache(maxsize=1024)
def _vrt_is_remote(path: str, stamp: tuple) -> bool:
    """Whether a (small) VRT names sources on the network; cached per file version."""
    del stamp  # part of the cache key only
    try:
        with open(path, encoding="utf-8", errors="replace") as vrt:
            text = vrt.read(4_000_000)
    except OSError:
        return False
    return any(marker in text for marker in REMOTE_MARKERS)


def is_remote(href: str) -> bool:
    """Whether reading `href` goes over the network: a remote path, or a local VRT over
    remote files (a bucket's DIMAP mosaicked by a VRT in DATA_DIR/vrt)."""
    if any(marker in href for marker in REMOTE_MARKERS):
        return True
    if href.lower().endswith(".vrt"):
        try:
            stat = os.stat(href)
        except OSError:
            return False
        return _vrt_is_remote(href, (stat.st_size, stat.st_mtime_ns))
    return False


class RemoteSlots:
    """At most `size` remote reads at once in this process; a caller waits `wait` s at most."""

    def __init__(self, size: int = DEFAULT_REMOTE_READS, wait: float = DEFAULT_REMOTE_WAIT):
        self._held = 0  # slots held now, across reconfigurations
        self._count = threading.Lock()
        self.configure(size, wait)

    def configure(self, size: int, wait: float) -> None:
        """Set the bound (the server's settings); reads already holding a slot keep it."""
        self.size, self.wait = size, wait
        self._slots = threading.BoundedSemaphore(size)
        self.refused = 0  # requests answered 503 since start (tests and diagnostics)

    def in_use(self) -> int:
        """Remote reads holding a slot now (metrics)."""
        return self._held

    @contextmanager
    def slot(self, href: str) -> Iterator[None]:
        """Hold a slot while reading `href` if it is remote; local files never wait."""
        if not is_remote(href):
            yield
            return
        check()
        slots = self._slots  # the one acquired is the one released, even if reconfigured
        wait = min(self.wait, remaining())
        if not slots.acquire(timeout=wait):
            check()  # a request out of time says so rather than "busy"
            self.refused += 1
            raise RemoteBusy(
                f"all {self.size} remote reads of this server are busy (a bucket or server "
                "is slow to answer); try again shortly"
            )
        with self._count:
            self._held += 1
        try:
            yield
        finally:
            with self._count:
                self._held -= 1
            slots.release()


REMOTE_READS = RemoteSlots()


# ---------------------------------------------------------------- the ASGI middleware


class DeadlineMiddleware:
    """Pure ASGI: a Deadline per HTTP request; 504 at the deadline; cancel on disconnect."""

    def __init__(self, app, seconds: float | None, streamed: re.Pattern | None = None):
        self.app, self.seconds, self.streamed = app, seconds, streamed

    async def __call__(self, scope, receive, send) -> None:
        """Run the app under a deadline while watching the connection for a disconnect;
        paths matching `streamed` (uploads) bound their own time and are not buffered."""
        if scope["type"] != "http" or (self.streamed and self.streamed.search(scope["path"])):
            await self.app(scope, receive, send)
            return
        deadline = Deadline(self.seconds)
        body = []
        while True:  # small: BodyLimit (outside) refuses a large one while it is read here
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.append(message)
            if not message.get("more_body", False):
                break
        gone = asyncio.Event()
        answered = False  # this middleware answered: whatever the app sends later is dropped
        started = False

        async def app_receive():
            if body:
                return body.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def app_send(message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    deadline.cancel(CLIENT_GONE)
                    gone.set()
                    return

        token = _current.set(deadline)
        try:  # the tasks start in a copy of this context: with the deadline
            work = asyncio.ensure_future(self.app(scope, app_receive, app_send))
            listener = asyncio.ensure_future(listen())
        finally:
            _current.reset(token)
        try:
            timeout = None if math.isinf(deadline.expires) else deadline.remaining()
            done, _ = await asyncio.wait(
                {work, listener}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                work.result()  # the app's own exception goes on to ServerErrorMiddleware
                return
            if listener in done:  # the client left: nobody to answer
                answered = True
                abandon(work)
                return
            if started:  # a streamed answer under way: its checkpoints now raise
                deadline.cancel(timeout_detail(self.seconds))
                await work
                return
            deadline.cancel(timeout_detail(self.seconds))
            answered = True
            abandon(work)
            logger.warning(
                "%s %s: stopped at the %gs deadline", scope["method"], scope["path"], self.seconds
            )
            await send_json(send, 504, {"detail": deadline.reason})
        except BaseException:
            if not work.done():
                answered = True
                work.cancel()
            raise
        finally:
            gone.set()  # an abandoned app waiting on receive() gets its disconnect
            listener.cancel()


def abandon(work: asyncio.Future) -> None:
    """Let a request's app task finish on its own; its result and errors are dropped."""

    def done(task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.debug("abandoned request ended with %r", task.exception())

    work.add_done_callback(done)


async def send_json(send, status: int, content: dict, headers: dict | None = None) -> None:
    """A JSON answer through raw ASGI messages."""
    body = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
