"""SPOT 6/7, Pleiades and Pleiades Neo DIMAP v2 scenes (SEMANTICS.md section 5).

A scene is entered at a `VOL_*.XML` (a delivery listing `DIM_*.XML` components, e.g. a
P + MS bundle) or at a lone `DIM_*.XML`. Each present component becomes one file of the
image: a VRT mosaicking its `IMG_*_R{r}C{c}` GeoTIFF/JPEG2000 tiles (components differ in
resolution, so they cannot share one). Every metadata document is read with
`vsi.read_bytes`, so scenes in buckets work like local ones.

Rules the import and users rely on:

- Scene id: `Dataset_Sources/Source_Identification/SOURCE_ID` of the first component,
  else its `DATASET_NAME`, else the entry's file stem.
- Product id: the mission without its index (`spot`, `phr`, `pneo`) and the
  `SPECTRAL_PROCESSING` of each present component, panchromatic first, joined with `_`,
  lower-case, safe_name'd: `spot_p_ms` (SPOT 6/7 bundle), `phr_ms`, `pneo_ms-fs`,
  `pneo_pan_ms-fs`. A component without SPECTRAL_PROCESSING adds nothing (`phr` for the
  stripped GDAL sample). A delivery whose component is missing therefore lands in another
  product: its band layout differs.
- File order of a component's bands: the `Raster_Index_List` of each `Data_Files` group,
  by `BAND_INDEX` when those are the file positions 1..n, else in list order (GDAL's
  DIMAP driver ignores BAND_INDEX; the Pleiades Neo sample's NED list says 4, 2, 3). Without
  a list: the BAND_IDs the document declares (calibration, spectral ranges, histograms) in
  the order GDAL's DIMAP driver assumes (P; B0 B1 B2 B3; R G B NIR RE DB), then the
  `Band_Display_Order` channels, each only when it names exactly as many bands as the
  files hold; else positional names `b1..bn`.
- Band names: P/PAN `pan`; B0 `blue`, B1 `green`, B2 `red`, B3 `nir`; R `red`, G `green`,
  B `blue`, NIR `nir`, RE `rededge`, DB `deepblue`; any other BAND_ID lower-cased.
- Calibration: `Band_Radiance` gives radiance = DN / GAIN + BIAS, the band's physical range
  and its `radiance` processing level. In REFLECTANCE products the stored value is the
  reflectance times `Band_Reflectance` GAIN and Band_Radiance converts reflectance
  (its MEASURE_DESC: "L=RHO/GAIN+BIAS"), so radiance = (DN / Gr + Br) / GAIN + BIAS; such
  bands also get a `reflectance` level (DN / Gr + Br).
- Placement: the tiles' own CRS and geotransform (ortho products), else the DIM's
  `Geoposition_Insert` with its CRS code, else GCPs in EPSG:4326 computed from the RPC
  model (sensor products), else the tiles' own GCPs; rio-tiler warps GCPs with an affine fit.
- Footprint: `Dataset_Extent` vertices; a product without them (stripped and some sensor
  deliveries; GDAL's `primary_rpc_center_h` sample has only a Center) gets the outline of
  its pixel grid: through the RPC model at its HEIGHT_OFF (`rpc`), the geotransform
  (`geotransform`) or the affine fit of the tiles' GCPs (`gcps`). The XML is tried first
  (Raster_Dimensions + Geoposition_Insert or the RPC file); the tile headers only when it
  says too little.
- Time: `IMAGING_DATE` + `IMAGING_TIME` of the strip, else the `TIME` of the
  `Geometric_Data` Located_Geometric_Values (Center first): GDAL's stripped samples carry
  placeholders in IMAGING_DATE. The image's `tileserver:provenance` says which was used.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import xml.etree.ElementTree as ET  # writing VRTs only; parsing goes through defusedxml
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy
import shapely
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.rpc import RPC
from rasterio.transform import RPCTransformer, from_gcps
from rasterio.warp import transform as warp_transform
from shapely.geometry import MultiPoint, Polygon, shape
from shapely.geometry.polygon import orient

from tileserver.catalog.models import (
    NUMPY_TO_DATA_TYPE,
    Band,
    BandStatistics,
    Image,
    ImageFile,
    ProcessingStep,
    Product,
    Resolution,
    safe_name,
)
from tileserver.ingest import vsi, xmldoc
from tileserver.ingest.raster import (
    VRT_DATA_TYPES,
    IngestError,
    display_range,
    grid_outline,
    image_statistics,
    parse_time,
)
from tileserver.ingest.scene import PROVENANCE, SceneMeta
from tileserver.opener import open_raster

ENTRY = re.compile(r"^(VOL|DIM)_.+\.XML$", re.IGNORECASE)
ROOTS = ("Dimap_Document", "PHR_DIMAP_Document")
TILE_SUFFIXES = (".TIF", ".tif", ".JP2", ".jp2")
GCP_GRID = 5  # GCPs per side computed from an RPC model
OUTLINE_SEGMENTS = 16  # pieces per image edge of a footprint derived from the pixel grid

BAND_NAMES = {
    "P": "pan",
    "PAN": "pan",
    "B0": "blue",
    "B1": "green",
    "B2": "red",
    "B3": "nir",
    "R": "red",
    "G": "green",
    "B": "blue",
    "NIR": "nir",
    "RE": "rededge",
    "DB": "deepblue",
}
# The file position GDAL's DIMAP driver gives each BAND_ID when nothing else says.
GDAL_BAND_RANK = {
    "P": 0,
    "PAN": 0,
    "B0": 0,
    "R": 0,
    "B1": 1,
    "G": 1,
    "B2": 2,
    "B": 2,
    "B3": 3,
    "NIR": 3,
    "RE": 4,
    "DB": 5,
}
CONSTELLATIONS = {"SPOT": "spot", "PHR": "pleiades", "PNEO": "pleiades-neo"}
PAN_PROCESSING = ("P", "PAN")
DISPLAY_CHANNELS = ("RED_CHANNEL", "GREEN_CHANNEL", "BLUE_CHANNEL", "ALPHA_CHANNEL")
WAVELENGTH_UNITS = {"nanometer": 1.0, "nm": 1.0, "micrometer": 1000.0, "micron": 1000.0}
WAVELENGTH_UNITS.update({"um": 1000.0, "µm": 1000.0})


def is_entry(href: str) -> bool:
    """Whether a file is a DIMAP v2 entry point: VOL_*.XML or DIM_*.XML (not a GDAL
    .aux.xml sidecar written beside one)."""
    name = PurePosixPath(href.replace("\\", "/")).name
    return bool(ENTRY.match(name)) and not name.lower().endswith(".aux.xml")


# --- XML ------------------------------------------------------------------------------


def read_xml(href: str) -> ET.Element:
    """A DIMAP document's root, namespaces dropped; IngestError names the file."""
    try:
        data = vsi.read_bytes(href)
    except vsi.StorageError as exc:
        raise IngestError(f"cannot read DIMAP document {href}: {exc}") from exc
    root = xmldoc.parse(data, href, "DIMAP document")
    if root.tag not in ROOTS:
        raise IngestError(f"{href}: not a DIMAP document (root element <{root.tag}>)")
    return root


def _measure(doc: ET.Element, tag: str, band_id: str) -> ET.Element | None:
    """The first calibration record `tag` (Band_Radiance, ...) for a BAND_ID."""
    return next((m for m in doc.iter(tag) if xmldoc.text(m, "BAND_ID") == band_id), None)


# --- metadata -------------------------------------------------------------------------


@dataclass
class Component:
    """One DIM_*.XML of a scene."""

    href: str
    doc: ET.Element

    @property
    def source(self) -> ET.Element | None:
        """The first Source_Identification (the strip the product was cut from)."""
        return self.doc.find("Dataset_Sources/Source_Identification")

    @property
    def strip(self) -> ET.Element | None:
        """Its Strip_Source: mission, instrument, imaging date and time."""
        return self.doc.find("Dataset_Sources/Source_Identification/Strip_Source")

    @property
    def spectral(self) -> str | None:
        """SPECTRAL_PROCESSING: P, PAN, MS, MS-FS, PMS, PMS-N, ..."""
        return xmldoc.text(self.doc, ".//Product_Settings/SPECTRAL_PROCESSING")


def component_paths(volume: ET.Element) -> list[str]:
    """The DIMAP components a VOL lists (hrefs relative to the VOL)."""
    paths = []
    for component in volume.iterfind("Dataset_Content/Dataset_Components/Component"):
        node = component.find("COMPONENT_PATH")
        href = (node.get("href") or "").strip() if node is not None else ""
        if (xmldoc.text(component, "COMPONENT_TYPE") or "").upper() == "DIMAP" and href:
            paths.append(href)
    return paths


def acquisition_time(component: Component) -> tuple[datetime | None, str | None]:
    """(time, where it came from): IMAGING_DATE + IMAGING_TIME of the strip (midnight when
    only the date is given), else the TIME of a Located_Geometric_Values, the Center first."""
    date = xmldoc.text(component.strip, "IMAGING_DATE")
    if date is not None:
        clock = xmldoc.text(component.strip, "IMAGING_TIME") or "00:00:00"
        when = parse_time(f"{date}T{clock}")
        if when is not None:
            return when, "IMAGING_DATE"
    located = list(component.doc.iterfind("Geometric_Data/Use_Area/Located_Geometric_Values"))
    located.sort(key=lambda node: (xmldoc.text(node, "LOCATION_TYPE") or "").lower() != "center")
    for node in located:
        when = parse_time(xmldoc.text(node, "TIME") or "")
        if when is not None:
            return when, "Located_Geometric_Values/TIME"
    return None, None


def extent_polygon(component: Component) -> Polygon | None:
    """Dataset_Extent as a polygon: the vertices in order for a valid Bounding_Polygon,
    else their convex hull (a Bounding_Box, or vertices that include a centre point)."""
    extent = component.doc.find("Dataset_Content/Dataset_Extent")
    if extent is None:
        return None
    points = []
    for vertex in extent.iterfind("Vertex"):
        lon, lat = xmldoc.number(vertex, "LON"), xmldoc.number(vertex, "LAT")
        if lon is not None and lat is not None:
            points.append((lon, lat))
    if len(set(points)) < 3:
        return None
    if (xmldoc.text(extent, "EXTENT_TYPE") or "").lower() == "bounding_polygon":
        polygon = Polygon(points)
        if polygon.is_valid and polygon.area > 0:
            return orient(polygon)
    hull = MultiPoint(points).convex_hull
    return orient(hull) if isinstance(hull, Polygon) else None


def footprint(components: list[Component]) -> tuple[dict, str]:
    """WGS84 GeoJSON Polygon of the components' outlines, and where it came from
    (`Dataset_Extent`, `rpc`, `geotransform`, `gcps`; joined with + when they differ)."""
    polygons, sources = [], []
    for component in components:
        polygon = extent_polygon(component)
        source = "Dataset_Extent"
        if polygon is None:
            polygon, source = grid_footprint(component)
        polygons.append(polygon)
        if source not in sources:
            sources.append(source)
    geom = shapely.union_all(polygons)
    if not isinstance(geom, Polygon):
        geom = orient(geom.convex_hull)
    coordinates = [[list(xy) for xy in geom.exterior.coords]]
    return {"type": "Polygon", "coordinates": coordinates}, "+".join(sources)


def _as_polygon(geom: shapely.Geometry, href: str, source: str) -> Polygon:
    """A valid, counter-clockwise polygon of an outline (its hull if it folds on itself)."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    if not isinstance(geom, Polygon):
        geom = geom.convex_hull
    if not isinstance(geom, Polygon) or geom.is_empty or geom.area <= 0:
        raise IngestError(f"{href}: the outline of its pixels through its {source} is empty")
    return orient(geom)


def rpc_outline(rpc: RPC, width: int, height: int, href: str) -> Polygon:
    """The image's outline (pixel corners, OUTLINE_SEGMENTS points per edge) projected
    through the RPC model at its HEIGHT_OFF."""
    edge = shapely.segmentize(
        shapely.box(0, 0, width, height), max(width, height) / OUTLINE_SEGMENTS
    )
    cols, rows = shapely.get_coordinates(edge).T
    with RPCTransformer(rpc) as transformer:
        lons, lats = transformer.xy(rows, cols, zs=[rpc.height_off] * len(rows), offset="ul")
    points = numpy.column_stack([lons, lats])
    if not numpy.isfinite(points).all() or (numpy.abs(points[:, 1]) > 90).any():
        raise IngestError(f"{href}: its RPC model does not place the image corners on Earth")
    return _as_polygon(Polygon(points), href, "RPC model")


def _size(component: Component) -> tuple[int, int] | None:
    """Raster_Dimensions NCOLS x NROWS, None when absent."""
    dims = component.doc.find("Raster_Data/Raster_Dimensions")
    width, height = xmldoc.number(dims, "NCOLS"), xmldoc.number(dims, "NROWS")
    return (int(width), int(height)) if width and height else None


def grid_footprint(component: Component) -> tuple[Polygon, str]:
    """The outline of a component's pixel grid in WGS84 and the model that placed it: from
    the XML when it says enough (size + Geoposition_Insert or an RPC file), else from the
    tile headers as the image will be read."""
    size = _size(component)
    insert = insert_georeference(component.doc) if size else None
    if insert is not None:
        outline = grid_outline(*insert, *size, OUTLINE_SEGMENTS)
        return _as_polygon(shape(outline), component.href, "geotransform"), ("geotransform")
    rpc = rpc_model(component, None) if size else None
    if rpc is not None:
        return rpc_outline(rpc, *size, component.href), "rpc"
    mosaic, _ = build_mosaic(component)
    if mosaic.rpc is not None:
        return rpc_outline(mosaic.rpc, mosaic.width, mosaic.height, component.href), "rpc"
    outline = grid_outline(
        mosaic.grid_crs, mosaic.grid_transform, mosaic.width, mosaic.height, OUTLINE_SEGMENTS
    )
    return _as_polygon(shape(outline), component.href, mosaic.source), (mosaic.source)


def cloud_cover(components: list[Component]) -> float | None:
    """Dataset_Content/CLOUD_COVERAGE in percent, from the first component that has it."""
    for component in components:
        value = xmldoc.number(component.doc, "Dataset_Content/CLOUD_COVERAGE")
        if value is not None and 0 <= value <= 100:
            return value
    return None


def scene_properties(components: list[Component]) -> dict[str, Any]:
    """STAC-style properties: platform, constellation, instrument, levels, snow cover."""
    first = components[0]
    mission = xmldoc.text(first.strip, "MISSION")
    index = xmldoc.text(first.strip, "MISSION_INDEX")
    instrument = xmldoc.text(first.strip, "INSTRUMENT")
    spectral = [c.spectral for c in components if c.spectral]
    properties = {
        "platform": "-".join(p for p in (mission, index) if p).lower() or None,
        "constellation": CONSTELLATIONS.get((mission or "").upper(), (mission or "").lower())
        or None,
        "instrument": instrument.lower() if instrument else None,
        "processing:level": xmldoc.text(first.doc, ".//Product_Settings/PROCESSING_LEVEL"),
        "dimap:spectral_processing": "+".join(spectral) or None,
        "snow_cover": xmldoc.number(first.doc, "Dataset_Content/SNOW_COVERAGE"),
    }
    return {k: v for k, v in properties.items() if v is not None}


def product_id(components: list[Component]) -> str:
    """Mission without index + each component's spectral processing (module docstring)."""
    mission = xmldoc.text(components[0].strip, "MISSION") or "dimap"
    parts = [mission] + [c.spectral for c in components if c.spectral]
    return safe_name("_".join(parts).lower()).lower()


def scene_id(components: list[Component], href: str) -> str:
    """SOURCE_ID, else DATASET_NAME, else the entry's stem."""
    first = components[0]
    return (
        xmldoc.text(first.source, "SOURCE_ID")
        or xmldoc.text(first.doc, "Dataset_Identification/DATASET_NAME")
        or PurePosixPath(href.replace("\\", "/")).stem
    )


# --- tiles ----------------------------------------------------------------------------


@dataclass
class Group:
    """One Data_Files group: a tile grid whose files hold the same bands (MS-FS has two)."""

    tiles: dict[tuple[int, int], str]  # (row, col), 1-based -> tile href
    index_list: list[tuple[str, int | None, str | None]] | None  # BAND_ID, BAND_INDEX, NAME
    display: list[str] | None  # Band_Display_Order BAND_IDs
    nodata: float | None


@dataclass(frozen=True)
class Tile:
    """What the header of one tile says."""

    href: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    block: tuple[int, int]  # (x, y)
    crs: CRS | None
    transform: Affine
    rpcs: RPC | None
    gcps: tuple[list[GroundControlPoint], CRS | None] = ([], None)


def _nodata(display: ET.Element | None) -> float | None:
    """SPECIAL_VALUE_COUNT of the NODATA Special_Value (the name says count: it is a value)."""
    if display is None:
        return None
    for special in display.iterfind("Special_Value"):
        if (xmldoc.text(special, "SPECIAL_VALUE_TEXT") or "").upper() == "NODATA":
            return xmldoc.number(special, "SPECIAL_VALUE_COUNT")
    return None


def _index_list(display: ET.Element | None) -> list[tuple[str, int | None, str | None]] | None:
    """Raster_Index entries in document order."""
    node = display.find("Raster_Index_List") if display is not None else None
    if node is None:
        return None
    entries = []
    for index in node.iterfind("Raster_Index"):
        band_id = xmldoc.text(index, "BAND_ID")
        position = xmldoc.text(index, "BAND_INDEX")
        if band_id:
            number = int(position) if position and position.isdecimal() else None
            entries.append((band_id, number, xmldoc.text(index, "BAND_NAME")))
    return entries or None


def _display_order(display: ET.Element | None) -> list[str] | None:
    """The BAND_IDs of Band_Display_Order, channel by channel."""
    node = display.find("Band_Display_Order") if display is not None else None
    if node is None:
        return None
    ids = [xmldoc.text(node, channel) for channel in DISPLAY_CHANNELS]
    return [i for i in ids if i] or None


def data_file_groups(component: Component) -> list[Group]:
    """The component's tile groups from Raster_Data, else found by the naming convention."""
    raster = component.doc.find("Raster_Data")
    shared = raster.find("Raster_Display") if raster is not None else None
    groups = []
    for files in raster.iterfind("Data_Access/Data_Files") if raster is not None else []:
        tiles = {}
        for data_file in files.iterfind("Data_File"):
            path = data_file.find("DATA_FILE_PATH")
            href = (path.get("href") or "").strip() if path is not None else ""
            if not href:
                continue
            try:
                key = (int(data_file.get("tile_R", "1")), int(data_file.get("tile_C", "1")))
            except ValueError as exc:
                raise IngestError(f"{component.href}: bad tile_R/tile_C for {href}") from exc
            tiles[key] = vsi.join(component.href, href)
        if not tiles:
            continue
        own = files.find("Raster_Display")
        nodata = _nodata(own)
        groups.append(
            Group(
                tiles=tiles,
                index_list=_index_list(own),
                display=_display_order(own),
                nodata=nodata if nodata is not None else _nodata(shared),
            )
        )
    if len(groups) == 1 and groups[0].index_list is None:
        groups[0].index_list = _index_list(shared)
        groups[0].display = groups[0].display or _display_order(shared)
    if not groups:
        tiles = discover_tiles(component.href)
        if not tiles:
            raise IngestError(
                f"{component.href}: no Data_File listed and no IMG_*_R1C1 tile beside it"
            )
        groups.append(Group(tiles, _index_list(shared), _display_order(shared), _nodata(shared)))
    return groups


def discover_tiles(dim_href: str) -> dict[tuple[int, int], str]:
    """Tiles named IMG_<DIM stem without DIM_>_R{r}C{c}.TIF/.JP2 beside a DIM without
    Raster_Data (GDAL's metadata reader pairs them the same way)."""
    stem = PurePosixPath(dim_href.replace("\\", "/")).stem
    base = f"IMG_{stem[4:]}"

    def probe(row: int, col: int) -> str | None:
        for suffix in TILE_SUFFIXES:
            href = vsi.join(dim_href, f"{base}_R{row}C{col}{suffix}")
            if vsi.exists(href):
                return href
        return None

    tiles: dict[tuple[int, int], str] = {}
    row = 1
    while (first := probe(row, 1)) is not None:
        tiles[(row, 1)] = first
        col = 2
        while (href := probe(row, col)) is not None:
            tiles[(row, col)] = href
            col += 1
        row += 1
    return tiles


def open_tile(href: str, dim_href: str) -> Tile:
    """A tile's header; opening it proves the tile is there and readable."""
    try:
        with open_raster(href) as src:
            return Tile(
                href=href,
                width=src.width,
                height=src.height,
                count=src.count,
                dtypes=tuple(src.dtypes),
                block=(src.block_shapes[0][1], src.block_shapes[0][0]),
                crs=src.crs,
                transform=src.transform,
                rpcs=src.rpcs,
                gcps=src.gcps,
            )
    except RasterioIOError as exc:
        raise IngestError(f"tile {href} listed by {dim_href} cannot be opened ({exc})") from exc


def tile_offsets(
    tiles: dict[tuple[int, int], Tile], overlap: tuple[int, int], dim_href: str
) -> tuple[dict[int, int], dict[int, int]]:
    """Pixel offsets of each tile column and row: the widths/heights of the ones before."""
    widths: dict[int, int] = {}
    heights: dict[int, int] = {}
    for (row, col), tile in tiles.items():
        if widths.setdefault(col, tile.width) != tile.width:
            raise IngestError(f"{dim_href}: tiles of column {col} differ in width")
        if heights.setdefault(row, tile.height) != tile.height:
            raise IngestError(f"{dim_href}: tiles of row {row} differ in height")
    for sizes, what in ((widths, "column"), (heights, "row")):
        gaps = sorted(set(range(1, max(sizes) + 1)) - set(sizes))
        if gaps:
            raise IngestError(f"{dim_href}: no tile in {what} {gaps[0]} of the tile grid")
    cols = {c: sum(widths[i] - overlap[0] for i in range(1, c)) for c in widths}
    rows = {r: sum(heights[i] - overlap[1] for i in range(1, r)) for r in heights}
    return cols, rows


# --- band order, names, calibration ---------------------------------------------------


def _ordered(entries: list[tuple[str, int | None, str | None]], count: int) -> list:
    """Raster_Index entries in file order: by BAND_INDEX when it numbers the file's bands."""
    if sorted(e[1] or 0 for e in entries) == list(range(1, count + 1)):
        return sorted(entries, key=lambda e: e[1])
    return list(entries)


def declared_band_ids(doc: ET.Element) -> list[str]:
    """BAND_IDs the document describes, in the order GDAL's DIMAP driver assumes."""
    seen: list[str] = []
    for tag in ("Band_Radiance", "Band_Spectral_Range", "Band_Solar_Irradiance", "Histogram_Band"):
        for node in doc.iter(tag):
            band_id = xmldoc.text(node, "BAND_ID")
            if band_id and band_id not in seen:
                seen.append(band_id)
    return sorted(seen, key=lambda b: (GDAL_BAND_RANK.get(b.upper(), 99), seen.index(b)))


def file_band_ids(
    groups: list[Group], counts: list[int], doc: ET.Element
) -> list[list[tuple[str | None, str | None]]]:
    """(BAND_ID, BAND_NAME) of every band of every group, in file order (module docstring)."""
    total = sum(counts)
    result: list[list[tuple[str | None, str | None]] | None] = []
    for group, count in zip(groups, counts, strict=True):
        entries = _ordered(group.index_list, count) if group.index_list else []
        result.append([(e[0], e[2]) for e in entries] if len(entries) == count else None)
    if all(r is not None for r in result):
        return result  # type: ignore[return-value]
    display = [i for g in groups for i in (g.display or [])]
    for candidate in (declared_band_ids(doc), display):
        if len(candidate) == total and len(set(candidate)) == total:
            ids = iter(candidate)
            return [[(next(ids), None) for _ in range(count)] for count in counts]
    return [[(None, None)] * count for count in counts]


def band_name(band_id: str | None, position: int) -> str:
    """The catalog name of a BAND_ID (positional `b<n>` when the band has none)."""
    if band_id is None:
        return f"b{position}"
    return BAND_NAMES.get(band_id.upper(), safe_name(band_id.lower()))


def _gain_bias(node: ET.Element | None) -> tuple[float, float] | None:
    gain, bias = xmldoc.number(node, "GAIN"), xmldoc.number(node, "BIAS")
    if not gain:  # absent or 0: no calibration
        return None
    return gain, bias or 0.0


def processing_levels(
    doc: ET.Element, band_id: str | None, data_range: tuple[float, float]
) -> tuple[tuple[float, float] | None, str | None, dict[str, list[ProcessingStep]] | None]:
    """Physical range, its unit and the `radiance` (and `reflectance`) levels of a band."""
    if band_id is None:
        return None, None, None
    radiance = _measure(doc, "Band_Radiance", band_id)
    calibration = _gain_bias(radiance)
    reflectance = None
    radiometric = (xmldoc.text(doc, ".//RADIOMETRIC_PROCESSING") or "").upper()
    if radiometric == "REFLECTANCE":
        reflectance = _gain_bias(_measure(doc, "Band_Reflectance", band_id))
    levels: dict[str, list[ProcessingStep]] = {}
    physical = unit = None
    steps = []
    if reflectance is not None:
        steps.append(("reflectance", 1 / reflectance[0], reflectance[1], None))
    if calibration is not None:
        gain, bias = calibration
        if reflectance is not None:  # DN -> reflectance -> radiance, in one linear step
            scale, offset = 1 / (reflectance[0] * gain), reflectance[1] / gain + bias
        else:
            scale, offset = 1 / gain, bias
        unit = xmldoc.text(radiance, "MEASURE_UNIT")
        steps.append(("radiance", scale, offset, unit))
    for level, scale, offset, level_unit in steps:
        lo, hi = data_range[0] * scale + offset, data_range[1] * scale + offset
        span = (min(lo, hi), max(lo, hi))
        levels[level] = [
            ProcessingStep(
                function="linear",
                parameter=[scale, offset],
                data_type="Float32",
                data_range=span,
                display_range=span,
                physical_range=span,
                physical_range_unit=level_unit,
            )
        ]
        if level == "radiance":
            physical = span
    return physical, unit, levels or None


def wavelengths(doc: ET.Element, band_id: str | None) -> dict[str, float]:
    """wavelength_nm_* from Band_Spectral_Range (FWHM MIN/MAX in its MEASURE_UNIT)."""
    node = _measure(doc, "Band_Spectral_Range", band_id) if band_id else None
    if node is None:
        return {}
    factor = WAVELENGTH_UNITS.get((xmldoc.text(node, "MEASURE_UNIT") or "").lower())
    lo = (
        xmldoc.number(node, "FWHM/MIN")
        if node.find("FWHM/MIN") is not None
        else xmldoc.number(node, "MIN")
    )
    hi = (
        xmldoc.number(node, "FWHM/MAX")
        if node.find("FWHM/MAX") is not None
        else xmldoc.number(node, "MAX")
    )
    if factor is None or lo is None or hi is None or not 0 < lo < hi:
        return {}
    lo, hi = lo * factor, hi * factor
    return {
        "wavelength_nm_min": lo,
        "wavelength_nm_max": hi,
        "wavelength_nm_center": (lo + hi) / 2,
        "wavelength_nm_fwhm": hi - lo,
    }


# --- georeferencing -------------------------------------------------------------------


def parse_rpc(doc: ET.Element, href: str) -> RPC:
    """An RPC_*.XML model the way GDAL reads it: the Inverse_Model (ground to image)
    coefficients, LINE_OFF/SAMP_OFF moved from DIMAP's 1-based pixel centres (or FIRST_COL
    of DIMAP v3's validity domain) to 0-based ones."""

    def value(name: str) -> float:
        text = xmldoc.text(doc, f".//RFM_Validity/{name}") or xmldoc.text(doc, f".//{name}")
        if text is None:
            raise IngestError(f"{href}: RPC model without {name}")
        try:
            return float(text)
        except ValueError:
            raise IngestError(f"{href}: RPC {name} '{text[:40]}' is not a number") from None

    def coefficients(name: str) -> list[float]:
        for section in ("Inverse_Model", "GroundtoImage_Values"):
            node = doc.find(f".//{section}")
            values = [xmldoc.number(node, f"{name}_{i}") for i in range(1, 21)]
            if node is not None and all(v is not None for v in values):
                return values  # type: ignore[return-value]
        raise IngestError(f"{href}: RPC model without 20 {name} values")

    first = xmldoc.number(doc, ".//ImagetoGround_Validity_Domain/FIRST_COL")
    first = 1.0 if first is None else first
    return RPC(
        height_off=value("HEIGHT_OFF"),
        height_scale=value("HEIGHT_SCALE"),
        lat_off=value("LAT_OFF"),
        lat_scale=value("LAT_SCALE"),
        long_off=value("LONG_OFF"),
        long_scale=value("LONG_SCALE"),
        line_off=value("LINE_OFF") - first,
        line_scale=value("LINE_SCALE"),
        samp_off=value("SAMP_OFF") - first,
        samp_scale=value("SAMP_SCALE"),
        line_num_coeff=coefficients("LINE_NUM_COEFF"),
        line_den_coeff=coefficients("LINE_DEN_COEFF"),
        samp_num_coeff=coefficients("SAMP_NUM_COEFF"),
        samp_den_coeff=coefficients("SAMP_DEN_COEFF"),
    )


def rpc_model(component: Component, first_tile: Tile | None) -> RPC | None:
    """The component's RPCs: the RPC file its DIM names, else RPC_<stem>.XML beside it,
    else those GDAL found for its R1C1 tile."""
    href = None
    models = component.doc.find("Geoposition/Geoposition_Models/Rational_Function_Model")
    for node in models.iterfind(".//COMPONENT_PATH") if models is not None else []:
        if (node.get("href") or "").strip():
            href = vsi.join(component.href, node.get("href").strip())
            break
    if href is None:
        stem = PurePosixPath(component.href.replace("\\", "/")).stem
        candidate = vsi.join(component.href, f"RPC_{stem[4:]}.XML")
        href = candidate if vsi.exists(candidate) else None
    if href is not None:
        return parse_rpc(read_xml(href), href)
    return first_tile.rpcs if first_tile is not None else None


def rpc_gcps(rpc: RPC, width: int, height: int) -> list[GroundControlPoint]:
    """A GCP_GRID x GCP_GRID grid of (pixel corner -> lon/lat) points at the RPC mean height."""
    rows, cols = numpy.meshgrid(
        numpy.linspace(0, height, GCP_GRID), numpy.linspace(0, width, GCP_GRID), indexing="ij"
    )
    heights = [rpc.height_off] * rows.size
    with RPCTransformer(rpc) as transformer:
        xs, ys = transformer.xy(rows.ravel(), cols.ravel(), zs=heights, offset="ul")
    return [
        GroundControlPoint(row=float(r), col=float(c), x=float(x), y=float(y), z=rpc.height_off)
        for r, c, x, y in zip(rows.ravel(), cols.ravel(), xs, ys, strict=True)
    ]


def _usable(crs: CRS | None) -> bool:
    """A map CRS (not a LOCAL_CS placeholder like the JP2 sample's)."""
    return crs is not None and (crs.is_projected or crs.is_geographic)


def insert_georeference(doc: ET.Element) -> tuple[CRS, Affine] | None:
    """Geoposition_Insert (ULXMAP, ULYMAP, XDIM, YDIM) with the document's CRS code."""
    insert = doc.find("Geoposition/Geoposition_Insert")
    code = xmldoc.text(
        doc, "Coordinate_Reference_System/Projected_CRS/PROJECTED_CRS_CODE"
    ) or xmldoc.text(doc, "Coordinate_Reference_System/Geodetic_CRS/GEODETIC_CRS_CODE")
    values = [xmldoc.number(insert, k) for k in ("ULXMAP", "ULYMAP", "XDIM", "YDIM")]
    if insert is None or not code or any(v is None for v in values):
        return None
    x, y, dx, dy = values
    return CRS.from_user_input(code), Affine(dx, 0, x, 0, -dy, y)


@dataclass(frozen=True)
class Placement:
    """Where a component's pixels go, and which model said so (`source`)."""

    crs: CRS | None
    transform: Affine | None
    gcps: list[GroundControlPoint] | None
    source: str  # geotransform, rpc or gcps
    rpc: RPC | None = None


def tile_gcps(tile: Tile, offset: tuple[int, int]) -> list[GroundControlPoint] | None:
    """The tile's own GCPs in EPSG:4326, moved to the mosaic's pixel grid."""
    points, crs = tile.gcps
    if not points:
        return None
    xs, ys = [g.x for g in points], [g.y for g in points]
    if crs is not None and crs != CRS.from_epsg(4326):
        xs, ys = warp_transform(crs, "EPSG:4326", xs, ys)
    return [
        GroundControlPoint(row=g.row + offset[1], col=g.col + offset[0], x=x, y=y, z=g.z)
        for g, x, y in zip(points, xs, ys, strict=True)
    ]


def georeference(
    component: Component, tile: Tile, offset: tuple[int, int], size: tuple[int, int]
) -> Placement:
    """The tiles' map grid, else Geoposition_Insert, else GCPs from the RPC model, else the
    tiles' own GCPs (module docstring)."""
    if _usable(tile.crs):
        transform = tile.transform * Affine.translation(-offset[0], -offset[1])
        return Placement(tile.crs, transform, None, "geotransform")
    insert = insert_georeference(component.doc)
    if insert is not None:
        return Placement(*insert, None, "geotransform")
    rpc = rpc_model(component, tile if offset == (0, 0) else None)
    if rpc is not None:
        return Placement(None, None, rpc_gcps(rpc, *size), "rpc", rpc)
    gcps = tile_gcps(tile, offset)
    if gcps is not None and len(gcps) >= 3:
        return Placement(None, None, gcps, "gcps")
    raise IngestError(
        f"{component.href}: cannot be placed: no map CRS in its tiles, no "
        "Geoposition_Insert, no RPC model (RPC_*.XML or in the tiles) and no GCPs"
    )


# --- VRT ------------------------------------------------------------------------------


@dataclass
class VrtBand:
    """One VRT band: a SimpleSource per tile, (tile, source band, (x, y), (width, height))."""

    dtype: str
    nodata: float | None
    sources: list[tuple[Tile, int, tuple[int, int], tuple[int, int]]]
    description: str | None = None


@dataclass
class Mosaic:
    """One component's VRT: its size, placement and bands in file order."""

    width: int
    height: int
    crs: CRS | None
    transform: Affine | None
    gcps: list[GroundControlPoint] | None
    counts: list[int]  # bands per Data_Files group
    bands: list[VrtBand]  # in file order, group after group
    source: str = "geotransform"  # the model that placed it (Placement.source)
    rpc: RPC | None = None

    @property
    def grid_crs(self) -> CRS:
        """The CRS pixels are placed in (EPSG:4326 for GCPs)."""
        return self.crs if self.crs is not None else CRS.from_epsg(4326)

    @property
    def grid_transform(self) -> Affine:
        """The geotransform, or rio-tiler's affine fit of the GCPs."""
        return self.transform if self.transform is not None else from_gcps(self.gcps)

    @property
    def pixel_size(self) -> float:
        """Width of a pixel in CRS units (rotation included)."""
        return math.hypot(self.grid_transform.a, self.grid_transform.d)


def build_mosaic(component: Component) -> tuple[Mosaic, list[Group]]:
    """Open the tile headers and lay the component's tiles out as one raster."""
    groups = data_file_groups(component)
    dims = component.doc.find("Raster_Data/Raster_Dimensions")
    tiling = dims.find("Tile_Set/Regular_Tiling") if dims is not None else None
    overlap = (
        int(xmldoc.number(tiling, "OVERLAP_COL") or 0),
        int(xmldoc.number(tiling, "OVERLAP_ROW") or 0),
    )
    layouts = []
    for group in groups:
        tiles = {key: open_tile(href, component.href) for key, href in sorted(group.tiles.items())}
        cols, rows = tile_offsets(tiles, overlap, component.href)
        kinds = {(t.count, t.dtypes) for t in tiles.values()}
        if len(kinds) > 1:
            raise IngestError(f"{component.href}: tiles of one group differ in bands or type")
        layouts.append((tiles, cols, rows))
    extents = {
        (
            max(cols[c] + t.width for (_, c), t in tiles.items()),
            max(rows[r] + t.height for (r, _), t in tiles.items()),
        )
        for tiles, cols, rows in layouts
    }
    if len(extents) > 1:
        raise IngestError(f"{component.href}: its Data_Files groups cover different areas")
    width = int(xmldoc.number(dims, "NCOLS") or 0) or next(iter(extents))[0]
    height = int(xmldoc.number(dims, "NROWS") or 0) or next(iter(extents))[1]
    bands = []
    for group, (tiles, cols, rows) in zip(groups, layouts, strict=True):
        first = next(iter(tiles.values()))
        for b in range(first.count):
            sources = []
            for (r, c), tile in tiles.items():
                w, h = min(tile.width, width - cols[c]), min(tile.height, height - rows[r])
                if w > 0 and h > 0:
                    sources.append((tile, b + 1, (cols[c], rows[r]), (w, h)))
            bands.append(VrtBand(first.dtypes[b], group.nodata, sources))
    (row, col), anchor = next(iter(layouts[0][0].items()))
    offset = (layouts[0][1][col], layouts[0][2][row])
    place = georeference(component, anchor, offset, (width, height))
    counts = [next(iter(tiles.values())).count for tiles, _, _ in layouts]
    mosaic = Mosaic(
        width,
        height,
        place.crs,
        place.transform,
        place.gcps,
        counts,
        bands,
        place.source,
        place.rpc,
    )
    return mosaic, groups


def _number(value: float) -> str:
    """A number as GDAL writes it: integers without a fraction, floats in full."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def vrt_document(mosaic: Mosaic) -> bytes:
    """The VRT XML of a mosaic: a SimpleSource per tile per band, tile sizes given so GDAL
    need not open every tile to open the VRT."""
    root = ET.Element("VRTDataset", rasterXSize=str(mosaic.width), rasterYSize=str(mosaic.height))
    if mosaic.gcps is not None:
        gcp_list = ET.SubElement(root, "GCPList", Projection="EPSG:4326")
        for i, gcp in enumerate(mosaic.gcps, start=1):
            ET.SubElement(
                gcp_list,
                "GCP",
                Id=str(i),
                Pixel=repr(gcp.col),
                Line=repr(gcp.row),
                X=repr(gcp.x),
                Y=repr(gcp.y),
                Z=repr(gcp.z or 0.0),
            )
    else:
        ET.SubElement(root, "SRS").text = mosaic.crs.to_wkt()
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            repr(v) for v in mosaic.transform.to_gdal()
        )
    for index, band in enumerate(mosaic.bands, start=1):
        node = ET.SubElement(
            root, "VRTRasterBand", dataType=VRT_DATA_TYPES[band.dtype], band=str(index)
        )
        if band.description:
            ET.SubElement(node, "Description").text = band.description
        if band.nodata is not None:
            ET.SubElement(node, "NoDataValue").text = _number(band.nodata)
        for tile, source_band, (x, y), (w, h) in band.sources:
            source = ET.SubElement(node, "SimpleSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = tile.href
            ET.SubElement(source, "SourceBand").text = str(source_band)
            ET.SubElement(
                source,
                "SourceProperties",
                RasterXSize=str(tile.width),
                RasterYSize=str(tile.height),
                DataType=VRT_DATA_TYPES[tile.dtypes[source_band - 1]],
                BlockXSize=str(tile.block[0]),
                BlockYSize=str(tile.block[1]),
            )
            ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
            ET.SubElement(source, "DstRect", xOff=str(x), yOff=str(y), xSize=str(w), ySize=str(h))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def write_atomic(path: Path, content: bytes) -> None:
    """Write a file whole or not at all (readers never see half a VRT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


# --- the reader -----------------------------------------------------------------------


def _crs_text(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


class Dimap2Scene:
    """One DIMAP v2 scene, entered at a VOL_*.XML or DIM_*.XML (a GDAL path)."""

    def __init__(self, href: str):
        self.href = href

    @cached_property
    def _parts(self) -> tuple[list[Component], list[str]]:
        """Present components (panchromatic first) and the VOL paths of missing ones."""
        root = read_xml(self.href)
        listed = [] if root.find("Raster_Data") is not None else component_paths(root)
        if not listed:
            return [Component(self.href, root)], []
        components, missing = [], []
        for relative in listed:
            href = vsi.join(self.href, relative)
            if vsi.exists(href):
                components.append(Component(href, read_xml(href)))
            else:
                missing.append(relative)
        if not components:
            raise IngestError(
                f"{self.href}: none of its DIMAP components exists ({', '.join(missing)})"
            )
        components.sort(key=lambda c: 0 if (c.spectral or "").upper() in PAN_PROCESSING else 1)
        return components, missing

    def meta(self) -> SceneMeta:
        """Id, time, footprint, cloud cover and product from the XML documents only."""
        components, missing = self._parts
        properties = scene_properties(components)
        if missing:
            properties["tileserver:missing_components"] = list(missing)
        geometry, geometry_source = footprint(components)
        acquired, time_source = next(
            (found for found in map(acquisition_time, components) if found[0] is not None),
            (None, None),
        )
        provenance = {"geometry": geometry_source}
        if time_source is not None:
            provenance["datetime"] = time_source
        properties[PROVENANCE] = provenance
        return SceneMeta(
            id=scene_id(components, self.href),
            acquired=acquired,
            geometry=geometry,
            cloud_cover=cloud_cover(components),
            product_id=product_id(components),
            properties=properties,
        )

    def build(
        self, meta: SceneMeta, product_id: str, product: Product | None, vrt_path: Path
    ) -> tuple[Image, list[Band]]:
        """Write one VRT per component and describe the image and its bands."""
        if meta.acquired is None:
            raise IngestError(f"{self.href}: no acquisition time in its metadata; pass --datetime")
        components, missing = self._parts
        mosaics: list[Mosaic] = []
        bands: list[Band] = []
        for file_index, component in enumerate(components):
            mosaic, groups = build_mosaic(component)
            mosaics.append(mosaic)
            bands.extend(component_bands(component, mosaic, groups, file_index, bands))
        if product is not None:
            check_layout(product, bands, self.href)
        files: list[ImageFile] = []
        stats: dict[str, BandStatistics] = {}
        for file_index, mosaic in enumerate(mosaics):
            path = (
                vrt_path.with_name(f"{vrt_path.stem}_{file_index}.vrt") if file_index else vrt_path
            )
            own = [b for b in bands if b.file_index == file_index]
            for band, vrt_band in zip(own, mosaic.bands, strict=True):
                vrt_band.description = band.name
            write_atomic(path, vrt_document(mosaic))
            files.append(ImageFile(href=str(path)))
            found = image_statistics(str(path), list(range(1, len(own) + 1)), own[0].nodata)
            for band, band_stats in zip(own, found or [], strict=False):
                stats[band.name] = band_stats
                band.display_range = display_range(band_stats, band.data_range)
        finest = min(mosaics, key=lambda m: m.pixel_size)
        properties = dict(meta.properties)
        if missing:
            properties["tileserver:missing_components"] = list(missing)
        image = Image(
            name=safe_name(meta.id),
            product_id=product_id,
            acquired=meta.acquired,
            geometry=meta.geometry,
            cloud_cover=meta.cloud_cover,
            properties=properties,
            files=files,
            crs=_crs_text(finest.grid_crs),
            geotrans=tuple(finest.grid_transform.to_gdal()),
            width=finest.width,
            height=finest.height,
            band_stats=stats,
        )
        if product is not None and product.bands:
            return image, product.bands
        return image, bands


def component_bands(
    component: Component,
    mosaic: Mosaic,
    groups: list[Group],
    file_index: int,
    earlier: list[Band],
) -> list[Band]:
    """Band records of one component, in VRT order; names already taken by an earlier
    component get the file index appended."""
    doc = component.doc
    ids = [pair for group_ids in file_band_ids(groups, mosaic.counts, doc) for pair in group_ids]
    nbits = xmldoc.number(doc, "Raster_Data/Raster_Encoding/NBITS")
    unit = "degrees" if mosaic.grid_crs.is_geographic else "meters"
    resolution = Resolution(value=mosaic.pixel_size, unit=unit) if mosaic.pixel_size else None
    taken = {b.name for b in earlier}
    bands = []
    for index, ((band_id, label), vrt_band) in enumerate(zip(ids, mosaic.bands, strict=True)):
        data_type = NUMPY_TO_DATA_TYPE.get(vrt_band.dtype)
        if data_type is None:
            raise IngestError(f"{component.href}: unsupported pixel type {vrt_band.dtype}")
        data_range = _data_range(vrt_band.dtype, nbits)
        physical, physical_unit, levels = processing_levels(doc, band_id, data_range)
        name = band_name(band_id, index + 1)
        if name in taken:
            name = f"{name}_{file_index}"
        taken.add(name)
        bands.append(
            Band(
                name=name,
                description=label or band_id,
                type="spectral",
                data_type=data_type,
                nodata=vrt_band.nodata,
                data_range=data_range,
                physical_range=physical,
                physical_range_unit=physical_unit,
                resolution=resolution,
                file_index=file_index,
                band_index=index,
                processing_levels=levels,
                **wavelengths(doc, band_id),
            )
        )
    return bands


def _data_range(dtype: str, nbits: float | None) -> tuple[float, float]:
    """(0, 2**NBITS - 1) for integers, else the type's range."""
    kind = numpy.dtype(dtype)
    if kind.kind in "ui":
        info = numpy.iinfo(kind)
        if nbits and kind.kind == "u" and 0 < nbits <= info.bits:
            return (0, 2 ** int(nbits) - 1)
        return (info.min, info.max)
    return (0.0, 1.0)


def check_layout(product: Product, bands: list[Band], href: str) -> None:
    """Every band of the product must be in the scene, in the same file and position."""
    by_name = {b.name: b for b in bands}
    for expected in product.bands:
        found = by_name.get(expected.name)
        if found is None:
            raise IngestError(
                f"{href}: product '{product.id}' has band '{expected.name}' but the scene has "
                f"none (scene bands: {', '.join(by_name)})"
            )
        if (found.file_index, found.band_index) != (expected.file_index, expected.band_index):
            raise IngestError(
                f"{href}: band '{expected.name}' is at file {found.file_index}, band "
                f"{found.band_index} in the scene but at file {expected.file_index}, band "
                f"{expected.band_index} in product '{product.id}'"
            )
