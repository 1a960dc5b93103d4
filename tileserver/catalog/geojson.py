"""Bounded JSON and GeoJSON: depth and size limits checked before anything recurses.

Python's json, shapely's `shape()`, pgSTAC's filter rewrite and `repr` recurse once per
nesting level, so input nested past the interpreter's limit raises RecursionError (a 500),
and a geometry of millions of empty rings costs time before any check sees it. Every
GeoJSON geometry the API accepts (searches, filters, imports, downloads, parcels, images)
and every JSON text parsed from a query parameter goes through here first; the walks are
iterative. The ValueError's message says what was wrong and the limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import shapely
import shapely.geometry

# A GeoJSON geometry nests at most 7 levels (a collection of multipolygons); 16 leaves room
# for collections of collections.
MAX_GEOMETRY_DEPTH = 16
MAX_GEOMETRY_POSITIONS = 100_000  # vertices in one geometry (a 1 MiB body holds ~60,000)
MAX_GEOMETRY_PARTS = 10_000  # coordinate arrays (lines, rings, polygons) and member geometries
MAX_POSITION_NUMBERS = 4  # x, y and optional z, m


def json_depth_problem(value: Any, max_depth: int) -> str | None:
    """Why `value` (parsed JSON) nests too deep (None: it does not); an iterative walk."""
    pending = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, Mapping):
            children = list(node.values())
        elif isinstance(node, list | tuple):
            children = list(node)
        else:
            continue
        if depth > max_depth:
            return f"nests deeper than {max_depth} levels"
        pending.extend((child, depth + 1) for child in children)
    return None


def loads_bounded(text: str, what: str, max_depth: int) -> Any:
    """`text` as JSON, ValueError when it is not JSON or nests deeper than `max_depth`.

    Deeper input than Python can parse raises RecursionError inside json.loads (which
    cleans up after itself); it is answered as too deep, like shallower excess.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    problem = json_depth_problem(value, max_depth)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    return value


def geometry_problem(value: Any) -> str | None:
    """Why a GeoJSON geometry is too deep or too large (None: within every limit).

    Counts positions (arrays of numbers), parts (arrays of arrays, and geometry objects)
    and the numbers of a position, walking without recursion and stopping at the first
    limit crossed, so the cost is bounded by the limits, not by the input.
    """
    pending = [(value, 1)]
    positions = parts = 0
    while pending:
        node, depth = pending.pop()
        if isinstance(node, Mapping | list | tuple) and depth > MAX_GEOMETRY_DEPTH:
            return f"nests deeper than {MAX_GEOMETRY_DEPTH} levels"
        if isinstance(node, Mapping):
            children = list(node.values())
            parts += 1
        elif isinstance(node, list | tuple):
            children = list(node)
            if children and not isinstance(children[0], list | tuple | Mapping):
                positions += 1
                if len(children) > MAX_POSITION_NUMBERS:
                    return (
                        f"has a position of {len(children)} numbers; a position has "
                        f"2 to {MAX_POSITION_NUMBERS} (x, y, z, m)"
                    )
                if positions > MAX_GEOMETRY_POSITIONS:
                    return f"has more than {MAX_GEOMETRY_POSITIONS} positions (vertices)"
                continue
            parts += 1
        else:
            continue
        if parts > MAX_GEOMETRY_PARTS:
            return (
                f"has more than {MAX_GEOMETRY_PARTS} parts (rings, lines, polygons, "
                "member geometries)"
            )
        pending.extend((child, depth + 1) for child in children)
    return None


def check_geometry_size(value: Any, what: str) -> None:
    """ValueError naming `what` and the limit when a geometry is too deep or too large."""
    problem = geometry_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem}")


POLYGONAL = ("Polygon", "MultiPolygon")
GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", *POLYGONAL)


def _position_problem(position: Any) -> str | None:
    if not isinstance(position, list | tuple) or len(position) not in (2, 3):
        return "a position is [x, y] or [x, y, z]"
    if not all(map(_finite, position)):
        return "a position's coordinates are finite numbers"
    return None


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of 400 digits: no float holds it
        return False


def _line_problem(kind: str, line: Any, ring: bool) -> str | None:
    if not isinstance(line, list | tuple) or not line:
        return f"a {kind} needs lists of positions"
    for position in line:
        if problem := _position_problem(position):
            return problem
    if ring and len(line) < (4 if list(line[0]) == list(line[-1]) else 3):
        return "a polygon's ring has 3 or more corners"
    if not ring and len(line) < 2:
        return "a line has 2 or more positions"
    return None


def structure_problem(value: Any) -> str | None:
    """What makes `value` not a GeoJSON geometry (a Feature, a ring of two corners, a boolean
    coordinate), which shapely would read anyway and PostGIS would refuse."""
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind == "GeometryCollection":
        members = value.get("geometries")
        if not isinstance(members, list | tuple):
            return "a GeometryCollection has a list of geometries"
        return next(filter(None, map(structure_problem, members)), None)
    if kind not in GEOMETRY_TYPES:
        return f"{kind!r} is not a GeoJSON geometry type"
    coordinates = value.get("coordinates")
    if isinstance(coordinates, list | tuple) and not coordinates and kind != "Point":
        return None  # an empty geometry: check_geometry says so
    if kind == "Point":
        return _position_problem(coordinates)
    if kind == "MultiPoint":
        if not isinstance(coordinates, list | tuple):
            return "a MultiPoint has a list of positions"
        return next(filter(None, map(_position_problem, coordinates)), None)
    if kind == "LineString":
        lines = [coordinates]
    elif kind == "MultiPolygon":
        if not isinstance(coordinates, list | tuple) or not all(
            isinstance(p, list | tuple) for p in coordinates
        ):
            return "a MultiPolygon has a list of polygons, each a list of rings"
        lines = [ring for polygon in coordinates for ring in polygon]
    else:
        lines = coordinates
    if not isinstance(lines, list | tuple) or not lines:
        return f"a {kind} has a list of {'rings' if kind in POLYGONAL else 'lines'}"
    ring = kind in POLYGONAL
    return next((p for line in lines if (p := _line_problem(kind, line, ring))), None)


def closed_rings(value: Mapping) -> Mapping:
    """`value` with each polygon ring that does not end where it starts closed, as RFC 7946
    writes rings (shapely closes them when it reads; PostGIS refuses them open); `value`
    itself when every ring is closed."""

    def ring(line: Sequence) -> Sequence:
        return line if list(line[0]) == list(line[-1]) else [*map(list, line), list(line[0])]

    def rings(lines: Sequence) -> Sequence:
        closed = [ring(line) for line in lines]
        return lines if all(a is b for a, b in zip(closed, lines, strict=True)) else closed

    kind = value.get("type")
    if kind == "Polygon":
        new = rings(value["coordinates"])
    elif kind == "MultiPolygon":
        new = [rings(polygon) for polygon in value["coordinates"]]
    elif kind == "GeometryCollection":
        new = [closed_rings(member) for member in value["geometries"]]
    else:
        return value
    key = "geometries" if kind == "GeometryCollection" else "coordinates"
    if new is value[key] or all(a is b for a, b in zip(new, value[key], strict=True)):
        return value
    return {**value, key: new}


def check_geometry(value: Any, what: str, polygonal: bool = False, wgs84: bool = False) -> dict:
    """A GeoJSON geometry a caller sent, or ValueError naming `what` and the problem.

    Checked in this order: size and depth (before shapely, which recurses per level), its
    GeoJSON structure (`structure_problem`), that it reads as GeoJSON, its type (`polygonal`:
    a Polygon or MultiPolygon, as areas are), that it is non-empty and valid, and (`wgs84`)
    that its coordinates are longitudes and latitudes. Returned with open rings closed.
    """
    check_geometry_size(value, what)
    kind = value.get("type") if isinstance(value, Mapping) else None
    if polygonal and kind not in POLYGONAL:
        raise ValueError(f"{what} must be a GeoJSON Polygon or MultiPolygon, not {kind}")
    if problem := structure_problem(value):
        raise ValueError(f"{what} is not a valid GeoJSON {kind or 'geometry'}: {problem}")
    value = closed_rings(value)
    try:
        geometry = shapely.geometry.shape(value)
    except Exception as exc:  # shapely says little; the shape was wrong anyway
        raise ValueError(f"{what} is not a valid GeoJSON {kind or 'geometry'}: {exc}") from None
    if geometry.is_empty:
        raise ValueError(f"{what} is empty")
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        noun = "polygon" if polygonal else "geometry"
        raise ValueError(f"{what} is not a valid {noun}: {reason}")
    if wgs84:
        minx, miny, maxx, maxy = geometry.bounds
        if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
            raise ValueError(f"{what} coordinates must be WGS84 longitude, latitude")
    return value
