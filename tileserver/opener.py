"""The one way the server opens imagery: an allowed location first, then an allowed GDAL driver.

Every file the server reads for pixels or metadata was named by somebody: a `PUT /images`
href, a STAC asset, a DIMAP data file path, a VRT source. Each passes through here before a
byte of it is read:

1. **Location.** The href becomes one canonical location (a local path with its links
   resolved, `/vsis3/`, `/vsigs/` or `/vsicurl/https://`, or a member of a zip archive
   `/vsizip/{ARCHIVE.zip}/MEMBER` whose archive is a local file or a bucket object and whose
   member path is plain; anything else, such as other `/vsi` handlers, relative paths,
   inline XML or driver connection strings, is refused) and
   must lie inside what an `Allowed` grants: the folders and bucket / URL prefixes granted to
   the product's owners (TILESERVER_IMPORT_GRANTS), and the folders the server itself wrote
   for that product under the data dir (`vrt/<product>/`, `cogs/<product>/`). The catalog
   files are never openable, and nothing else under the data dir is a tenant's.
2. **Driver.** Tenants' files open with IMAGERY_DRIVERS only, so a SQLite catalog, a WMS
   description or a VRT named `.tif` cannot be opened from a tenant's path; the VRT driver
   opens only VRTs the server wrote, after their sources passed the same checks.
3. **What GDAL took along.** Sibling files GDAL reads by itself (`.ovr`, `.msk`, `.aux.xml`,
   ENVI `.hdr`) are checked before the open, and the dataset's file list after it.

A refusal always has the same text, whether or not the path exists.

Opened datasets are lent from one pool (`DATASETS`), which checks the location at every
loan, and the reads of one request on several threads run in a `ContextPool`, which carries
the request's confinement (and deadline) into them: no read escapes the checks by running
elsewhere.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import os
import posixpath
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import rasterio
import rasterio._base
import rasterio.env
import rasterio.session
from cachetools import TTLCache
from defusedxml import ElementTree
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.io import DatasetReader

from tileserver.catalog.models import Product

# GDAL drivers a tenant's file may be opened with (GeoTIFF and COG, JPEG2000, ENVI raw)
IMAGERY_DRIVERS = ("GTiff", "JP2OpenJPEG", "ENVI")
OWN_VRT_DRIVERS = ("VRT",)  # only for VRTs the server wrote itself
STAGED_DRIVERS = ("GTiff",)  # a staging file the server just wrote, read back to copy it
REFUSED = "not a location this server may open for you"
MAX_HREF = 4096
MAX_VRT_BYTES = 8 * 1024 * 1024
# files GDAL opens beside a raster on its own (overviews, masks, PAM, ENVI headers)
SIBLING_SUFFIXES = (".ovr", ".msk", ".aux.xml", ".aux", ".rrd", ".hdr", ".imd", ".rpb")
BUCKET = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,220}[A-Za-z0-9])?")
ADMIN = "admin"  # the grant entry of admins and of the operator's products (URL prefixes)
CACHE_SECONDS = 5.0  # how long a product's allowed locations are reused (owners, grants)


class Refused(Exception):
    """A location the caller (or the product) may not use; `href` is as it was given."""

    def __init__(self, href: str, reason: str = REFUSED):
        super().__init__(reason)
        self.href = href


@dataclass(frozen=True)
class Location:
    """A checked href: `path` is what GDAL opens (links resolved for local files).

    A zip member's `archive` is the archive's own location: what may be opened is decided
    on it, and `path` names the archive in GDAL's braces so GDAL opens exactly that file.
    """

    given: str
    path: str
    remote: bool
    archive: Location | None = None
    member: str | None = None


def _refuse_text(text: str) -> None:
    if not text or len(text) > MAX_HREF or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise Refused(text[:200])


def _clean_segments(href: str, path: str) -> None:
    """No `.`/`..` or empty segments (a trailing `/` aside), no backslashes: a remote key or
    URL path names one object, the one a prefix check sees."""
    segments = unquote(path).split("/")
    if "\\" in path or "\\" in unquote(path) or "" in segments[:-1]:
        raise Refused(href)
    if any(s in (".", "..") for s in segments):
        raise Refused(href)


def _bucket_location(href: str, prefix: str, rest: str) -> Location:
    bucket, _, key = rest.partition("/")
    if not BUCKET.fullmatch(bucket) or "?" in key or "#" in key:
        raise Refused(href)
    _clean_segments(href, key)
    return Location(href, f"{prefix}{bucket}/{key}", remote=True)


def _url_location(href: str, url: str) -> Location:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused(href) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise Refused(href)
    if parts.fragment:
        raise Refused(href)
    _clean_segments(href, (parts.path or "/").removeprefix("/"))
    host = parts.hostname.lower() + (f":{port}" if port else "")
    query = f"?{parts.query}" if parts.query else ""
    return Location(href, f"/vsicurl/{parts.scheme}://{host}{parts.path or '/'}{query}", True)


ZIP_PREFIX = "/vsizip/{"


def _zip_location(href: str, text: str) -> Location:
    """`/vsizip/{ARCHIVE}/MEMBER`: the archive a plain local file or bucket object ending in
    .zip (never another /vsi handler, a URL or a nested archive), the member a relative path
    without empty, `.` or `..` segments, backslashes or braces."""
    archive_text, sep, member = text[len(ZIP_PREFIX) :].partition("}/")
    if not sep or not archive_text.lower().endswith(".zip") or not member:
        raise Refused(href)
    if any(c in archive_text + member for c in "{}\\") or member.startswith("/"):
        raise Refused(href)
    if archive_text.startswith("/vsi") and not archive_text.startswith(("/vsis3/", "/vsigs/")):
        raise Refused(href)
    if member.lower().startswith("vsi") or ".zip/" in member.lower():
        raise Refused(href)
    _clean_segments(href, member)
    if member.endswith("/"):
        raise Refused(href)
    try:
        archive = locate(archive_text)
    except Refused:
        raise Refused(href) from None
    if archive.path.startswith("/vsicurl/"):
        raise Refused(href)
    path = f"{ZIP_PREFIX}{archive.path}}}/{member}"
    return Location(href, path, archive.remote, archive=archive, member=member)


def locate(href: str) -> Location:
    """The canonical location of `href`, or Refused for anything that is not a plain file,
    object, URL or zip member (other /vsi handlers, relative paths, inline XML, connection
    strings)."""
    text = href.strip() if isinstance(href, str) else ""
    _refuse_text(text)
    if text.startswith(ZIP_PREFIX):
        return _zip_location(href, text)
    if text.startswith(("s3://", "gs://")):
        prefix = "/vsis3/" if text.startswith("s3") else "/vsigs/"
        return _bucket_location(href, prefix, text[5:])
    if text.startswith(("/vsis3/", "/vsigs/")):
        return _bucket_location(href, text[:7], text[7:])
    if text.startswith("/vsicurl/"):
        return _url_location(href, text[len("/vsicurl/") :])
    if text.lower().startswith(("http://", "https://")):
        return _url_location(href, text)
    if text.startswith("file://"):
        text = unquote(urlsplit(text).path)
        _refuse_text(text)
    if text.startswith("/vsi") or not text.startswith("/"):
        raise Refused(href)
    return Location(href, os.path.realpath(text), remote=False)


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _prefix(text: str) -> str:
    """A granted bucket or URL prefix in canonical form."""
    location = locate(text)
    if not location.remote:
        raise ValueError(f"{text}: not a bucket or URL prefix")
    return location.path


class _Checks:
    """`check` for anything with `permits`."""

    def permits(self, location: Location) -> bool:  # pragma: no cover - overridden
        """Whether the location is allowed."""
        raise NotImplementedError

    def check(self, href: str) -> Location:
        """The location of `href` when allowed; Refused (one text) otherwise."""
        location = locate(href)
        if not self.permits(location):
            raise Refused(href)
        return location


@dataclass(frozen=True)
class Allowed(_Checks):
    """Where one product's files (or one caller's imports) may be read from."""

    roots: tuple[str, ...] = ()  # local folders, links resolved
    prefixes: tuple[str, ...] = ()  # canonical /vsis3/, /vsigs/, /vsicurl/https:// prefixes
    own: tuple[str, ...] = ()  # folders the server wrote for the product: its VRTs open
    any_local: bool = False  # the operator's products: any local file but the server's own
    any_bucket: bool = False  # the operator's and admins': any /vsis3/ or /vsigs/ bucket
    written: tuple[str, ...] = ()  # what the server writes per product: VRTs, COGs, chips
    protected: tuple[str, ...] = ()  # the catalog and its journal files

    def permits(self, location: Location) -> bool:
        """Whether the location lies inside what is allowed (a zip member: its archive)."""
        if location.archive is not None:
            return self.permits(location.archive)
        path = location.path
        if location.remote:
            if self.any_bucket and not path.startswith("/vsicurl/"):
                return True
            return any(path.startswith(p) for p in self.prefixes)  # URLs: only when granted
        if any(path == p or path.startswith(p + "-") for p in self.protected):
            return False
        if any(_under(path, folder) for folder in self.own):
            return True
        if any(_under(path, folder) for folder in self.written):
            return False  # other products' VRTs, COGs and chips
        return self.any_local or any(_under(path, root) for root in self.roots)

    def is_own_vrt(self, location: Location) -> bool:
        """A VRT the server wrote for this product (the only VRTs the VRT driver opens, but
        for the operator's, who may open any local file anyway)."""
        if location.remote or location.archive or not location.path.lower().endswith(".vrt"):
            return False
        return self.any_local or any(_under(location.path, folder) for folder in self.own)

    def with_own(self, *folders: Path) -> Allowed:
        """The same, plus folders the server writes for the product (resolved)."""
        return replace(self, own=(*self.own, *(os.path.realpath(f) for f in folders)))


@dataclass(frozen=True)
class Within(_Checks):
    """What two Allowed both permit: a writer's grants within the product owners'."""

    first: Allowed
    second: Allowed

    def permits(self, location: Location) -> bool:
        """Allowed by both."""
        return self.first.permits(location) and self.second.permits(location)

    def is_own_vrt(self, location: Location) -> bool:
        """A VRT the server wrote for the product, in both views."""
        return self.first.is_own_vrt(location) and self.second.is_own_vrt(location)


Reach = Allowed | Within


# ----------------------------------------------------------------------------- grants


@dataclass(frozen=True)
class Grant:
    """Folders and bucket / URL prefixes granted to one `org:` or `user:` entry."""

    roots: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Grant:
        """From the setting's strings: absolute folders, s3://, gs://, https:// prefixes
        (http:// too, when the operator writes it: a service on the operator's network)."""
        roots, prefixes = [], []
        for entry in entries:
            text = str(entry).strip()
            if text.startswith(("s3://", "gs://", "https://", "http://", "/vsis3/", "/vsigs/")):
                prefixes.append(_prefix(text))
            elif text.startswith("/") and not text.startswith("/vsi"):
                roots.append(os.path.realpath(text))
            else:
                raise ValueError(
                    f"grant '{text}': use an absolute folder, s3://BUCKET/PREFIX/, "
                    "gs://BUCKET/PREFIX/ or https://HOST/PATH/"
                )
        return cls(tuple(roots), tuple(prefixes))


@dataclass
class Confinement:
    """The server's rules for what may be opened: its data dir, catalog and grants.

    `products` maps a product id to its product (the catalog, as an admin sees it) and
    `key_users` returns, per user, the organisations of their keys and whether one of them
    is an admin key: a product owned by `user:alice` may use what alice's organisation was
    granted.
    """

    data_dir: Path
    protected: tuple[Path, ...] = ()
    written: tuple[str, ...] = ()  # more folders the server writes (a chip cache elsewhere)
    grants: dict[str, Grant] = field(default_factory=dict)
    import_roots: tuple[Path, ...] = ()  # the admins' folders (TILESERVER_IMPORT_ROOTS)
    products: Callable[[str], Product] | None = None
    key_users: Callable[[], dict[str, tuple[frozenset[str], bool]]] | None = None
    _allowed: TTLCache = field(
        default_factory=lambda: TTLCache(maxsize=4096, ttl=CACHE_SECONDS), repr=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _base(self) -> dict:
        written = tuple(os.path.realpath(self.data_dir / d) for d in ("vrt", "cogs", "chips"))
        protected = tuple(os.path.realpath(p) for p in self.protected)
        return {"written": (*written, *self.written), "protected": protected}

    def own_folders(self, product_id: str) -> tuple[Path, Path]:
        """The folders the server writes for a product: its VRTs and its COG copies."""
        return (self.data_dir / "vrt" / product_id, self.data_dir / "cogs" / product_id)

    def operator(self, product_id: str | None = None) -> Allowed:
        """The operator's reach (the command line, products nobody owns): any local file but
        the catalog and other products' VRTs, COGs and chips; any bucket; URLs only under
        the prefixes granted to `admin`."""
        _, prefixes = self._granted([ADMIN])
        allowed = Allowed(any_local=True, any_bucket=True, prefixes=prefixes, **self._base())
        if product_id is None:
            return allowed
        return allowed.with_own(*self.own_folders(product_id))

    def _granted(self, names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        roots: list[str] = []
        prefixes: list[str] = []
        for name in names:
            grant = self.grants.get(name)
            if grant is not None:
                roots.extend(grant.roots)
                prefixes.extend(grant.prefixes)
        return tuple(dict.fromkeys(roots)), tuple(dict.fromkeys(prefixes))

    def for_caller(self, user: str | None, org: str | None, admin: bool) -> Allowed:
        """What a caller may import from or name in a write: admins the import roots, any
        bucket and what `admin` was granted; others what their user and organisation were
        granted. No URL is fetched unless granted."""
        if admin:
            granted, prefixes = self._granted([ADMIN])
            roots = (*(os.path.realpath(r) for r in self.import_roots), *granted)
            return Allowed(roots=roots, any_bucket=True, prefixes=prefixes, **self._base())
        names = [f"user:{user}"] if user else []
        if org:
            names.append(f"org:{org}")
        roots, prefixes = self._granted(names)
        return Allowed(roots=roots, prefixes=prefixes, **self._base())

    def for_product(self, product: Product) -> Allowed:
        """Where a product's images may be read from: its owners' grants and its own
        folders; a product nobody owns (the operator's) may read anything allowed."""
        if not product.owners:
            return self.operator(product.id)
        users = self.key_users() if self.key_users else {}
        names: list[str] = []
        for entry in product.owners:
            names.append(entry)
            kind, _, name = entry.partition(":")
            if kind == "user" and name in users:
                orgs, admin = users[name]
                if admin:
                    return self.operator(product.id)
                names.extend(f"org:{o}" for o in orgs)
        roots, prefixes = self._granted(names)
        allowed = Allowed(roots=roots, prefixes=prefixes, **self._base())
        return allowed.with_own(*self.own_folders(product.id))

    def for_product_id(self, product_id: str) -> Allowed:
        """for_product of the stored product, reused for a few seconds (every tile asks)."""
        with self._lock:
            allowed = self._allowed.get(product_id)
        if allowed is None:
            if self.products is None:
                allowed = self.operator(product_id)
            else:
                allowed = self.for_product(self.products(product_id))
            with self._lock:
                self._allowed[product_id] = allowed
        return allowed


def confinement_of(settings, store) -> Confinement:
    """The rules of a server (or command) with these settings over this catalog."""
    from tileserver.catalog.keys import key_users  # keys -> access -> opener

    protected = ()
    if settings.catalog_url.startswith("sqlite:///"):
        protected = (Path(settings.catalog_url.removeprefix("sqlite:///")),)
    chips = settings.chip_cache_dir
    return Confinement(
        data_dir=settings.data_dir,
        protected=protected,
        written=(os.path.realpath(chips),) if chips else (),
        grants={name: Grant.parse(entries) for name, entries in settings.import_grants.items()},
        import_roots=tuple(settings.import_roots),
        products=store.get_product,
        key_users=key_users(store, settings.key_cache_seconds),
    )


# ----------------------------------------------------------------------------- the opener

_CONFINEMENT: contextvars.ContextVar[Confinement | None] = contextvars.ContextVar(
    "confinement", default=None
)
_READING: contextvars.ContextVar[Reach | None] = contextvars.ContextVar("reading", default=None)


@contextmanager
def confined(confinement: Confinement) -> Iterator[Confinement]:
    """Make `confinement` the rules for this request or command (a context variable)."""
    token = _CONFINEMENT.set(confinement)
    try:
        yield confinement
    finally:
        _CONFINEMENT.reset(token)


@contextmanager
def reading(allowed: Reach) -> Iterator[Reach]:
    """Open files (ingest: metadata and rasters) within `allowed` until the block ends."""
    token = _READING.set(allowed)
    try:
        yield allowed
    finally:
        _READING.reset(token)


def current_confinement() -> Confinement:
    """The active rules; none active means nothing may be opened (fail closed)."""
    confinement = _CONFINEMENT.get()
    if confinement is None:
        raise Refused("", "no file confinement is active")
    return confinement


def current() -> Reach:
    """What the running import (or command) may read."""
    allowed = _READING.get()
    if allowed is None:
        raise Refused("", "no file confinement is active")
    return allowed


def for_product(product_id: str) -> Allowed:
    """Where the active rules let a product's images be read from."""
    return current_confinement().for_product_id(product_id)


def check(href: str, allowed: Reach | None = None) -> Location:
    """`href`'s location, when `allowed` (default: what the running import may read) has it."""
    return (allowed or current()).check(href)


GDAL_OF_RASTER = 0x02


@functools.cache
def _gdal():
    """The GDAL functions rasterio does not bind, from the GDAL it runs on: driver
    identification, a driver's name, the thread's last error, and forgetting what the
    remote file systems cached."""
    library = ctypes.CDLL(rasterio._base.__file__)
    identify = library.GDALIdentifyDriverEx
    identify.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    identify.restype = ctypes.c_void_p
    short_name = library.GDALGetDriverShortName
    short_name.argtypes = [ctypes.c_void_p]
    short_name.restype = ctypes.c_char_p
    stat = library.VSIStatExL
    stat.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    stat.restype = ctypes.c_int
    library.VSIErrorReset.restype = None
    library.VSIGetLastErrorMsg.restype = ctypes.c_char_p
    library.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
    library.VSICurlPartialClearCache.restype = None
    library.CPLErrorReset.restype = None
    return identify, short_name, library


def forget_cached(prefix: str) -> None:
    """Make GDAL ask the bucket again about the files under `prefix` (a /vsis3/... path).

    GDAL keeps what it learnt of a remote file for the life of the process, failures
    included: a file it could not reach while the bucket was down stays "does not exist"
    after the bucket is back, until this is called.
    """
    if not prefix.startswith("/vsi") or prefix.startswith("/vsimem"):
        return
    _, _, library = _gdal()
    with rasterio.Env():  # GDAL's complaints go to logging, not stderr
        library.VSICurlPartialClearCache(prefix.encode())


def reset_gdal_errors() -> None:
    """Clear GDAL's last error in this thread.

    A failed tile read (rasterio 1.4) leaves its error set in the thread, and the next
    tile read on an already open dataset in that thread raises it: a read of another,
    healthy file would fail with the broken file's message (a 500).
    """
    _, _, library = _gdal()
    library.CPLErrorReset()


def leave_credentials_to_gdal() -> None:
    """Stop rasterio from building a boto3 session for every GDAL environment it enters.

    When boto3 is importable and AWS keys are in the environment, rasterio makes a boto3
    session (~8 ms of CPU holding the interpreter lock) for each `rasterio.Env()`, and so
    for each warp or features call (rio-tiler's reads make several per file per tile), only
    to copy the same keys into GDAL's options. That was half the CPU of a remote mosaic tile
    (bench/README.md, "Remote"). GDAL reads the keys, profiles and instance roles itself,
    and the opener hands rasterio `/vsis3/` paths, never `s3://` URLs, so nothing else needs
    that session; without boto3, rasterio uses the dummy session it uses here after this.
    """
    if getattr(rasterio.session, "boto3", None) is not None:
        rasterio.session.boto3 = None


leave_credentials_to_gdal()


def thread_gdal_env() -> None:
    """Give the calling thread a rasterio environment for the rest of its life, if it has none.

    Outside one, each rasterio warp or features call (rio-tiler's reads make several per
    file per tile) starts and stops a whole GDAL environment, looking for GDAL's and PROJ's
    data files on disk each time: 7 % of a loaded remote mosaic worker's samples. The
    environment is the default one those calls would start; environments entered later in
    the thread nest inside it and restore it when they exit.
    """
    if not rasterio.env.hasenv():
        rasterio.Env.from_defaults().__enter__()


VSI_STAT_EXISTS_FLAG, VSI_STAT_SET_ERROR_FLAG = 0x1, 0x8


def identify(path: str, drivers: Iterable[str]) -> str | None:
    """Which of `drivers` recognises the file (GDAL reads its header and opens nothing);
    None when none does or it is not there."""
    identify_driver, short_name, _ = _gdal()
    names = [d.encode() for d in drivers]
    array = (ctypes.c_char_p * (len(names) + 1))(*names, None)
    with rasterio.Env():
        handle = identify_driver(path.encode(), GDAL_OF_RASTER, array, None)
    return short_name(handle).decode() if handle else None


def storage_problem(path: str) -> str | None:
    """Why a remote file cannot be reached, in GDAL's words (None: it is there, or simply
    missing): a bucket that is down is not a file that is not a raster."""
    _, _, library = _gdal()
    buffer = ctypes.create_string_buffer(512)  # larger than any VSIStatBufL

    def look() -> tuple[bool, str]:
        with rasterio.Env():
            library.VSIErrorReset()
            flags = VSI_STAT_EXISTS_FLAG | VSI_STAT_SET_ERROR_FLAG
            missing = library.VSIStatExL(path.encode(), buffer, flags) != 0
            said = (library.VSIGetLastErrorMsg() or b"").decode("utf-8", "replace")
            library.VSIErrorReset()
        return missing, said

    missing, said = look()
    if missing and not said:
        # GDAL answers "absent" without asking when an earlier look failed, an outage's
        # included (a read that is not the dataset pool's, which forgets its own failures):
        # ask the store itself once more before calling the file missing
        forget_cached(path)
        missing, said = look()
    return said if missing and said else None


def check_siblings(location: Location, allowed: Reach) -> None:
    """Files GDAL would open beside a local raster must be allowed too (no link out); beside
    a zip member they are in the same archive."""
    if location.remote or location.archive is not None:
        return
    base, _ = os.path.splitext(location.path)
    for stem in (location.path, base):
        for suffix in SIBLING_SUFFIXES:
            for candidate in (stem + suffix, stem + suffix.upper()):
                if candidate != location.path and os.path.lexists(candidate):
                    if not allowed.permits(locate(candidate)):
                        raise Refused(location.given)


def vrt_sources(path: str) -> list[tuple[str, bool]]:
    """The sources a VRT names, each with whether it is a raw band (read as bytes)."""
    if os.path.getsize(path) > MAX_VRT_BYTES:
        raise Refused(path)
    root = ElementTree.parse(path).getroot()
    sources = []
    for band in root.iter():
        if not isinstance(band.tag, str) or band.tag.lower() != "vrtrasterband":
            continue
        raw = (band.get("subClass") or band.get("subclass") or "").lower() == "vrtrawrasterband"
        for element in band.iter():
            if isinstance(element.tag, str) and element.tag.lower() == "sourcefilename":
                name = (element.text or "").strip()
                relative = element.get("relativeToVRT") == "1"
                source = posixpath.join(posixpath.dirname(path), name) if relative else name
                sources.append((source, raw))
    return sources


def check_vrt(location: Location, allowed: Reach) -> None:
    """Each source of one of our VRTs: an allowed location, and a raster (a raw band's file
    is read as bytes, so only its location matters) that an imagery driver recognises."""
    for source, raw in vrt_sources(location.path):
        where = allowed.check(source)
        check_siblings(where, allowed)
        if not raw and identify(where.path, IMAGERY_DRIVERS) is None:
            raise Refused(location.given)


def remote_open_options(location: Location) -> dict[str, str]:
    """GDAL options for looking at and opening a remote GeoTIFF: no look for sibling files.

    GDAL lists the file's folder when it looks at a file and again when it opens it (to
    find .ovr / .msk / .aux.xml beside it): requests per file for nothing (bench/README.md:
    12 GETs instead of 6 for a scene of 3 band COGs). Cloud-optimized files carry their
    overviews and masks inside, as titiler assumes too; the environment's own
    GDAL_DISABLE_READDIR_ON_OPEN wins.
    """
    if not location.remote or "GDAL_DISABLE_READDIR_ON_OPEN" in os.environ:
        return {}
    if not location.path.lower().endswith((".tif", ".tiff")):
        return {}
    return {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def _open(href: str, location: Location, drivers: Sequence[str]) -> DatasetReader:
    """The dataset, opened by the first of `drivers` that recognises the file."""
    if location.remote and (problem := storage_problem(location.path)):
        raise RasterioIOError(problem)  # asked first: GDAL remembers a failed look as absent
    driver = identify(location.path, drivers)
    if driver is None:  # not one of ours, or not there: GDAL says which, in its own words
        if not location.remote and not location.archive and os.path.isfile(location.path):
            raise Refused(href, "not a raster format this server opens")
        dataset = rasterio.open(location.path, driver=drivers[0])
        dataset.close()
        raise Refused(href, "not a raster format this server opens")
    return rasterio.open(location.path, driver=driver)


def open_raster(href: str, allowed: Reach | None = None) -> DatasetReader:
    """rasterio.open of `href` within `allowed` (default: what the running import may read).

    Refused when the location, a sibling file GDAL would take along, or the file's format is
    not allowed: the same text whether the file exists or not.
    """
    allowed = allowed or current()
    location = allowed.check(href)
    check_siblings(location, allowed)
    drivers = IMAGERY_DRIVERS
    if allowed.is_own_vrt(location):
        drivers = OWN_VRT_DRIVERS
        try:
            check_vrt(location, allowed)
        except (OSError, SyntaxError, ValueError):  # unreadable XML: ParseError is a SyntaxError
            raise Refused(href) from None
    with rasterio.Env(**remote_open_options(location)):
        dataset = _open(href, location, drivers)
    try:
        for name in dataset.files:
            if not allowed.permits(locate(name)):
                raise Refused(href)
    except Refused:
        dataset.close()
        raise
    return dataset


def open_staged(path: str | Path) -> DatasetReader:
    """A GeoTIFF the server itself just wrote (the staging file of a download or a reduced
    copy), read back to copy it into a COG: a local file, GTiff only, whatever it is named."""
    location = locate(str(path))
    if location.remote or location.archive:
        raise Refused(str(path))
    return _open(str(path), location, STAGED_DRIVERS)


# Open datasets kept between requests, one per thread at a time.
#
# A web map asks for its tiles from the same few files over and over. Opening a file per
# tile costs the open itself (headers, and for /vsis3/ or /vsicurl/ HTTP requests) and,
# worse, GDAL's block cache: decoded blocks belong to a dataset and go when it closes, so
# the next tile decompresses the same blocks again. A GDAL dataset must not be used by two
# threads at once, so the pool lends each dataset to one caller and takes it back after.

DEFAULT_MAX_IDLE = 64  # idle datasets per process (TILESERVER_OPEN_DATASETS)


def file_version(href: str, version: str) -> tuple[str, ...]:
    """What identifies the bytes behind `href`: size and mtime for a local file.

    A file replaced in place gets a new version and a new dataset; remote hrefs rely on
    `version` (the image's modification time in the catalog).
    """
    if "://" in href or href.startswith("/vsi"):
        return (href, version)
    try:
        stat = os.stat(href)
    except OSError:
        return (href, version)  # the open reports the problem
    return (href, version, str(stat.st_size), str(stat.st_mtime_ns))


def open_dataset(href: str, allowed: Reach) -> DatasetReader:
    """The confined opener's dataset; a remote file that fails to open is forgotten by
    GDAL, so the next open asks the bucket again instead of repeating the failure."""
    try:
        return open_raster(href, allowed)
    except RasterioError:
        forget_cached(href)
        raise


class DatasetPool:
    """Idle open datasets by (href, version), least recently used closed first."""

    def __init__(self, max_idle: int = DEFAULT_MAX_IDLE):
        self.max_idle = max_idle
        self._idle: OrderedDict[tuple, list[DatasetReader]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self.opened = 0  # datasets opened since start (tests and diagnostics)

    @contextmanager
    def dataset(self, href: str, allowed: Reach, version: str = "") -> Iterator[DatasetReader]:
        """An open dataset of `href` for the caller's exclusive use, if `allowed` has it.

        The location is checked at every loan (a grant withdrawn since the open counts); the
        open itself checks drivers and the files GDAL takes along. A dataset whose read
        failed in GDAL (a RasterioError, an OSError) is closed rather than lent again; other
        exceptions (a tile outside the image) keep it.
        """
        allowed.check(href)
        thread_gdal_env()  # for the warp calls rio-tiler makes with the dataset
        key = file_version(href, version)
        dataset = self._take(key)
        if dataset is None:
            self._drop_other_versions(key)
            dataset = open_dataset(href, allowed)
            with self._lock:
                self.opened += 1
        reset_gdal_errors()  # what an earlier failure in this thread left must not fail this use
        try:
            yield dataset
        except (RasterioError, OSError):
            dataset.close()
            raise
        except Exception:
            self._give(key, dataset)
            raise
        except BaseException:
            dataset.close()
            raise
        self._give(key, dataset)

    def _take(self, key: tuple) -> DatasetReader | None:
        with self._lock:
            idle = self._idle.get(key)
            if not idle:
                return None
            dataset = idle.pop()
            self._count -= 1
            if not idle:
                del self._idle[key]
            return dataset

    def _drop_other_versions(self, key: tuple) -> None:
        """Close idle datasets of the same href at another version: a replaced file."""
        with self._lock:
            stale = [k for k in self._idle if k[0] == key[0] and k != key]
            closing = [d for k in stale for d in self._idle.pop(k)]
            self._count -= len(closing)
        for dataset in closing:
            dataset.close()

    def _give(self, key: tuple, dataset: DatasetReader) -> None:
        evicted = []
        with self._lock:
            self._idle.setdefault(key, []).append(dataset)
            self._idle.move_to_end(key)
            self._count += 1
            while self._count > self.max_idle:
                oldest = next(iter(self._idle))
                evicted.append(self._idle[oldest].pop(0))
                self._count -= 1
                if not self._idle[oldest]:
                    del self._idle[oldest]
        for old in evicted:
            old.close()

    def clear(self) -> None:
        """Close every idle dataset (datasets on loan close when given back over the limit)."""
        with self._lock:
            idle = [d for datasets in self._idle.values() for d in datasets]
            self._idle.clear()
            self._count = 0
        for dataset in idle:
            dataset.close()

    def idle(self) -> int:
        """How many datasets wait for a caller."""
        with self._lock:
            return self._count


DATASETS = DatasetPool()


# Worker threads that carry the request's context.
#
# A request's deadline and the confinement of the files it may open live in context
# variables; a plain ThreadPoolExecutor runs its tasks in an empty context, so a read
# handed to a pool thread would forget both. Every pool in the server is a ContextPool. Its
# threads also keep a rasterio environment (opener.thread_gdal_env), so the GDAL calls of the
# reads handed to them do not each start one.


class ContextPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks run in a copy of the submitting thread's context."""

    def __init__(self, max_workers: int | None = None, **kwargs) -> None:
        super().__init__(max_workers, initializer=thread_gdal_env, **kwargs)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Run `fn` in the caller's context (map() goes through here too)."""
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)
