"""Request limits: the body size (a pure ASGI middleware, so no body is ever buffered to be
measured), and the nesting depth of parsed text (filters and band math).

A declared `Content-Length` above the limit is refused before the app runs. A body without
one (chunked) is counted as the app reads it; the read that crosses the limit raises a 413
HTTPException, which FastAPI passes through its body parsing and the app's exception
handling turns into the usual JSON error. Routes that never read their body never pay.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large(limit: int) -> str:
    """The 413's detail."""
    return f"request body larger than {limit} bytes"


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, None when absent or unreadable (then bytes are counted)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Answer 413 `{"detail": ...}` to a request body larger than `max_bytes`; paths matching
    `streamed` (uploads) count their own, larger, bodies."""

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: re.Pattern | None = None):
        self.app, self.max_bytes, self.streamed = app, max_bytes, streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a declared oversize body at once; count the others as they arrive."""
        if scope["type"] != "http" or (self.streamed and self.streamed.search(scope["path"])):
            await self.app(scope, receive, send)
            return
        length = declared_length(scope)
        if length is not None and length > self.max_bytes:
            response = JSONResponse({"detail": too_large(self.max_bytes)}, status_code=413)
            await response(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except HTTPException as exc:  # read where no exception handler sees it
            if started or received <= self.max_bytes or exc.status_code != 413:
                raise
            response = JSONResponse({"detail": exc.detail}, status_code=413)
            await response(scope, receive, send)


def parenthesis_depth(text: str) -> int:
    """How deep parentheses nest in `text` (filters and expressions are bounded by it)."""
    depth = deepest = 0
    for char in text:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest
