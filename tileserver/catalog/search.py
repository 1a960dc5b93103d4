"""Searches over images: the STAC search body, its results and its summaries.

A search's collections, ids, bbox, intersects and datetime are turned into CQL2 and
joined with its filter, so a store compiles one expression, one way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time as time_module
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any, Literal

import shapely
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely.geometry import shape

from tileserver.catalog.cql2sql import FilterError, parse_filter
from tileserver.catalog.geojson import check_geometry
from tileserver.catalog.models import Image

Interval = Literal["year", "quarter", "month", "week", "day", "hour"]
DEFAULT_SORT = ({"field": "datetime", "direction": "desc"}, {"field": "id", "direction": "desc"})
MAX_LIMIT = 10000
COUNT_LIMIT = 10000  # searches count their matches exactly up to this many


class SortBy(BaseModel):
    """One sort key of a search."""

    field: str = Field(min_length=1)
    direction: Literal["asc", "desc"] = "asc"


class SearchQuery(BaseModel):
    """A STAC API item search (core, filter and sort extensions)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    collections: list[str] | None = None
    ids: list[str] | None = None
    bbox: list[float] | None = None
    intersects: dict[str, Any] | None = None
    datetime: str | None = None
    filter: dict[str, Any] | bool | str | None = None  # cql2-json may be a bare true/false
    filter_lang: Literal["cql2-json", "cql2-text"] | None = Field(None, alias="filter-lang")
    sortby: list[SortBy] | None = None
    limit: int = Field(10, ge=1, description=f"at most {MAX_LIMIT}; more is read as {MAX_LIMIT}")
    token: str | None = None

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int) -> int:
        return min(value, MAX_LIMIT)  # OGC API Features: a larger limit is clamped, not refused

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if len(value) not in (4, 6):
            raise ValueError("bbox has 4 numbers (west,south,east,north) or 6 (with heights)")
        if not all(math.isfinite(v) for v in value):
            raise ValueError("bbox numbers must be finite")
        west, south, east, north = (
            (value[0], value[1], value[3], value[4]) if len(value) == 6 else value
        )
        if not (-90 <= south <= north <= 90):
            raise ValueError("bbox needs -90 <= south <= north <= 90")
        if not (-180 <= west <= 180 and -180 <= east <= 180):
            raise ValueError("bbox longitudes must be within -180..180")
        return [west, south, east, north]

    @field_validator("intersects")
    @classmethod
    def _intersects(cls, value: dict | None) -> dict | None:
        return None if value is None else check_geometry(value, "intersects")

    @field_validator("datetime")
    @classmethod
    def _datetime(cls, value: str | None) -> str | None:
        if value is not None:
            datetime_interval(value)
        return value

    @model_validator(mode="after")
    def _one_place(self) -> SearchQuery:
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("give bbox or intersects, not both")
        if self.filter is not None:
            try:
                self.filter = parse_filter(self.filter, self.filter_lang)
            except FilterError as exc:
                raise ValueError(str(exc)) from None
            self.filter_lang = "cql2-json"
        return self

    def identity(self) -> dict:
        """What defines the set of images and their order (no paging)."""
        return self.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude={"limit", "token"}
        )

    def search_id(self) -> str:
        """A stable id: the same search in any key order gives the same id."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    def sort_keys(self) -> list[SortBy]:
        """The requested sort, then datetime and id (descending) to make the order total."""
        keys = list(self.sortby or [])
        named = {k.field for k in keys}
        keys += [SortBy(**k) for k in DEFAULT_SORT if k["field"] not in named]
        return keys

    def cql2(self) -> dict | None:
        """The whole search as one CQL2-JSON expression (None: everything)."""
        args: list[dict] = []
        if self.collections:
            args.append({"op": "in", "args": [{"property": "collection"}, self.collections]})
        if self.ids:
            args.append({"op": "in", "args": [{"property": "id"}, self.ids]})
        if self.datetime is not None:
            start, end = datetime_interval(self.datetime)
            args.append(
                {
                    "op": "t_intersects",
                    "args": [{"property": "datetime"}, {"interval": [start, end]}],
                }
            )
        if self.filter is not None:
            args.append(self.filter)
        # spatial terms last: their exact check is a Python call per candidate row
        if self.bbox is not None:
            args.append(bbox_filter(self.bbox))
        if self.intersects is not None:
            args.append({"op": "s_intersects", "args": [{"property": "geometry"}, self.intersects]})
        if not args:
            return None
        return args[0] if len(args) == 1 else {"op": "and", "args": args}


def parse_sortby(text: str) -> list[SortBy]:
    """STAC GET sortby: `-datetime,+eo:cloud_cover,id` (no sign means ascending)."""
    keys = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        direction = "desc" if item.startswith("-") else "asc"
        field = item.lstrip("+- ")
        if not field:
            raise ValueError(f"sortby '{text}' has an empty field name")
        keys.append(SortBy(field=field, direction=direction))
    if not keys:
        raise ValueError("sortby is empty: give fields such as -datetime,eo:cloud_cover")
    return keys


def bbox_filter(bbox: list[float]) -> dict:
    """s_intersects with a bbox; one crossing the antimeridian (west > east) is two boxes."""
    west, south, east, north = bbox
    if west <= east:
        return {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": bbox}]}
    return {
        "op": "or",
        "args": [
            bbox_filter([west, south, 180.0, north]),
            bbox_filter([-180.0, south, east, north]),
        ],
    }


DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# RFC 3339 date-time: seconds, optional fraction with digits, and a zone (Z or +hh:mm)
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)


def parse_instant(text: str, end: bool = False) -> datetime:
    """An RFC 3339 time (a bare date is its first, or with `end` its last, microsecond)."""
    text = text.strip()
    try:
        if DATE_ONLY.match(text):
            day = datetime.fromisoformat(text).date()
            when = datetime.combine(day, time.max if end else time.min)
        else:
            if not RFC3339.match(text):
                raise ValueError(text)
            when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not an RFC 3339 time such as 2024-05-03T10:20:31Z") from None
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in the year 10000 in UTC
        raise ValueError(f"'{text}' is not a time in the years 1 to 9999 in UTC") from None


def datetime_interval(value: str) -> tuple[str, str]:
    """A STAC `datetime` (instant, `a/b`, `../b`, `a/..`) as an interval with '..' ends."""
    if "/" not in value:
        return (
            parse_instant(value).isoformat().replace("+00:00", "Z"),
            parse_instant(value, end=True).isoformat().replace("+00:00", "Z"),
        )
    start_text, _, end_text = value.partition("/")
    start_text, end_text = start_text.strip(), end_text.strip()
    if start_text in ("", "..") and end_text in ("", ".."):
        raise ValueError("datetime interval needs at least one end: 'a/..' or '../b'")
    start = ".." if start_text in ("", "..") else parse_instant(start_text)
    end = ".." if end_text in ("", "..") else parse_instant(end_text, end=True)
    if start != ".." and end != ".." and start > end:
        raise ValueError(f"datetime interval '{value}' ends before it starts")
    return tuple(v if v == ".." else v.isoformat().replace("+00:00", "Z") for v in (start, end))


def encode_offset(offset: int) -> str:
    """A paging token."""
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_offset(token: str | None) -> int:
    """The offset a paging token stands for; ValueError for garbage."""
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except Exception:
        raise ValueError(f"invalid page token '{token}'") from None
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"invalid page token '{token}'")
    return offset


class SearchPage(BaseModel):
    """One page of search results with the total count and the neighbouring pages' tokens."""

    images: list[Image]
    matched: int | None = Field(None, description="exact count; None when there are too many")
    next_token: str | None = None
    prev_token: str | None = None


class SummaryBucket(BaseModel):
    """Images acquired in one interval."""

    interval_start: datetime
    count: int
    bytes: int


class Summary(BaseModel):
    """Count, bytes and products of a search, optionally bucketed by acquisition time."""

    count: int
    bytes: int
    products: list[str]
    bbox: tuple[float, float, float, float] | None = None
    start: datetime | None = None
    end: datetime | None = None
    interval: Interval | None = None
    summaries: list[SummaryBucket] | None = None


class RegisteredSearch(BaseModel):
    """A search registered for mosaics: its stable id and body."""

    id: str
    search: SearchQuery
    created: datetime | None = None
    last_used: datetime | None = None  # registration or a lookup, to TOUCH_EVERY's precision


DEFAULT_SEARCH_TTL_DAYS = 30.0
DEFAULT_MAX_SEARCHES = 100_000
TOUCH_EVERY = 60.0  # seconds: a search's last use is written at most this often


@dataclass(frozen=True)
class SearchLimits:
    """How long an unused registered search lives and how many the catalog keeps.

    Registering is open to every reader, so without both the table would grow without bound.
    """

    ttl_days: float = DEFAULT_SEARCH_TTL_DAYS
    max_searches: int = DEFAULT_MAX_SEARCHES

    @property
    def ttl(self) -> float:
        """The TTL in seconds."""
        return self.ttl_days * 86400.0

    @property
    def touch_every(self) -> float:
        """Seconds between two writes of a search's last use (a tenth of a short TTL)."""
        return min(TOUCH_EVERY, self.ttl / 10)


class TileLookup(BaseModel):
    """How a mosaic tile finds its images (pgSTAC's geometrysearch knobs).

    `exit_when_full` stops once the footprints met so far cover the tile; `skip_covered`
    leaves out an image whose footprint adds no area. Both trust footprints: an image
    whose footprint covers nodata can then hide the pixels of the next one.
    """

    limit: int = Field(100, ge=1, description="most images returned")
    scan_limit: int = Field(10000, ge=1, description="most candidates examined")
    time_limit: float = Field(5.0, gt=0, description="seconds; what was found by then is used")
    exit_when_full: bool = False
    skip_covered: bool = False


def select_for_tile(candidates: Iterable[Image], bbox: tuple, lookup: TileLookup) -> list[Image]:
    """The images of a tile from candidates in paint order, as pgSTAC's geometrysearch does.

    The same loop as pgSTAC's, so both stores choose the same images: clip each footprint
    to the tile, grow the union, skip an image that adds no area (skip_covered), stop at
    the limit, the scan limit, the time limit or a full tile (exit_when_full).
    """
    tile = shapely.box(*bbox)
    shortcut = lookup.exit_when_full or lookup.skip_covered
    union, area, previous = None, 0.0, 0.0
    chosen: list[Image] = []
    deadline = time_module.monotonic() + lookup.time_limit
    for scanned, image in enumerate(candidates, start=1):
        if shortcut:
            clipped = tile.intersection(shape(image.geometry))
            union = clipped if union is None else union.union(clipped)
            area = union.area
            if lookup.skip_covered and area == previous:
                if scanned >= lookup.scan_limit:
                    break
                continue
            previous = area
        chosen.append(image)
        if (
            len(chosen) >= lookup.limit
            or scanned >= lookup.scan_limit
            or time_module.monotonic() > deadline
            or ((lookup.exit_when_full or lookup.skip_covered) and area >= tile.area)
        ):
            break
    return chosen
