"""The client's connection to a tileserver: base URL, API key, errors by status.

Only httpx: the client must stay importable without the server's dependencies.
"""

from __future__ import annotations

import os

import httpx

URL_ENV = "TILESERVER_URL"
KEY_ENV = "TILESERVER_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """A 4xx answer; `status` is the code, the message the server's `detail`."""

    status: int | None = None


class BadRequestError(ClientError):
    """400/422: the server named what was wrong with the request."""


class AuthError(ClientError):
    """401: no key, or a wrong or revoked one."""


class ForbiddenError(ClientError):
    """403: the key may read the product but not do this."""


class NotFoundError(ClientError):
    """404: missing, or hidden from this key (the server does not say which)."""


class ConflictError(ClientError):
    """409: the id is taken, or the product still has images."""


class ServerError(Exception):
    """A 5xx answer."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    422: BadRequestError,
}


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail is not None else response.text[:500]


class CatalogClient:
    """One server and one key; `url` and `api_key` default to TILESERVER_URL and
    TILESERVER_API_KEY, so a script changes credentials, not code."""

    _default: CatalogClient | None = None

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout=60.0):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.session = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __repr__(self) -> str:  # never the key
        return f"CatalogClient(url={self.url!r})"

    @classmethod
    def get_default_client(cls) -> CatalogClient:
        """The client used when none is passed (built from the environment on first use)."""
        if cls._default is None:
            cls._default = CatalogClient()
        return cls._default

    @classmethod
    def set_default_client(cls, client: CatalogClient | None) -> None:
        """Use `client` wherever none is passed (None: rebuild from the environment)."""
        cls._default = client

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """Send a request; a 4xx/5xx raises the matching error with the server's detail."""
        response = self.session.request(method, path, **kwargs)
        if response.status_code >= 500:
            raise ServerError(f"{response.status_code}: {_detail(response)}")
        if response.status_code >= 400:
            error = _BY_STATUS.get(response.status_code, ClientError)(_detail(response))
            error.status = response.status_code
            raise error
        return response

    def json(self, method: str, path: str, **kwargs):
        """The JSON of an answer."""
        return self.request(method, path, **kwargs).json()

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()


def client_or_default(client: CatalogClient | None) -> CatalogClient:
    """`client`, else the default one."""
    return client if client is not None else CatalogClient.get_default_client()
