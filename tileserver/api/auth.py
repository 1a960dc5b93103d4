"""Authentication: every request's API key, checked before any route runs.

The key comes as `Authorization: Bearer <key>`, as HTTP Basic credentials the way JRC CbM
clients send them (`requests.get(url, auth=(user, password))`: the key id as user, its
secret as password; see `basic_token`) or, for map clients that cannot send headers (QGIS
XYZ layers, <img> tags), as `?api_key=<key>`. Until a key exists the server
is open; then a request without a key is refused (401) unless TILESERVER_ALLOW_ANONYMOUS
lets it read `public` products. The caller lands in `request.state.principal`, which
`deps.get_store` turns into the catalog as that caller sees it.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, urlencode

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tileserver.catalog.access import ANONYMOUS, OPEN, Principal
from tileserver.catalog.keys import PREFIX, KeyRing

# no data behind these: probes, the API description and the viewer's JS/CSS
METRICS_PATH = "/metrics"
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/static/")
QUERY_KEY = "api_key"


MAX_BASIC = 1024  # bytes of a Basic credential worth decoding (a key is ~70)


def basic_token(credentials: str) -> str | None:
    """The key that HTTP Basic `credentials` (base64 of user:password) stand for.

    User `<id>` (or `tsk_<id>`) with password `<secret>` is the key `tsk_<id>_<secret>`;
    a whole key as password (any user) is that key. Anything else is a key no store
    holds, so it is refused like a wrong Bearer key. None when it is not Basic syntax.
    """
    if len(credentials) > MAX_BASIC:
        return None
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    if not colon or not password:
        return None
    if password.startswith(f"{PREFIX}_"):
        return password
    user = user.removeprefix(f"{PREFIX}_")
    return f"{PREFIX}_{user}_{password}"


def request_token(scope: Scope) -> str | None:
    """The API key a request carries (header first), or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            if scheme.lower() == "basic" and token.strip():
                return basic_token(token.strip()) or "invalid"
    query = scope.get("query_string", b"").decode("latin-1")
    if query:  # parsed whatever its spelling: `api%5Fkey` is `api_key` too, as logs.scrub knows
        for name, value in parse_qsl(query):
            if name == QUERY_KEY and value:
                return value
    return None


def key_query(request) -> str:
    """`api_key=...` when the request brought its key in the query, else ''.

    URLs an answer hands out (TileJSON tiles, WMTS, gallery images) carry it on, since
    the clients that follow them (map libraries, QGIS, <img>) send no headers.
    """
    value = request.query_params.get(QUERY_KEY)
    return urlencode({QUERY_KEY: value}) if value else ""


class KeyAuth:
    """ASGI middleware: the caller's Principal in `scope["state"]`, or a 401."""

    def __init__(self, app: ASGIApp, keys: KeyRing, allow_anonymous: bool = False):
        self.app, self.keys, self.allow_anonymous = app, keys, allow_anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Identify the caller, then pass the request on (or answer 401)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal, problem = self.identify(scope)
        if problem is not None:
            await self.refuse(scope, receive, send, problem)
            return
        scope.setdefault("state", {})["principal"] = principal
        if principal.user is None:
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, private(send))

    def identify(self, scope: Scope) -> tuple[Principal, str | None]:
        """The caller, or the reason they are refused.

        On the event loop: the key ring answers from memory, and queries the store (one
        indexed row) only when a key or the "any keys?" answer is older than its TTL.
        """
        if scope["path"] == METRICS_PATH:  # its own token (api/health.py), not an API key
            return ANONYMOUS, None
        if not self.keys.enabled():
            return OPEN, None
        token = request_token(scope)
        if token is None:
            if self.allow_anonymous or scope["path"].startswith(OPEN_PATHS):
                return ANONYMOUS, None
            return ANONYMOUS, "this server needs an API key: send Authorization: Bearer <key>"
        principal = self.keys.principal(token)
        if principal is None:
            return ANONYMOUS, "invalid or revoked API key"
        return principal, None

    @staticmethod
    async def refuse(scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        """401 with the JSON detail every error has, and the Bearer challenge (the JRC
        services' /query/ routes, whose clients use Basic credentials, add Basic's)."""
        challenge = 'Bearer realm="tileserver"'
        if scope["path"].startswith("/query"):
            challenge += ', Basic realm="tileserver"'
        challenge = {"WWW-Authenticate": challenge}
        await JSONResponse({"detail": detail}, 401, challenge)(scope, receive, send)


def private(send: Send) -> Send:
    """Answers to a keyed request are for that caller: no shared cache may keep them."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [
                (name, value.replace(b"public", b"private") if name == b"cache-control" else value)
                for name, value in message.get("headers", [])
            ]
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
