"""SNAP BEAM-DIMAP products: a `.dim` XML header beside a `<name>.data/` folder of ENVI bands.

GDAL cannot open a `.dim` (SEMANTICS.md section 6), so an image is read through a VRT of raw
bands (VRTRawRasterBand: the big-endian samples of each `.data/<BAND_NAME>.img`, read in place
from a folder or a bucket). Types, nodata and scaling come from the `.dim`, never from the
ENVI headers (int8 is stored as ENVI Byte and uint32 as Int32). Map products carry a CRS and an
affine image-to-model transform; satellite-geometry products carry lat/lon tie-point grids,
which become the VRT's GCPs.

Times: PRODUCT_SCENE_RASTER_START/STOP_TIME; products without them (SNAP's NetCDF/CF
conversions, SAR and ENVISAT products) carry them as metadata attributes under
`Dataset_Sources` (TIME_ATTRIBUTES, the first pair found); two times make an interval
(start_datetime / end_datetime). Tie-point geocoding is found in its current place
(Geoposition/Geoposition_Points), BEAM 4's (Coordinate_Reference_System/
Geocoding_Tie_Point_Grids) and under a GCP geocoding's Original_Geocoding. The image's
`tileserver:provenance` names the source of its footprint and time.

GDAL >= 3.12 only opens raw sources beside or below the VRT unless
GDAL_VRT_RAWRASTERBAND_ALLOWED_SOURCE says otherwise (ALL, ONLY_REMOTE or a folder).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import tempfile
import xml.etree.ElementTree as ET  # builds the VRT only; untrusted XML goes through defusedxml
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy
import shapely
import shapely.affinity
from affine import Affine
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import from_gcps
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
    grid,
    grid_outline,
    image_statistics,
    numeric_or_none,
)
from tileserver.ingest.raster import parse_time as parse_iso_time  # BEAM's own is parse_time
from tileserver.ingest.scene import PROVENANCE, SceneMeta
from tileserver.opener import open_raster

ENVI_SIZES = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 12: 2, 13: 4, 14: 8, 15: 8}  # `data type` -> bytes
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
TIME = re.compile(
    r"^\s*(\d{1,2})-([A-Za-z]{3})-(\d{4})[ T]+(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*$"
)
# ENVISAT product type prefix -> instrument, for STAC `platform` / `instruments`
ENVISAT_INSTRUMENTS = {"MER_": "meris", "ASA_": "asar", "ATS_": "aatsr"}
FOOTPRINT_SEGMENTS = 16  # points per image edge, so footprints follow the projection
MAX_GCPS_PER_AXIS = 64  # larger tie-point grids are thinned for the VRT (the fit is affine)
GCP_CRS = "EPSG:4326"
# (start, end) MDATTR names under Dataset_Sources, by preference; matched case-insensitively
TIME_ATTRIBUTES = (
    ("time_coverage_start", "time_coverage_end"),  # NetCDF/CF global attributes
    ("first_line_time", "last_line_time"),  # SAR Abstracted_Metadata, ENVISAT SPH
    ("start_time", "stop_time"),
    ("start_time", "end_time"),
)
# where a tie-point geocoding names its lat/lon grids (current, BEAM 4, inside a GCP geocoding)
TIE_POINT_NAMES = (
    "Geoposition/Geoposition_Points",
    "Coordinate_Reference_System/Geocoding_Tie_Point_Grids",
    "Geoposition/Geoposition_Points/Original_Geocoding/Geoposition/Geoposition_Points",
)


def is_entry(href: str) -> bool:
    """Whether `href` is a BEAM-DIMAP header (its `<stem>.data/` folder belongs to it)."""
    return href.lower().endswith(".dim")


def parse_time(text: str) -> datetime:
    """A BEAM time like `01-FEB-2008 09:26:09.416160` (UTC), independent of the locale."""
    match = TIME.match(text)
    if not match or match.group(2).upper() not in MONTHS:
        raise ValueError(f"'{text}' is not a BEAM time (like 01-FEB-2008 09:26:09.416160)")
    day, month, year, hh, mm, ss, fraction = match.groups()
    return datetime(
        int(year),
        MONTHS.index(month.upper()) + 1,
        int(day),
        int(hh),
        int(mm),
        int(ss),
        int((fraction or "0")[:6].ljust(6, "0")),
        tzinfo=UTC,
    )


def _any_time(text: str) -> datetime | None:
    """A metadata time as BEAM (01-FEB-2008 09:26:09.416160) or ISO 8601 / CF writes it."""
    try:
        return parse_time(text)
    except ValueError:
        pass
    when = parse_iso_time(text) if text.strip() else None
    return when.astimezone(UTC) if when is not None else None


@dataclass(frozen=True)
class BandInfo:
    """One `Spectral_Band_Info` of the header: a band stored in `<name>.data/`."""

    index: int
    name: str  # BAND_NAME as written: the name of its ENVI files
    description: str | None
    data_type: str  # BEAM (= numpy) type name
    unit: str | None
    wavelength: float | None
    bandwidth: float | None
    factor: float
    offset: float
    log10: bool
    nodata: float | None  # raw value; None when NO_DATA_VALUE_USED is false
    kind: str  # catalog band type: spectral, mask (flags) or class (index coding)

    @property
    def scaled(self) -> bool:
        """Whether raw values differ from physical ones."""
        return self.log10 or (self.factor, self.offset) != (1.0, 0.0)


@dataclass(frozen=True)
class TiePointGrid:
    """A `Tie_Point_Grid_Info`: grid (x, y) sits at image pixel (offset + x * step)."""

    name: str
    ncols: int
    nrows: int
    offset_x: float
    offset_y: float
    step_x: float
    step_y: float

    def pixels(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        """Image (col, row) of every grid point, each shaped (nrows, ncols)."""
        y, x = numpy.mgrid[0 : self.nrows, 0 : self.ncols]
        return self.offset_x + x * self.step_x, self.offset_y + y * self.step_y


@dataclass(frozen=True)
class Header:
    """What the import needs from a `.dim`."""

    name: str
    product_type: str | None
    start: datetime | None
    stop: datetime | None
    time_source: str | None  # the element or attribute the times came from
    width: int
    height: int
    bands: tuple[BandInfo, ...]
    wkt: str | None
    image_to_model: tuple[float, ...] | None  # m00, m10, m01, m11, m02, m12
    lat: TiePointGrid | None
    lon: TiePointGrid | None
    mission: str | None

    @property
    def is_map(self) -> bool:
        """Map geocoding (CRS + affine) rather than satellite geometry (tie points)."""
        return self.wkt is not None and self.image_to_model is not None


@dataclass(frozen=True)
class Georeference:
    """Where the pixels go: a CRS and affine transform, and the GCPs they were fitted to."""

    crs: CRS
    transform: Affine
    gcps: tuple[GroundControlPoint, ...] = ()
    residual: float | None = None  # largest GCP distance from the affine fit, in CRS units


@dataclass(frozen=True)
class RawFile:
    """Where a band's samples are, as a VRTRawRasterBand reads them."""

    href: str
    offset: int
    byte_order: str  # MSB or LSB


class BeamDimapScene:
    """One BEAM-DIMAP product, located by the GDAL path of its `.dim`."""

    def __init__(self, href: str):
        self.href = href
        name = posixpath.basename(href) if href.startswith("/vsi") else Path(href).name
        self.stem = name[: -len(".dim")] if is_entry(name) else name
        self.data_dir = f"{self.stem}.data"

    def __repr__(self) -> str:
        return f"BeamDimapScene({self.href!r})"

    # -- the header --------------------------------------------------------------------------

    def _error(self, message: str) -> IngestError:
        return IngestError(f"{self.href}: {message}")

    def _read(self, href: str) -> bytes:
        """A metadata file's bytes; a missing or unreadable file is an IngestError."""
        try:
            return vsi.read_bytes(href)
        except vsi.StorageError as exc:
            raise IngestError(f"{self.href}: {exc}") from None

    def _exists(self, href: str) -> bool:
        try:
            return vsi.exists(href)
        except vsi.StorageError as exc:  # e.g. access denied: not the same as absent
            raise IngestError(f"{self.href}: {exc}") from None

    @cached_property
    def root(self) -> ET.Element:
        """The parsed `.dim` (defusedxml: entity expansion and external DTDs refused)."""
        try:
            root = fromstring(self._read(self.href))
        except (ParseError, DefusedXmlException) as exc:
            why = "XML entities are refused: " if isinstance(exc, DefusedXmlException) else ""
            raise self._error(f"not a valid BEAM-DIMAP XML document ({why}{exc})") from None
        if root.tag != "Dimap_Document":
            raise self._error(f"root element is <{root.tag}>, not <Dimap_Document>")
        return root

    def _number(self, element: ET.Element, path: str, default: float | None = None) -> float:
        text = xmldoc.text(element, path)
        if text is None:
            if default is None:
                raise self._error(f"missing {path}")
            return default
        try:
            return float(text)
        except ValueError:
            raise self._error(f"{path} '{text}' is not a number") from None

    def _integer(self, element: ET.Element, path: str) -> int:
        value = self._number(element, path)
        if not value.is_integer() or value < 0:
            raise self._error(f"{path} '{value}' is not a non-negative integer")
        return int(value)

    def _time(self, path: str) -> datetime | None:
        text = xmldoc.text(self.root, path)
        if text is None:
            return None
        try:
            return parse_time(text)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def _times(self) -> tuple[datetime | None, datetime | None, str | None]:
        """(start, stop, source): the Production times, else metadata attributes."""
        start = self._time("Production/PRODUCT_SCENE_RASTER_START_TIME")
        stop = self._time("Production/PRODUCT_SCENE_RASTER_STOP_TIME")
        if start or stop:
            return start, stop, f"PRODUCT_SCENE_RASTER_{'START' if start else 'STOP'}_TIME"
        found: dict[str, tuple[str, datetime]] = {}
        sources = self.root.find("Dataset_Sources")
        for attribute in sources.iter("MDATTR") if sources is not None else []:
            name = (attribute.get("name") or "").strip()
            key = name.lower()
            if key in found or not any(key in pair for pair in TIME_ATTRIBUTES):
                continue
            when = _any_time(attribute.text or "")
            if when is not None:
                found[key] = (name, when)
        for start_name, end_name in TIME_ATTRIBUTES:
            if start_name in found:
                end = found.get(end_name)
                return found[start_name][1], end[1] if end else None, found[start_name][0]
        return None, None, None

    def _band(self, info: ET.Element, width: int, height: int) -> BandInfo | None:
        """A stored band; None for virtual bands (an expression, no file)."""
        name = xmldoc.text(info, "BAND_NAME")
        if name is None:
            raise self._error("a Spectral_Band_Info has no BAND_NAME")
        if (
            xmldoc.text(info, "VIRTUAL_BAND") == "true"
            or xmldoc.text(info, "EXPRESSION") is not None
        ):
            return None
        if "/" in name or "\\" in name or name in (".", ".."):
            raise self._error(f"band name '{name}' is not a file name")
        data_type = (xmldoc.text(info, "DATA_TYPE") or "").lower()
        if data_type not in VRT_DATA_TYPES:  # BEAM's DATA_TYPE names are numpy's
            raise self._error(
                f"band '{name}' has unsupported DATA_TYPE '{data_type}' "
                f"(supported: {', '.join(VRT_DATA_TYPES)})"
            )
        for path, size in (("BAND_RASTER_WIDTH", width), ("BAND_RASTER_HEIGHT", height)):
            if xmldoc.text(info, path) is not None and self._integer(info, path) != size:
                raise self._error(
                    f"band '{name}' is not {width}x{height}: multi-size products are not "
                    "supported (resample them in SNAP first)"
                )
        nodata = None
        if xmldoc.text(info, "NO_DATA_VALUE_USED") == "true":
            nodata = _representable(self._number(info, "NO_DATA_VALUE", 0.0), data_type)
        is_flag = xmldoc.text(info, "FLAG_CODING_NAME") is not None or (
            numpy.dtype(data_type).kind in "iu" and "flag" in name.lower()
        )
        kind = "mask" if is_flag else "spectral"
        if xmldoc.text(info, "INDEX_CODING_NAME") is not None:
            kind = "class"
        wavelength = self._number(info, "BAND_WAVELEN", 0.0) or None
        bandwidth = self._number(info, "BANDWIDTH", 0.0) or None
        return BandInfo(
            index=self._integer(info, "BAND_INDEX"),
            name=name,
            description=xmldoc.text(info, "BAND_DESCRIPTION") or xmldoc.text(info, "DESCRIPTION"),
            data_type=data_type,
            unit=xmldoc.text(info, "PHYSICAL_UNIT"),
            wavelength=wavelength,
            bandwidth=bandwidth,
            factor=self._number(info, "SCALING_FACTOR", 1.0),
            offset=self._number(info, "SCALING_OFFSET", 0.0),
            log10=xmldoc.text(info, "LOG10_SCALED") == "true",
            nodata=nodata,
            kind=kind,
        )

    def _tie_point_grid(self, name: str) -> TiePointGrid:
        for info in self.root.iterfind("Tie_Point_Grids/Tie_Point_Grid_Info"):
            if xmldoc.text(info, "TIE_POINT_GRID_NAME") == name:
                break
        else:
            raise self._error(f"no Tie_Point_Grid_Info named '{name}'")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise self._error(f"tie-point grid name '{name}' is not a file name")
        grid_ = TiePointGrid(
            name=name,
            ncols=self._integer(info, "NCOLS"),
            nrows=self._integer(info, "NROWS"),
            offset_x=self._number(info, "OFFSET_X", 0.0),
            offset_y=self._number(info, "OFFSET_Y", 0.0),
            step_x=self._number(info, "STEP_X"),
            step_y=self._number(info, "STEP_Y"),
        )
        if grid_.ncols < 2 or grid_.nrows < 2 or grid_.step_x <= 0 or grid_.step_y <= 0:
            raise self._error(f"tie-point grid '{name}' needs 2x2 points and positive steps")
        return grid_

    @cached_property
    def header(self) -> Header:
        """The parsed header, checked: sizes, band types, geocoding."""
        root = self.root
        width = self._integer(root, "Raster_Dimensions/NCOLS")
        height = self._integer(root, "Raster_Dimensions/NROWS")
        if not width or not height:
            raise self._error(f"empty raster ({width}x{height})")
        bands = [
            band
            for info in root.iterfind("Image_Interpretation/Spectral_Band_Info")
            if (band := self._band(info, width, height)) is not None
        ]
        if not bands:
            raise self._error("no stored band in Image_Interpretation")
        # Bands without nodata first: GDAL reports band 1's nodata as the dataset's, and
        # rio-tiler masks that value in every band read without a nodata of its own.
        bands.sort(key=lambda b: (b.nodata is not None, b.index))
        names = [safe_name(b.name) for b in bands]
        if len(set(names)) != len(names):
            raise self._error(f"band names are not unique: {', '.join(names)}")
        transform = xmldoc.text(root, "Geoposition/IMAGE_TO_MODEL_TRANSFORM")
        image_to_model = None
        if transform is not None:
            try:
                image_to_model = tuple(float(v) for v in transform.split(","))
            except ValueError:
                image_to_model = ()
            if len(image_to_model) != 6:
                raise self._error(f"IMAGE_TO_MODEL_TRANSFORM '{transform}' is not 6 numbers")
        lat_name = lon_name = None
        for place in TIE_POINT_NAMES:
            lat_name = xmldoc.text(root, f"{place}/TIE_POINT_GRID_NAME_LAT")
            lon_name = xmldoc.text(root, f"{place}/TIE_POINT_GRID_NAME_LON")
            if lat_name and lon_name:
                break
        lat = self._tie_point_grid(lat_name) if lat_name and lon_name else None
        lon = self._tie_point_grid(lon_name) if lat_name and lon_name else None
        start, stop, time_source = self._times()
        header = Header(
            name=xmldoc.text(root, "Dataset_Id/DATASET_NAME") or self.stem,
            product_type=xmldoc.text(root, "Production/PRODUCT_TYPE"),
            start=start,
            stop=stop,
            time_source=time_source,
            width=width,
            height=height,
            bands=tuple(bands),
            wkt=xmldoc.text(root, "Coordinate_Reference_System/WKT"),
            image_to_model=image_to_model,
            lat=lat,
            lon=lon,
            mission=xmldoc.text(
                root, ".//MDElem[@name='Abstracted_Metadata']/MDATTR[@name='MISSION']"
            ),
        )
        if not header.is_map and header.lat is None and root.find(".//MAP_INFO") is not None:
            raise self._error(
                "BEAM 4 map geocoding (MAP_INFO without Coordinate_Reference_System/WKT and "
                "IMAGE_TO_MODEL_TRANSFORM) is not supported: re-save the product with SNAP"
            )
        if not header.is_map and header.lat is None:
            raise self._error(
                "no map geocoding (Coordinate_Reference_System/WKT + "
                "IMAGE_TO_MODEL_TRANSFORM) and no lat/lon tie-point grids: pixel-based "
                "geocoding is not supported"
            )
        return header

    # -- geocoding -----------------------------------------------------------------------------

    def _grid_values(self, grid_: TiePointGrid) -> numpy.ndarray:
        """A tie-point grid's float32 big-endian values, shaped (nrows, ncols)."""
        href = vsi.join(self.href, f"{self.data_dir}/tie_point_grids/{grid_.name}.img")
        raw = self._read(href)
        expected = grid_.nrows * grid_.ncols * 4
        if len(raw) != expected:
            raise IngestError(
                f"{href}: {len(raw)} bytes, expected {expected} for a {grid_.ncols}x"
                f"{grid_.nrows} float32 tie-point grid"
            )
        values = numpy.frombuffer(raw, dtype=">f4").reshape(grid_.nrows, grid_.ncols)
        if not numpy.isfinite(values).all():
            raise IngestError(f"{href}: tie-point grid holds non-finite values")
        return values.astype("float64")

    @cached_property
    def tie_points(self) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        """(col, row, lon, lat) of every tie point, longitudes unwrapped around the first."""
        header = self.header
        assert header.lat is not None and header.lon is not None
        if replace(header.lat, name="") != replace(header.lon, name=""):
            raise self._error("latitude and longitude tie-point grids do not share a grid")
        cols, rows = header.lat.pixels()
        lat = self._grid_values(header.lat)
        lon = self._grid_values(header.lon)
        lon = (lon - lon[0, 0] + 180.0) % 360.0 - 180.0 + lon[0, 0]  # no jump at +-180
        return cols, rows, lon, lat

    @cached_property
    def georeference(self) -> Georeference:
        """The CRS and transform tiles are rendered with (an affine fit for tie points)."""
        header = self.header
        if header.is_map:
            try:
                crs = CRS.from_wkt(header.wkt)
            except CRSError as exc:
                raise self._error(f"Coordinate_Reference_System/WKT is not a CRS ({exc})") from None
            m00, m10, m01, m11, m02, m12 = header.image_to_model
            return Georeference(crs, Affine.from_gdal(m02, m00, m01, m12, m10, m11))
        cols, rows, lon, lat = self.tie_points
        keep_y = _thin(lat.shape[0])
        keep_x = _thin(lat.shape[1])
        points = [(j, i) for j in keep_y for i in keep_x]
        gcps = tuple(
            GroundControlPoint(
                row=float(rows[j, i]),
                col=float(cols[j, i]),
                x=float(lon[j, i]),
                y=float(lat[j, i]),
                id=str(n),
            )
            for n, (j, i) in enumerate(points, start=1)
        )
        fit = from_gcps(gcps)  # what rio-tiler's Reader places a GCP dataset with
        x, y = fit * (numpy.array([g.col for g in gcps]), numpy.array([g.row for g in gcps]))
        residual = numpy.hypot(x - [g.x for g in gcps], y - [g.y for g in gcps]).max()
        return Georeference(CRS.from_string(GCP_CRS), fit, gcps, float(residual))

    def footprint(self) -> dict:
        """WGS84 GeoJSON of the image's outline, its edges densified."""
        header = self.header
        width, height = header.width, header.height
        segment = max(width, height) / FOOTPRINT_SEGMENTS
        if header.is_map:
            geo = self.georeference
            return grid_outline(geo.crs, geo.transform, width, height, FOOTPRINT_SEGMENTS)
        # through the centres of the edge pixels, as SNAP's geo-boundary: tie points are
        # pixel centres, so the outline is interpolated, not extrapolated beyond the grid
        inset = 0.5 if width > 1 and height > 1 else 0.0
        outline = shapely.box(inset, inset, width - inset, height - inset)
        _, _, lon, lat = self.tie_points
        pixels = shapely.get_coordinates(shapely.segmentize(outline, segment))
        lons = _bilinear(lon, header.lon, pixels[:, 0], pixels[:, 1]).round(7)
        lats = _bilinear(lat, header.lat, pixels[:, 0], pixels[:, 1]).round(7)
        polygon = shapely.Polygon(numpy.column_stack([lons, numpy.clip(lats, -90, 90)]))
        if not polygon.is_valid:
            polygon = shapely.make_valid(polygon)
        return json.loads(shapely.to_geojson(_cut_antimeridian(polygon)))

    # -- the scene reader protocol -------------------------------------------------------------

    def meta(self) -> SceneMeta:
        """Id, times and footprint from the `.dim` (and the lat/lon tie-point grids)."""
        header = self.header
        properties: dict = {"beam:product_type": header.product_type}
        if header.start and header.stop:  # STAC: an interval has both ends or none
            properties["start_datetime"] = header.start.isoformat()
            properties["end_datetime"] = header.stop.isoformat()
        provenance = {"geometry": "geotransform" if header.is_map else "tie_point_grids"}
        if header.time_source:
            provenance["datetime"] = header.time_source
        properties[PROVENANCE] = provenance
        if header.mission:
            properties["platform"] = header.mission.lower()
        prefix = (header.product_type or "")[:4].upper()
        if prefix in ENVISAT_INSTRUMENTS:
            properties.setdefault("platform", "envisat")
            properties["instruments"] = [ENVISAT_INSTRUMENTS[prefix]]
        return SceneMeta(
            id=header.name,
            acquired=header.start or header.stop,
            geometry=self.footprint(),
            cloud_cover=None,
            product_id=(
                safe_name(header.product_type).lower() if header.product_type else "beam-dimap"
            ),
            properties={k: v for k, v in properties.items() if v is not None},
        )

    def _raw_file(self, band: BandInfo) -> RawFile:
        """The band's `.img`, checked against its ENVI header when there is one."""
        img = vsi.join(self.href, f"{self.data_dir}/{band.name}.img")
        if not self._exists(img):
            raise self._error(f"band '{band.name}' has no data file {img}")
        hdr = img[: -len(".img")] + ".hdr"
        envi = _envi_header(self._read(hdr).decode("latin-1")) if self._exists(hdr) else {}
        size = numpy.dtype(band.data_type).itemsize
        try:
            offset = int(envi.get("header offset", 0))
            code = int(envi.get("data type", 0))
            byte_order = int(envi.get("byte order", 1))
            samples = int(envi.get("samples", self.header.width))
            lines = int(envi.get("lines", self.header.height))
        except ValueError as exc:
            raise IngestError(f"{hdr}: invalid ENVI header ({exc})") from None
        if code and ENVI_SIZES.get(code) != size:
            raise IngestError(
                f"{hdr}: ENVI data type {code} does not hold the .dim's {band.data_type}"
            )
        if (samples, lines) != (self.header.width, self.header.height):
            raise IngestError(
                f"{hdr}: {samples}x{lines} samples, the .dim says "
                f"{self.header.width}x{self.header.height}"
            )
        needed = offset + self.header.width * self.header.height * size
        if not img.startswith("/vsi") and os.path.getsize(img) < needed:
            raise IngestError(f"{img}: truncated ({os.path.getsize(img)} of {needed} bytes)")
        return RawFile(img, offset, "LSB" if byte_order == 0 else "MSB")

    def _statistics(
        self, vrt: str, bands: list[BandInfo], nodata: list[float | None]
    ) -> list[BandStatistics] | None:
        """Statistics per band, read in groups of one type (rasterio reads one type at once)."""
        groups: dict[tuple, list[int]] = {}
        for i, band in enumerate(bands):
            groups.setdefault((band.data_type, nodata[i]), []).append(i)
        result: list[BandStatistics | None] = [None] * len(bands)
        for (_, group_nodata), positions in groups.items():
            stats = image_statistics(vrt, [i + 1 for i in positions], group_nodata)
            if stats is None:
                return None
            for i, value in zip(positions, stats, strict=True):
                result[i] = value
        return result  # type: ignore[return-value]

    def build(
        self, meta: SceneMeta, product_id: str, product: Product | None, vrt_path: Path
    ) -> tuple[Image, list[Band]]:
        """Write the VRT, then the image record and the bands a new product would get."""
        header = self.header
        if product is not None:
            self._check_layout(product)
        files = [self._raw_file(band) for band in header.bands]
        geo = self.georeference
        write_vrt(vrt_path, vrt_xml(header, files, geo))
        if header.is_map:
            with open_raster(str(vrt_path)) as src:
                placement = grid(src)
        else:
            placement = {
                "crs": GCP_CRS,
                "geotrans": tuple(geo.transform.to_gdal()),
                "width": header.width,
                "height": header.height,
            }
        nodata = [b.nodata for b in header.bands]
        for band in product.bands if product is not None else []:
            nodata[band.band_index] = band.nodata  # the nodata tiles will be read with
        stats = self._statistics(str(vrt_path), list(header.bands), nodata)
        unit = "degrees" if geo.crs.is_geographic else "meters"
        pixel = math.hypot(geo.transform.a, geo.transform.d)
        resolution = Resolution(value=pixel, unit=unit) if pixel > 0 else None
        bands = (
            product.bands
            if product is not None
            else [
                catalog_band(info, i, stats[i] if stats else None, resolution)
                for i, info in enumerate(header.bands)
            ]
        )
        properties = dict(meta.properties)
        if geo.residual is not None:
            properties["tileserver:gcp_residual"] = geo.residual
        image = Image(
            name=safe_name(meta.id),
            product_id=product_id,
            acquired=meta.acquired,
            geometry=meta.geometry,
            cloud_cover=None,
            properties=properties,
            files=[ImageFile(href=str(vrt_path))],
            band_stats={b.name: stats[b.band_index] for b in bands} if stats else {},
            **placement,
        )
        return image, bands

    def _check_layout(self, product: Product) -> None:
        """A scene fits a product when each product band is the scene band at its position."""
        scene = self.header.bands
        for band in product.bands:
            where = f"product '{product.id}' expects band '{band.name}' at position"
            if band.file_index != 0 or band.band_index >= len(scene):
                raise self._error(
                    f"{where} {band.band_index} (file {band.file_index}), the scene has "
                    f"{len(scene)} band(s): {', '.join(b.name for b in scene)}"
                )
            found = scene[band.band_index]
            if safe_name(found.name) != band.name:
                raise self._error(f"{where} {band.band_index}, the scene has '{found.name}'")
            found_type = NUMPY_TO_DATA_TYPE[found.data_type]
            if found_type != band.data_type:
                raise self._error(
                    f"band '{band.name}' is {found.data_type} ({found_type}) in the scene, "
                    f"{band.data_type} in product '{product.id}'"
                )


# -- bands ----------------------------------------------------------------------------------


def _representable(value: float, data_type: str) -> float | None:
    """`value` when the type can hold it (else no pixel can equal it: no nodata)."""
    dtype = numpy.dtype(data_type)
    if dtype.kind == "f":
        return value
    info = numpy.iinfo(dtype)
    return value if value.is_integer() and info.min <= value <= info.max else None


def physical(value: float, band: BandInfo) -> float:
    """A raw value as SNAP shows it: raw * factor + offset, then 10 ** x when log10-scaled."""
    linear = value * band.factor + band.offset
    return 10.0 ** min(linear, 300.0) if band.log10 else linear


def _physical_range(values: tuple[float, float], band: BandInfo) -> tuple[float, float]:
    lo, hi = sorted((physical(values[0], band), physical(values[1], band)))
    return lo, hi


def catalog_band(
    info: BandInfo, position: int, stats: BandStatistics | None, resolution: Resolution | None
) -> Band:
    """The catalog band for a header band at `position` in the VRT.

    Integer data ranges are the BEAM type's range (int8: -128..127 though the catalog type is
    Int16), float ranges come from the statistics; the display range is the 2..98 percentile
    stretch. A "physical" processing level converts raw values the way SNAP does.
    """
    dtype = numpy.dtype(info.data_type)
    data_type = NUMPY_TO_DATA_TYPE[info.data_type]
    if dtype.kind in "iu":
        limits = numpy.iinfo(dtype)
        data_range: tuple[float, float] = (int(limits.min), int(limits.max))
    elif stats is not None and stats.max >= stats.min and stats.valid_percent:
        data_range = (stats.min, stats.max)
    else:
        data_range = (0.0, 1.0)
    stretch = display_range(stats, data_range) if info.kind == "spectral" else data_range
    physical_range = _physical_range(data_range, info) if info.scaled else None
    levels = None
    if info.kind == "spectral":
        levels = {"physical": _physical_level(info, data_type, data_range, stretch)}
    return Band(
        name=safe_name(info.name),
        description=info.description,
        type=info.kind,  # type: ignore[arg-type]
        data_type=data_type,
        nodata=numeric_or_none(info.nodata),
        data_range=data_range,
        display_range=stretch,
        physical_range=physical_range,
        physical_range_unit=info.unit,
        resolution=resolution,
        file_index=0,
        band_index=position,
        wavelength_nm_center=info.wavelength,
        wavelength_nm_fwhm=info.bandwidth,
        processing_levels=levels,
    )


def _physical_level(
    info: BandInfo,
    data_type: str,
    data_range: tuple[float, float],
    stretch: tuple[float, float],
) -> list[ProcessingStep]:
    """Steps to physical values: linear (factor, offset), then pow10 for log10 bands.

    Unscaled bands get one identity step so any mix of bands can ask for this level.
    """
    if not info.scaled:
        return [
            ProcessingStep(
                function=None,
                data_type=data_type,  # type: ignore[arg-type]
                data_range=data_range,
                display_range=stretch,
                physical_range=data_range,
                physical_range_unit=info.unit,
            )
        ]
    physical_range = _physical_range(data_range, info)
    wide = numpy.dtype(info.data_type).itemsize >= 4 and info.data_type != "float32"
    huge = max(abs(v) for v in physical_range) > numpy.finfo("float32").max
    last = ProcessingStep(
        function="pow10" if info.log10 else "linear",
        parameter=None if info.log10 else [info.factor, info.offset],
        data_type="Float64" if wide or huge else "Float32",
        data_range=physical_range,
        display_range=_physical_range(stretch, info),
        physical_range=physical_range,
        physical_range_unit=info.unit,
    )
    if info.log10:
        return [ProcessingStep(function="linear", parameter=[info.factor, info.offset]), last]
    return [last]


# -- files ------------------------------------------------------------------------------------


def _envi_header(text: str) -> dict[str, str]:
    """`key = value` pairs of an ENVI header (keys lowercased; `{...}` values may span lines)."""
    values: dict[str, str] = {}
    for match in re.finditer(r"^\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)", text, re.M):
        values[match.group(1).lower()] = match.group(2).strip()
    return values


def _thin(count: int) -> list[int]:
    """At most MAX_GCPS_PER_AXIS indexes of `count`, evenly spread, first and last kept."""
    if count <= MAX_GCPS_PER_AXIS:
        return list(range(count))
    return sorted({round(v) for v in numpy.linspace(0, count - 1, MAX_GCPS_PER_AXIS)})


def _bilinear(
    values: numpy.ndarray, grid_: TiePointGrid, x: numpy.ndarray, y: numpy.ndarray
) -> numpy.ndarray:
    """Tie-point values at image pixels (x, y), extrapolated beyond the grid, as SNAP does."""
    gx = (x - grid_.offset_x) / grid_.step_x
    gy = (y - grid_.offset_y) / grid_.step_y
    i = numpy.clip(numpy.floor(gx), 0, grid_.ncols - 2).astype(int)
    j = numpy.clip(numpy.floor(gy), 0, grid_.nrows - 2).astype(int)
    u, v = gx - i, gy - j
    top = values[j, i] * (1 - u) + values[j, i + 1] * u
    bottom = values[j + 1, i] * (1 - u) + values[j + 1, i + 1] * u
    return top * (1 - v) + bottom * v


def _cut_antimeridian(geom: shapely.Geometry) -> shapely.Geometry:
    """Counter-clockwise polygons inside -180..180, cut where unwrapped longitudes pass +-180."""
    minx, _, maxx, _ = geom.bounds
    pieces = [geom]
    if minx < -180 or maxx > 180:
        world = shapely.box(-180, -90, 180, 90)
        pieces = [
            shapely.affinity.translate(geom, xoff=shift).intersection(world)
            for shift in (-360.0, 0.0, 360.0)
        ]
    polygons = [
        orient(p)
        for piece in pieces
        for p in getattr(piece, "geoms", [piece])
        if isinstance(p, shapely.Polygon) and not p.is_empty
    ]
    return shapely.MultiPolygon(polygons) if len(polygons) > 1 else polygons[0]


def _number_text(value: float, data_type: str) -> str:
    """A value as GDAL reads it back exactly (integers without '.0')."""
    if numpy.dtype(data_type).kind in "iu" and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def vrt_xml(header: Header, files: list[RawFile], geo: Georeference) -> str:
    """The VRT: one VRTRawRasterBand per header band, placed by geotransform or GCPs."""
    root = ET.Element("VRTDataset", rasterXSize=str(header.width), rasterYSize=str(header.height))
    if geo.gcps:
        gcp_list = ET.SubElement(
            root, "GCPList", Projection=GCP_CRS, dataAxisToSRSAxisMapping="2,1"
        )
        for gcp in geo.gcps:
            ET.SubElement(
                gcp_list,
                "GCP",
                Id=str(gcp.id),
                Pixel=repr(gcp.col),
                Line=repr(gcp.row),
                X=repr(gcp.x),
                Y=repr(gcp.y),
            )
    else:
        ET.SubElement(root, "SRS").text = geo.crs.to_wkt()  # VRT default: x = east
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            repr(float(v)) for v in geo.transform.to_gdal()
        )
    for number, (band, raw) in enumerate(zip(header.bands, files, strict=True), start=1):
        element = ET.SubElement(
            root,
            "VRTRasterBand",
            dataType=VRT_DATA_TYPES[band.data_type],
            band=str(number),
            subClass="VRTRawRasterBand",
        )
        ET.SubElement(element, "Description").text = band.name
        if band.nodata is not None:
            ET.SubElement(element, "NoDataValue").text = _number_text(band.nodata, band.data_type)
        ET.SubElement(element, "SourceFilename", relativeToVRT="0").text = raw.href
        size = numpy.dtype(band.data_type).itemsize
        ET.SubElement(element, "ImageOffset").text = str(raw.offset)
        ET.SubElement(element, "PixelOffset").text = str(size)
        ET.SubElement(element, "LineOffset").text = str(size * header.width)
        ET.SubElement(element, "ByteOrder").text = raw.byte_order
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_vrt(path: Path, text: str) -> None:
    """Write atomically: a tile request never opens a half-written VRT."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
