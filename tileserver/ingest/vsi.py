"""Where scene files live: local folders, S3 and GCS buckets, named the way GDAL opens them.

Readers only see GDAL paths (`/data/x.tif`, `/vsis3/bucket/key`, `/vsigs/bucket/key`).
Pixels are read by GDAL through those paths; small metadata files (XML, JSON, tie-point
grids) and bucket listings go through obstore, configured from the same environment
variables GDAL reads, so one setting serves both:

- S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
  AWS_S3_ENDPOINT (host[:port] of an S3-compatible store), AWS_HTTPS=NO for plain HTTP,
  AWS_VIRTUAL_HOSTING=FALSE for path-style addressing, AWS_NO_SIGN_REQUEST=YES.
- GCS: GOOGLE_KEY_STRING (the service-account JSON, as the UP42 block takes it) or
  GOOGLE_APPLICATION_CREDENTIALS (its path), CPL_GS_ENDPOINT (an emulator's URL),
  GS_NO_SIGN_REQUEST=YES for anonymous access.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

import obstore
from obstore.store import GCSStore, S3Store

from tileserver import opener

Provider = Literal["file", "aws", "gcs"]
PREFIXES = {"aws": "/vsis3/", "gcs": "/vsigs/"}
SECRET_VARIABLES = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_KEY_STRING",
    "GS_OAUTH2_PRIVATE_KEY",
    "GS_SECRET_ACCESS_KEY",
)


class StorageError(OSError):
    """A bucket or file that cannot be listed or read; the message never holds a secret."""


@dataclass(frozen=True)
class Location:
    """A GDAL path split into provider, bucket (or root folder) and key."""

    provider: Provider
    bucket: str
    key: str


def gdal_path(provider: Provider, bucket: str, key: str = "") -> str:
    """The path GDAL opens for `key` in `bucket` (for `file`, bucket is a folder)."""
    key = key.lstrip("/")
    if provider == "file":
        return str(Path(bucket) / key) if key else str(Path(bucket))
    return f"{PREFIXES[provider]}{bucket}/{key}" if key else f"{PREFIXES[provider]}{bucket}"


def locate(href: str) -> Location:
    """Split a GDAL path into its provider, bucket and key."""
    for provider, prefix in PREFIXES.items():
        if href.startswith(prefix):
            bucket, _, key = href[len(prefix) :].partition("/")
            return Location(provider, bucket, key)  # type: ignore[arg-type]
    return Location("file", "/", href)


def join(href: str, relative: str) -> str:
    """`relative` (a path in a metadata file) resolved against the folder of `href`."""
    relative = relative.replace("\\", "/")
    if relative.startswith("./"):
        relative = relative[2:]
    if href.startswith("/vsi"):
        return posixpath.normpath(posixpath.join(posixpath.dirname(href), relative))
    return str((Path(href).parent / relative).resolve())


def parent(href: str) -> str:
    """The folder holding `href`."""
    return posixpath.dirname(href) if href.startswith("/vsi") else str(Path(href).parent)


def redact(text: str) -> str:
    """`text` with every configured secret value replaced, for messages and logs."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    # a service-account JSON's private key, wherever it came from
    return re.sub(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
        "***",
        text,
        flags=re.S,
    )


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().upper() in ("YES", "TRUE", "ON", "1")


# GDAL settings for serving tiles, unless the environment sets them (titiler's advice for
# COGs). A block cache of 200 MB per process instead of 5 % of RAM keeps N workers'
# memory bounded and flat; the rest makes remote reads fewer and larger. Not
# GDAL_DISABLE_READDIR_ON_OPEN: it would hide external .ovr overviews of local GeoTIFFs,
# and pooled datasets (opener.py) open each file once anyway.
# GDAL waits forever on a server that accepts a connection and never answers: the HTTP
# timeouts bound every HTTP request (connect 5 s, whole request 10 s, one retry after 0.5 s on
# 429/5xx and on timeouts), so a read of a dead server fails in about 20 s per request GDAL
# makes (opening a file makes two) instead of holding a thread and a remote-read slot for
# good. The obstore clients below use the same values.
GDAL_DEFAULTS = {
    "GDAL_CACHEMAX": "200",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_CONNECTTIMEOUT": "5",
    "GDAL_HTTP_TIMEOUT": "10",
    "GDAL_HTTP_MAX_RETRY": "1",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "5000000",
    # remote ranges already downloaded, kept per process for every handle of a file (GDAL's
    # default 16 MB holds the blocks of about 8 tiles of a 4-band COG; warm tiles fetched
    # them again, bench/README.md "Remote")
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 1024 * 1024),
}


def configure_gdal() -> None:
    """Set GDAL_DEFAULTS where unset; hand GOOGLE_KEY_STRING to GDAL, whose /vsigs/ reads
    the key's fields separately.

    Called once by the server and the command line; the key stays in this process's
    environment and is never written to disk or to the catalog.
    """
    for name, value in GDAL_DEFAULTS.items():
        os.environ.setdefault(name, value)
    key_string = os.environ.get("GOOGLE_KEY_STRING")
    if not key_string or os.environ.get("GS_OAUTH2_PRIVATE_KEY"):
        return
    try:
        key = json.loads(key_string)
    except json.JSONDecodeError:
        raise StorageError("GOOGLE_KEY_STRING is not a service-account JSON document") from None
    if not isinstance(key, dict) or not {"private_key", "client_email"} <= key.keys():
        raise StorageError("GOOGLE_KEY_STRING lacks private_key or client_email")
    os.environ["GS_OAUTH2_PRIVATE_KEY"] = key["private_key"]
    os.environ["GS_OAUTH2_CLIENT_EMAIL"] = key["client_email"]


def _environment() -> tuple:
    """The variables that shape a store, so a changed environment builds a new one."""
    names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_S3_ENDPOINT",
        "AWS_HTTPS",
        "AWS_VIRTUAL_HOSTING",
        "AWS_NO_SIGN_REQUEST",
        "GOOGLE_KEY_STRING",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "CPL_GS_ENDPOINT",
        "GS_NO_SIGN_REQUEST",
        "GDAL_HTTP_CONNECTTIMEOUT",
        "GDAL_HTTP_TIMEOUT",
        "GDAL_HTTP_MAX_RETRY",
        "GDAL_HTTP_RETRY_DELAY",
    )
    return tuple(os.environ.get(n) for n in names)


def _seconds(name: str) -> float:
    """A GDAL timeout or count from the environment, else GDAL_DEFAULTS (a bad value too)."""
    try:
        return max(0.0, float(os.environ.get(name) or GDAL_DEFAULTS[name]))
    except ValueError:
        return float(GDAL_DEFAULTS[name])


def client_options(allow_http: bool) -> dict:
    """obstore HTTP options: GDAL's timeouts, so a bucket that never answers fails as fast."""
    return {
        "allow_http": allow_http,
        "connect_timeout": f"{_seconds('GDAL_HTTP_CONNECTTIMEOUT'):g}s",
        "timeout": f"{_seconds('GDAL_HTTP_TIMEOUT'):g}s",
    }


def retry_config() -> dict:
    """obstore retries like GDAL's (its own default retries for up to 3 minutes)."""
    retries = int(_seconds("GDAL_HTTP_MAX_RETRY"))
    total = (retries + 1) * (_seconds("GDAL_HTTP_TIMEOUT") + _seconds("GDAL_HTTP_RETRY_DELAY"))
    return {"max_retries": retries, "retry_timeout": timedelta(seconds=total)}


@lru_cache(maxsize=32)
def _store(provider: Provider, bucket: str, environment: tuple):
    """An obstore client for one bucket, configured like GDAL from the environment."""
    del environment  # part of the cache key only
    env = os.environ
    if provider == "aws":
        options: dict = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        }
        if env.get("AWS_S3_ENDPOINT"):
            endpoint = env["AWS_S3_ENDPOINT"]
            if "://" not in endpoint:
                scheme = "https" if _flag("AWS_HTTPS", True) else "http"
                endpoint = f"{scheme}://{endpoint}"
            options["endpoint"] = endpoint
            options["virtual_hosted_style_request"] = _flag("AWS_VIRTUAL_HOSTING", True)
        if _flag("AWS_NO_SIGN_REQUEST", False):
            options["skip_signature"] = True
        else:
            for name, option in (
                ("AWS_ACCESS_KEY_ID", "access_key_id"),
                ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
                ("AWS_SESSION_TOKEN", "session_token"),
            ):
                if env.get(name):
                    options[option] = env[name]
        allow_http = options.get("endpoint", "").startswith("http://")
        return S3Store(
            bucket,
            client_options=client_options(allow_http),
            retry_config=retry_config(),
            **options,
        )
    options = {}
    if env.get("CPL_GS_ENDPOINT"):
        options["base_url"] = env["CPL_GS_ENDPOINT"].rstrip("/")
    if _flag("GS_NO_SIGN_REQUEST", False):
        options["skip_signature"] = True
    elif env.get("GOOGLE_KEY_STRING"):
        options["service_account_key"] = env["GOOGLE_KEY_STRING"]
    elif env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        options["application_credentials"] = env["GOOGLE_APPLICATION_CREDENTIALS"]
    allow_http = options.get("base_url", "").startswith("http://")
    return GCSStore(
        bucket, client_options=client_options(allow_http), retry_config=retry_config(), **options
    )


HTTP_REASONS = {
    "401": "access denied (credentials refused)",
    "403": "access denied",
    "404": "not found",
}


def _fail(what: str, href: str, exc: Exception) -> StorageError:
    """A StorageError naming the path and the store's reason, short and without secrets."""
    text = str(exc)
    kind = type(exc).__name__
    status = re.search(r"status code: (\d{3})", text)
    code = re.search(r"<Code>([^<]+)</Code>", text)
    if kind in ("PermissionDeniedError", "UnauthenticatedError"):
        reason = "access denied"
    elif kind == "NotFoundError" or isinstance(exc, FileNotFoundError):
        reason = "not found"
    elif status and status.group(1) in HTTP_REASONS:
        reason = HTTP_REASONS[status.group(1)]
    else:
        reason = text.strip().splitlines()[0] if text.strip() else kind
    if code:
        reason += f" ({code.group(1)})"
    return StorageError(redact(f"cannot {what} {href}: {reason}"))


def _too_large(href: str, size: int, limit: int | None) -> None:
    if limit is not None and size > limit:
        raise StorageError(f"{href} is too large: {size} bytes, at most {limit} are read")


def read_bytes(href: str, limit: int | None = None) -> bytes:
    """The whole content of a (small) file: a metadata document, a tie-point grid, a member
    of a zip archive; only where the running import may read (opener.check), before anything
    is requested. A file larger than `limit` bytes is refused before it is read."""
    checked = opener.check(href)
    if checked.archive is not None:
        with open_zip(checked.archive.given) as archive:
            info = _member(archive, checked.member or "", href)
            _too_large(href, info.file_size, limit)
            try:  # reads at most the size the archive declares (checked above)
                return archive.read(info)
            except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
                raise StorageError(f"cannot read {href}: {exc}") from None
            except Exception as exc:  # a bucket's own errors while reading the member
                raise _fail("read", href, exc) from None
    where = locate(href)
    if where.provider == "file":
        try:
            _too_large(href, Path(checked.path).stat().st_size, limit)
            return Path(checked.path).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {href}: {exc.strerror or exc}") from None
    try:
        store = _store(where.provider, where.bucket, _environment())
        if limit is not None:
            _too_large(href, int(obstore.head(store, where.key)["size"]), limit)
        return bytes(obstore.get(store, where.key).bytes())
    except StorageError:
        raise
    except Exception as exc:  # obstore raises its own error classes per cause
        raise _fail("read", href, exc) from None


def exists(href: str) -> bool:
    """Whether a file is there (a HEAD request for buckets), asked only where the running
    import may read: elsewhere the answer is a refusal, whether the file is there or not."""
    checked = opener.check(href)
    if checked.archive is not None:
        with open_zip(checked.archive.given) as archive:
            try:
                archive.getinfo(checked.member or "")
            except KeyError:
                return False
        return True
    where = locate(href)
    if where.provider == "file":
        return Path(href).is_file()
    try:
        obstore.head(_store(where.provider, where.bucket, _environment()), where.key)
    except FileNotFoundError:
        return False
    except Exception as exc:
        if type(exc).__name__ == "NotFoundError":
            return False
        raise _fail("look up", href, exc) from None
    return True


class _RangeFile(io.RawIOBase):
    """A bucket object as a seekable file: each read is one range request (buffered above),
    so a zip's directory is read from its end without fetching the archive."""

    def __init__(self, store, key: str, size: int):
        self.store, self.key, self.size, self.position = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        end = min(self.size, self.position + len(buffer))
        if end <= self.position:
            return 0
        data = bytes(obstore.get_range(self.store, self.key, start=self.position, end=end))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


ZIP_BUFFER = 256 * 1024  # bytes fetched per range request while reading a remote zip


@contextmanager
def open_zip(href: str) -> Iterator[zipfile.ZipFile]:
    """A zip archive (a local file or a bucket object) for listing and reading its small
    members; StorageError when it cannot be read or is no zip."""
    checked = opener.check(href)
    if checked.archive is not None:
        raise StorageError(f"{href}: an archive inside an archive is not read")
    where = locate(href)
    try:
        if where.provider == "file":
            handle = open(checked.path, "rb")  # noqa: SIM115 - closed below
        else:
            store = _store(where.provider, where.bucket, _environment())
            size = int(obstore.head(store, where.key)["size"])
            handle = io.BufferedReader(_RangeFile(store, where.key, size), ZIP_BUFFER)
    except OSError as exc:
        raise StorageError(f"cannot read {href}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise _fail("read", href, exc) from None
    try:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise StorageError(f"{href} is not a readable zip archive ({exc})") from None
        except Exception as exc:
            raise _fail("read", href, exc) from None
        with archive:
            yield archive
    finally:
        handle.close()


def _member(archive: zipfile.ZipFile, member: str, href: str) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(member)
    except KeyError:
        raise StorageError(f"cannot read {href}: not found") from None


def under(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, links resolved, lies inside one of the folders `roots`."""
    target = Path(path).resolve()
    return any(target.is_relative_to(root.resolve()) for root in roots)


@dataclass(frozen=True)
class Entry:
    """A listed file: its GDAL path and size in bytes; `refused` says why it is not read."""

    href: str
    size: int
    refused: str | None = None


def list_files(
    provider: Provider, bucket: str, prefix: str = "", within: Sequence[Path] | None = None
) -> Iterator[Entry]:
    """Every file under `prefix`, in key order (for `file`, `bucket` is a folder or a file).

    `within` confines a `file` listing (imports over HTTP: the import roots). A symbolic
    link, to a file or to a folder, whose target is outside all of them is not followed:
    it is listed with `refused` saying so, for the import to report under `failed`, and
    the rest of the folder is imported as usual. Links to folders are never descended.
    """
    if provider == "file":
        root = Path(bucket).expanduser().resolve()
        base = root / prefix if prefix else root
        if not base.exists():
            raise StorageError(f"no such file or folder: {base}")
        found = [base] if base.is_file() else base.rglob("*")  # rglob: no folder links
        for path in sorted(p for p in found if p.is_file() or p.is_symlink()):
            if within is not None and not under(path, within):
                kind = "folder" if path.resolve().is_dir() else "file"
                refused = f"symbolic link to a {kind} outside the import roots: not followed"
                yield Entry(str(path), 0, refused)
            elif path.is_file():
                yield Entry(str(path), path.stat().st_size)
        return
    prefix = prefix.lstrip("/")
    try:
        store = _store(provider, bucket, _environment())
        entries = [
            (meta["path"], meta["size"])
            for batch in obstore.list(store, prefix=prefix or None)
            for meta in batch
        ]
    except Exception as exc:
        raise _fail("list", gdal_path(provider, bucket, prefix), exc) from None
    for key, size in sorted(entries):
        yield Entry(gdal_path(provider, bucket, key), size)
