"""API keys: who a request comes from.

A key is shown once, at creation, as `tsk_<id>_<secret>`; the catalog keeps its id and the
SHA-256 of the secret. The secret is 256 random bits, so a fast hash is enough (a slow one
protects guessable passwords, not random tokens) and a lookup is one row by id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from datetime import datetime

import cachetools.func
from cachetools import TTLCache
from pydantic import BaseModel, Field

from tileserver.catalog.access import Principal
from tileserver.catalog.models import utcnow

PREFIX = "tsk"
IDENTITY_PATTERN = r"^[A-Za-z0-9._@-]+$"
TOKEN = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,100}})$")


class ApiKey(BaseModel):
    """A stored key: the identity it stands for, never its secret."""

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    user: str = Field(pattern=IDENTITY_PATTERN, max_length=200)
    org: str = Field(pattern=IDENTITY_PATTERN, max_length=200)
    admin: bool = Field(False, description="reads and writes every product, changes any list")
    note: str | None = None
    created: datetime = Field(default_factory=utcnow)
    revoked: datetime | None = None
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)

    @property
    def principal(self) -> Principal:
        """The identity requests made with this key act as."""
        return Principal(user=self.user, org=self.org, admin=self.admin)

    def matches(self, secret: str) -> bool:
        """The secret is this key's (compared in constant time)."""
        return hmac.compare_digest(digest(secret), self.secret_sha256)


def digest(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(
    user: str, org: str, admin: bool = False, note: str | None = None
) -> tuple[ApiKey, str]:
    """A new key record and the token to hand out (the only time it exists in clear)."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id, user=user, org=org, admin=admin, note=note, secret_sha256=digest(secret)
    )
    return key, f"{PREFIX}_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


UNKNOWN = object()  # a token KeyRing has not looked up lately


class KeyRing:
    """Checks tokens against the store's keys, remembering answers for `ttl` seconds.

    Without the memory every tile would cost a catalog lookup; with it a revoked key
    still works for up to `ttl` seconds in each process that saw it.
    """

    def __init__(self, store, ttl: float = 5.0):
        self.store, self.ttl = store, ttl
        self._enabled = cachetools.func.ttl_cache(maxsize=1, ttl=ttl)(store.has_keys)
        # a flood of made-up tokens evicts the oldest answers instead of growing memory
        self._known: TTLCache[str, Principal | None] = TTLCache(maxsize=10_000, ttl=ttl)
        self._lock = threading.Lock()

    def enabled(self) -> bool:
        """Whether any key was ever created: until then the server is open (the demo).

        Revoked keys count, so revoking the last key does not open the server.
        """
        return self._enabled()

    def principal(self, token: str) -> Principal | None:
        """Who the token stands for; None when it is malformed, unknown or revoked."""
        memo = digest(token)  # tokens are not kept in clear, not even in memory
        with self._lock:
            cached = self._known.get(memo, UNKNOWN)
        if cached is not UNKNOWN:
            return cached
        found = None
        parsed = parse_token(token)
        if parsed is not None:
            key = self.store.find_key(parsed[0])
            if key is not None and key.revoked is None and key.matches(parsed[1]):
                found = key.principal
        with self._lock:
            self._known[memo] = found
        return found


def key_users(store, seconds: float = 5.0):
    """A function giving, per user, the organisations of their live keys and whether one
    of them is an admin key; read from the store at most every `seconds`."""

    @cachetools.func.ttl_cache(maxsize=1, ttl=seconds)
    def users() -> dict[str, tuple[frozenset[str], bool]]:
        found: dict[str, tuple[frozenset[str], bool]] = {}
        for key in store.list_keys():
            if key.revoked is None:
                orgs, admin = found.get(key.user, (frozenset(), False))
                found[key.user] = (orgs | {key.org}, admin or key.admin)
        return found

    return users
