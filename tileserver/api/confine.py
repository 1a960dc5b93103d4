"""The confinement every request runs under: what the opener lets it open (opener.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from tileserver.opener import Confinement, confined


class Confine:
    """ASGI middleware: the app's Confinement in the request's context, for every thread the
    request hands work to (starlette's thread pool and ContextPool copy it)."""

    def __init__(self, app: ASGIApp, confinement: Confinement):
        self.app, self.confinement = app, confinement

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside the confinement."""
        with confined(self.confinement):
            await self.app(scope, receive, send)
