"""Server settings: one object, every knob a TILESERVER_* environment variable."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tileserver.catalog.search import DEFAULT_MAX_SEARCHES, DEFAULT_SEARCH_TTL_DAYS

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """Where the embedded catalog and the demo data live unless told otherwise."""
    return Path.home() / ".local" / "share" / "tileserver"


class Settings(BaseSettings):
    """Everything configurable; read once per process."""

    model_config = SettingsConfigDict(env_prefix="TILESERVER_", env_file=None)

    catalog_url: str = Field(
        default_factory=lambda: f"sqlite:///{default_data_dir() / 'catalog.db'}",
        description="sqlite:///PATH (embedded) or postgresql://USER:PASSWORD@HOST:PORT/DB (pgSTAC)",
    )
    data_dir: Path = Field(default_factory=default_data_dir)
    static_dir: Path = PROJECT_ROOT / "static"
    cache_max_bytes: int = Field(256 * 1024 * 1024, description="in-process tile cache size")
    cache_url: str | None = Field(
        None,
        description="redis://HOST:PORT/DB: tile and chip cache shared by all workers; "
        "unset: in-process LRU",
    )
    cache_ttl: int = Field(86400, ge=1, description="seconds Redis keeps a tile or chip")
    cache_control: str = "public, max-age=3600"
    max_tile_size: int = Field(1024, description="largest tile edge in pixels (with @Nx)")
    reader_threads: int = Field(4, description="threads reading the files of one image")
    open_datasets: int = Field(
        64, ge=0, description="open files kept between requests per process (their GDAL caches)"
    )
    malloc_arenas: int | None = Field(
        None,
        ge=0,
        description="glibc malloc arenas the server's threads share (default: one per CPU; "
        "0: glibc's 8 per CPU, which keep more freed memory)",
    )
    memory_trim_seconds: float = Field(
        60.0,
        ge=0,
        description="how often freed memory is handed back to the system (malloc_trim; 0: never)",
    )
    mosaic_max_images: int = Field(
        30, ge=1, description="most images one mosaic tile reads (header X-Mosaic-Cap-Reached)"
    )
    chip_limit: int = Field(24, ge=1, description="most chips one chip request may produce")
    chip_cache_dir: Path | None = Field(
        None,
        description="where rendered chips are kept (default: DATA_DIR/chips); "
        "unused with cache_url",
    )
    download_max_pixels: int = Field(
        100_000_000, ge=1, description="largest download (width x height x bands); 413 above"
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="largest request body (a search, a geometry); 413 above"
    )
    max_upload_bytes: int = Field(
        4 * 1024**3, ge=1, description="largest pixel upload (`PUT /uploads/{id}/data`); 413 above"
    )
    max_blob_bytes: int = Field(
        4 * 1024**3, ge=0, description="largest blob (`PUT /blobs/{id}/data`); 413 above"
    )
    upload_workers: int = Field(
        1, ge=1, le=16, description="threads converting received uploads to COGs"
    )
    import_roots: list[Path] = Field(
        default_factory=list,
        description="folders `POST /imports` may read with cloud_provider=file (JSON list); "
        "none: file imports over HTTP are refused",
    )
    import_grants: dict[str, list[str]] = Field(
        default_factory=dict,
        description="what each organisation or user may import from, and where its products' "
        'images may be read from (JSON: {"org:NAME": ["/folder", "s3://bucket/prefix/", '
        '"gs://bucket/prefix/", "https://host/path/"], "user:NAME": [...]}); "admin": the '
        "URL prefixes admins and the operator's products may read (no other URL is fetched)",
    )
    mosaic_scan_limit: int = Field(
        10000, ge=1, description="most catalog records one mosaic tile's lookup examines"
    )
    mosaic_time_limit: float = Field(
        5.0, gt=0, description="seconds a mosaic tile's lookup may take (then it uses what it has)"
    )
    allow_anonymous: bool = Field(
        False,
        description="with API keys configured, let requests without a key read `public` "
        "products (otherwise they get 401)",
    )
    key_cache_seconds: float = Field(
        5.0, ge=0, description="how long a process trusts a key check (a revocation's delay)"
    )
    search_ttl_days: float = Field(
        DEFAULT_SEARCH_TTL_DAYS,
        gt=0,
        description="days a registered search lives unused (no registration, tile or lookup); "
        "then it is a 404 until registered again",
    )
    max_searches: int = Field(
        DEFAULT_MAX_SEARCHES,
        ge=1,
        description="most registered searches kept; registering past it deletes expired "
        "searches, then the least recently used",
    )
    mosaic_minzoom: int | None = Field(
        None,
        description="lowest zoom mosaic tiles answer; default: the zoom at which one image's "
        "coarsest overview fills a tile",
    )
    mosaic_low_zoom_max_images: int = Field(
        500,
        ge=1,
        description="most images a mosaic tile reads below its first image's minzoom "
        "(reached when TILESERVER_MOSAIC_MINZOOM is lower), each a few overview pixels",
    )
    mosaic_pyramid: bool = Field(
        True,
        description="keep a low-zoom pyramid per registered search (DATA_DIR/pyramids), "
        "built in the background, serving WebMercatorQuad tiles from zoom 0 to below the "
        "first image's minzoom",
    )

    request_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a request may take; then it is answered 504 and its work stops "
        "at its next checkpoint (also when the client disconnects)",
    )
    remote_reads: int = Field(
        32,
        ge=1,
        description="most reads of remote files (buckets, URLs) at once per process, so a "
        "bucket that hangs cannot take every thread (a mosaic tile of per-band files reads "
        "up to reader_threads files at once: 4 clients of such tiles needed more than 8)",
    )
    remote_read_wait: float = Field(
        2.0,
        ge=0,
        description="seconds a request waits for a remote-read slot before a 503 with Retry-After",
    )
    request_threads: int = Field(
        100,
        ge=1,
        description="threads per process running blocking request work (Starlette's "
        "default is 40); requests waiting on remote reads must leave some for the others",
    )

    metrics_token: SecretStr | None = Field(
        None,
        description="turns on GET /metrics (Prometheus), which then wants `Authorization: "
        "Bearer <this token>`; unset: /metrics is 404",
    )
    request_log: bool = Field(
        True,
        description="one JSON line per request on the `tileserver.requests` logger (route, "
        "status, milliseconds, tile stage timings)",
    )
    basemap_url: str | None = Field(
        None,
        description="an XYZ tile URL template ({z}/{x}/{y}, optionally {s} and {r}) the viewer "
        "offers as a basemap, e.g. a self-hosted tile server on loopback; unset: no page loads "
        "anything but this server's own tiles",
    )
    basemap_attribution: str = Field("", description="the basemap's attribution text")

    @field_validator("basemap_url")
    @classmethod
    def _basemap(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^(https?://|/)", value) or not all(
            part in value for part in ("{z}", "{x}", "{y}")
        ):
            raise ValueError("basemap_url is an http(s) or /path URL template with {z}, {x}, {y}")
        return value

    @field_validator("import_grants")
    @classmethod
    def _grants(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from tileserver.opener import Grant  # checks each entry's form

        for name, entries in value.items():
            if name != "admin" and not re.fullmatch(r"(user|org):[A-Za-z0-9._@-]{1,200}", name):
                raise ValueError(f"grant to '{name}': grant to org:NAME, user:NAME or admin")
            Grant.parse(entries)
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings."""
    return Settings()
