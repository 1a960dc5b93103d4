"""Worker threads that carry the request's context.

A request's deadline and the confinement of the files it may open live in context
variables; a plain ThreadPoolExecutor runs its tasks in an empty context, so a read
handed to a pool thread would forget both. Every pool in the server is a ContextPool. Its
threads also keep a rasterio environment (opener.thread_gdal_env), so the GDAL calls of the
reads handed to them do not each start one.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor

from tileserver.opener import thread_gdal_env


class ContextPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run in a copy of the submitting thread's context."""

    def __init__(self, max_workers: int | None = None, **kwargs) -> None:
        super().__init__(max_workers, initializer=thread_gdal_env, **kwargs)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run `fn` in the caller's context (map() goes through here too)."""
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)
