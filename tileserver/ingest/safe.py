"""Sentinel-2 L1C and L2A products in SAFE format: folders and zip archives, read in place.

A product is entered at its metadata document at the root of the `.SAFE` folder
(`MTD_MSIL1C.xml` / `MTD_MSIL2A.xml`; before December 2016 `S2A_OPER_MTD_SAFL1C_*.xml`) or at
a `.zip` holding one (as downloaded from the Copernicus Data Space), whose members GDAL reads
through `/vsizip/`. Each granule (`GRANULE/*`, one in compact products, several in older
ones) becomes one image; each band is one file of it, the JPEG2000 as delivered, at its own
resolution.

Rules the import and users rely on:

- Image name: the product name (`S2B_MSIL2A_20240601T103629_N0510_R008_T32TPS_...`) for a
  single-granule product, else the granule identifier (`S2A_OPER_MSI_L1C_TL_..._N02.01`).
- Product: `sentinel-2-l1c` / `sentinel-2-l2a`, whatever the processing baseline
  (harmonised, as the public "harmonized" Sentinel-2 collections): a product's bands hold
  one conversion, reflectance = (DN + CANONICAL_OFFSET) / CANONICAL_QUANTIFICATION =
  (DN - 1000) / 10000, the offsets baseline 04.00 introduced (RADIO_ADD_OFFSET for L1C,
  BOA_ADD_OFFSET for L2A). The processing level `toa_reflectance` (L1C) /
  `surface_reflectance` (L2A) and the band's physical range say so, so `scaling=physical`
  gives reflectance too; `raw` gives the harmonised DN. Nodata 0.
- A band whose own offset differs (0 before 04.00, where the document lists none) is read
  through a VRT the server writes (DATA_DIR/vrt/<product>/<image>_<band>.vrt) that adds
  the difference (+1000 before 04.00) to every valid DN: nodata 0 stays 0, sums above 65535
  clamp to 65535. Other bands open their JPEG2000 directly. A scene with another
  quantification value, or an offset below the canonical one (its DN would have to go
  down), is refused; so is a scene for a product whose conversion is not the canonical one
  (a product created otherwise).
- Time: the granule's SENSING_TIME, else PRODUCT_START_TIME. Cloud cover: the granule's
  CLOUDY_PIXEL_PERCENTAGE, else the product's Cloud_Coverage_Assessment. Footprint: the
  granule's tile (Tile_Geocoding) in WGS84, cut to the product's Product_Footprint.
- Paths the documents name must stay inside the SAFE; a zip with a member leaving the
  archive (`..`, absolute) is refused whole; documents above MAX_XML_BYTES are not read.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET  # builds VRTs; documents are parsed by xmldoc
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
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
from tileserver.ingest.dimap2 import check_layout, write_atomic
from tileserver.ingest.raster import (
    VRT_DATA_TYPES,
    IngestError,
    display_range,
    file_size,
    image_statistics,
    parse_time,
)
from tileserver.ingest.scene import SceneMeta
from tileserver.opener import open_raster

MAX_XML_BYTES = 16 * 1024 * 1024  # product and tile documents are kilobytes to a few MB
MAX_ZIP_MEMBERS = 100_000
PRODUCT_DOCUMENT = re.compile(
    r"^(?:MTD_MSIL(?:1C|2A)|S2[A-D]_[A-Z]{4}_MTD_SAFL(?:1C|2A)(?:_.*)?)\.xml$", re.IGNORECASE
)
ROOT = re.compile(r"^Level-(1C|2Ap?)_(User_Product|Tile_ID)$")
BAND_IN_NAME = re.compile(r"_(B0[1-9]|B1[0-2]|B8A|SCL|AOT|WVP)(?:_(10|20|60)m)?$")
TILE_IN_NAME = re.compile(r"(?:^|_)T(\d{2}[C-X][A-Z]{2})(?:_|$)")
ORBIT_IN_NAME = re.compile(r"_A(\d{6})_")

# ESA's band_id numbering in the product document, and the L1C band resolutions
SPECTRAL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10")
SPECTRAL += ("B11", "B12")
NATIVE_RESOLUTION = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B01": 60, "B09": 60}
NATIVE_RESOLUTION |= {"B10": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20}
NATIVE_RESOLUTION |= {"B11": 20, "B12": 20}
EXTRA_BANDS = ("SCL", "AOT", "WVP")  # L2A only, after the spectral bands
LEVELS = {"L1C": "toa_reflectance", "L2A": "surface_reflectance"}
# every image of a product converts as baseline 04.00 and later do (module docstring)
CANONICAL_OFFSET = -1000.0
CANONICAL_QUANTIFICATION = 10000.0

# Scene classification (SEMANTICS.md section 3): value, label, colour
SCL_CLASSES = [
    (0, "no_data", None),
    (1, "saturated_or_defective", "ff0000"),
    (2, "dark_area_pixels", "2f2f2f"),
    (3, "cloud_shadows", "643200"),
    (4, "vegetation", "00a000"),
    (5, "not_vegetated", "ffe65a"),
    (6, "water", "0000ff"),
    (7, "unclassified", "808080"),
    (8, "cloud_medium_probability", "c0c0c0"),
    (9, "cloud_high_probability", "ffffff"),
    (10, "thin_cirrus", "64c8ff"),
    (11, "snow", "ff96ff"),
]


def scl_legend() -> tuple[list[tuple[int, int, int, int]], list[str | None]]:
    """The SCL colormap (transparent for no data) and class labels, by class value."""
    colormap = [(0, 0, 0, 0)] * len(SCL_CLASSES)
    for value, _, color in SCL_CLASSES:
        if color:
            colormap[value] = (*bytes.fromhex(color), 255)
    return colormap, [label for _, label, _ in SCL_CLASSES]


def is_entry(href: str) -> bool:
    """Whether a listed file is a SAFE product document (its folder belongs to it)."""
    return bool(PRODUCT_DOCUMENT.match(posixpath.basename(href)))


def is_archive(href: str) -> bool:
    """Whether a listed file is a zip archive that may hold a SAFE product."""
    return href.lower().endswith(".zip")


# --- documents --------------------------------------------------------------------------


def read_document(href: str) -> ET.Element:
    """A SAFE metadata document's root (namespaces dropped); IngestError names the file."""
    try:
        data = vsi.read_bytes(href, limit=MAX_XML_BYTES)
    except vsi.StorageError as exc:
        raise IngestError(f"cannot read Sentinel-2 document {href}: {exc}") from exc
    root = xmldoc.parse(data, href, "Sentinel-2 metadata document")
    if not ROOT.match(root.tag):
        raise IngestError(f"{href}: not a Sentinel-2 L1C/L2A document (root <{root.tag}>)")
    return root


def inside(root: str, relative: str, named_by: str) -> str:
    """`relative` (a path a document names) joined to the SAFE folder `root`; IngestError
    when it would leave the folder (`..`, absolute, another /vsi handler, a backslash)."""
    parts = relative.split("/")
    if (
        not relative
        or relative.startswith("/")
        or "\\" in relative
        or any(p in ("", ".", "..") for p in parts)
        or ":" in parts[0]
    ):
        raise IngestError(f"{named_by} names '{relative[:200]}', outside the product: refused")
    joined = f"{root.rstrip('/')}/{relative}"
    if not root.startswith("/vsi"):
        real, base = Path(joined).resolve(), Path(root).resolve()
        if not real.is_relative_to(base):
            raise IngestError(f"{named_by} names '{relative[:200]}', outside the product: refused")
    return joined


@dataclass(frozen=True)
class Granule:
    """One granule of a product: its identifiers, folder, tile document and band files."""

    identifier: str
    datastrip: str | None
    folder: str  # GDAL path of GRANULE/<name>
    document: str  # GDAL path of its MTD_TL.xml (older: S2A_OPER_MTD_L1C_TL_*.xml)
    files: dict[str, tuple[str, int]]  # band -> (GDAL path of its JP2, resolution m)


class SafeProduct:
    """A SAFE product's document and granules, located by the GDAL path of the document."""

    def __init__(self, href: str):
        self.href = href
        self.root = vsi.parent(href)
        self.doc = read_document(href)

    @property
    def info(self) -> ET.Element | None:
        """General_Info/Product_Info."""
        return self.doc.find("General_Info/Product_Info")

    @property
    def level(self) -> str:
        """L1C or L2A."""
        return "L1C" if ROOT.match(self.doc.tag).group(1) == "1C" else "L2A"  # type: ignore[union-attr]

    @property
    def baseline(self) -> str | None:
        """PROCESSING_BASELINE as written (e.g. 05.09)."""
        return xmldoc.text(self.info, "PROCESSING_BASELINE")

    @property
    def name(self) -> str:
        """The product name: PRODUCT_URI without .SAFE, else the folder's."""
        uri = xmldoc.text(self.info, "PRODUCT_URI") or posixpath.basename(self.root.rstrip("/"))
        return re.sub(r"\.SAFE$", "", uri, flags=re.IGNORECASE)

    def characteristics(self) -> ET.Element | None:
        """General_Info/Product_Image_Characteristics."""
        return self.doc.find("General_Info/Product_Image_Characteristics")

    def quantification(self, kind: str = "BOA") -> float:
        """QUANTIFICATION_VALUE (L1C) or <kind>_QUANTIFICATION_VALUE (L2A), 10000 when absent
        (1000 for AOT and WVP)."""
        chars = self.characteristics()
        default = 10000.0 if kind == "BOA" else 1000.0
        if chars is None:
            return default
        if self.level == "L1C":
            value = xmldoc.number(chars, "QUANTIFICATION_VALUE")
        else:
            node = next(
                (n for n in chars.iter() if str(n.tag).endswith(f"{kind}_QUANTIFICATION_VALUE")),
                None,
            )
            value = xmldoc.number(node, ".") if node is not None else None
        return value if value and value > 0 else default

    def offsets(self) -> dict[str, float]:
        """RADIO_ADD_OFFSET / BOA_ADD_OFFSET per band name (band_id 0..12), where listed."""
        tag = "RADIO_ADD_OFFSET" if self.level == "L1C" else "BOA_ADD_OFFSET"
        chars = self.characteristics()
        found: dict[str, float] = {}
        for node in chars.iter(tag) if chars is not None else []:
            try:
                index, value = int(node.get("band_id", "")), float((node.text or "").strip())
            except ValueError:
                continue
            if 0 <= index < len(SPECTRAL):
                found[SPECTRAL[index]] = value
        return found

    def granules(self) -> list[Granule]:
        """Every granule the document lists, with its band files (module docstring)."""
        lists = self.doc.findall("General_Info/Product_Info/Product_Organisation/Granule_List")
        nodes = [g for gl in lists for g in (*gl.findall("Granule"), *gl.findall("Granules"))]
        if not nodes:
            raise IngestError(f"{self.href}: no granule listed (Granule_List)")
        return [self._granule(node) for node in nodes]

    def _granule(self, node: ET.Element) -> Granule:
        identifier = (node.get("granuleIdentifier") or "").strip()
        files: dict[str, tuple[str, int]] = {}
        if node.find("IMAGE_FILE") is not None:  # compact: paths from the SAFE root
            paths = [(n.text or "").strip() for n in node.iterfind("IMAGE_FILE")]
            for path in paths:
                inside(self.root, path, self.href)
            folders = {p.split("/")[1] for p in paths if p.startswith("GRANULE/") and "/" in p[8:]}
            if len(folders) != 1:
                raise IngestError(f"{self.href}: granule {identifier} has no single GRANULE folder")
            folder = inside(self.root, f"GRANULE/{folders.pop()}", self.href)
            document = f"{folder}/MTD_TL.xml"
        else:  # older naming: file stems in GRANULE/<identifier>/IMG_DATA[/R10m]
            folder = inside(self.root, f"GRANULE/{identifier}", self.href)
            stem = re.sub(r"_N\d{2}\.\d{2}$", "", identifier).replace("_MSI_", "_MTD_", 1)
            document = f"{folder}/{stem}.xml"
            paths = []
            for image_id in ((n.text or "").strip() for n in node.iterfind("IMAGE_ID")):
                res = BAND_IN_NAME.search(image_id)
                sub = f"R{res.group(2)}m/" if res and res.group(2) else ""
                paths.append(f"GRANULE/{identifier}/IMG_DATA/{sub}{image_id}")
        for path in paths:
            match = BAND_IN_NAME.search(path)
            if match is None:
                continue  # TCI, previews
            band = match.group(1)
            if self.level == "L1C" and band in EXTRA_BANDS:
                continue
            resolution = int(match.group(2)) if match.group(2) else NATIVE_RESOLUTION.get(band)
            if resolution is None:
                continue
            if band not in files or resolution < files[band][1]:
                files[band] = (inside(self.root, f"{path}.jp2", self.href), resolution)
        if not files:
            raise IngestError(f"{self.href}: granule {identifier} lists no band file")
        datastrip = (node.get("datastripIdentifier") or "").strip() or None
        return Granule(identifier or posixpath.basename(folder), datastrip, folder, document, files)

    def footprint(self) -> Polygon | None:
        """Product_Footprint's EXT_POS_LIST (lat lon pairs) as a lon/lat polygon."""
        text = xmldoc.text(self.doc, "Geometric_Info/Product_Footprint/Product_Footprint/"
                     "Global_Footprint/EXT_POS_LIST")  # fmt: skip
        try:
            values = [float(v) for v in (text or "").split()]
        except ValueError:
            return None
        points = [(values[i + 1], values[i]) for i in range(0, len(values) - 1, 2)]
        if len(set(points)) < 3:
            return None
        polygon = shapely.make_valid(Polygon(points))
        return polygon if not polygon.is_empty and polygon.area > 0 else None


def product_entries(href: str) -> list[str]:
    """GDAL paths of the product documents an entry holds: the document itself, or those at
    the root or in the top folder of a zip (IngestError for a zip leaving itself)."""
    if not is_archive(href):
        return [href]
    try:
        with vsi.open_zip(href) as archive:
            infos = archive.infolist()
    except vsi.StorageError as exc:
        raise IngestError(str(exc)) from exc
    if len(infos) > MAX_ZIP_MEMBERS:
        raise IngestError(f"{href}: more than {MAX_ZIP_MEMBERS} members, not read")
    documents = []
    for info in infos:
        name = info.filename
        parts = name.rstrip("/").split("/")
        if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0]:
            raise IngestError(f"{href}: member '{name[:200]}' leaves the archive: refused")
        if len(parts) <= 2 and is_entry(name):
            documents.append(f"/vsizip/{{{href}}}/{name}")
    if not documents:
        raise IngestError(
            f"{href}: no Sentinel-2 product document (MTD_MSIL1C.xml, MTD_MSIL2A.xml) in the "
            "archive"
        )
    return documents


def product_scenes(href: str) -> list[SafeScene]:
    """One scene per granule of every product an entry (document or zip) holds."""
    scenes = []
    for document in product_entries(href):
        product = SafeProduct(document)
        granules = product.granules()
        for granule in granules:
            scenes.append(SafeScene(product, granule, single=len(granules) == 1))
    return scenes


# --- one granule ------------------------------------------------------------------------


def _tile_box(tile: ET.Element, href: str) -> tuple[CRS, Polygon, int]:
    """The tile's CRS, its extent in that CRS and its finest resolution (Tile_Geocoding)."""
    geocoding = tile.find("Geometric_Info/Tile_Geocoding")
    code = xmldoc.text(geocoding, "HORIZONTAL_CS_CODE")
    try:
        crs = CRS.from_user_input(code) if code else None
    except CRSError:
        crs = None
    if crs is None:
        raise IngestError(f"{href}: no usable HORIZONTAL_CS_CODE, the granule cannot be placed")
    best = None
    for position in geocoding.iterfind("Geoposition") if geocoding is not None else []:
        res = position.get("resolution", "")
        size = geocoding.find(f"Size[@resolution='{res}']")
        values = [xmldoc.number(position, k) for k in ("ULX", "ULY", "XDIM", "YDIM")]
        rows, cols = xmldoc.number(size, "NROWS"), xmldoc.number(size, "NCOLS")
        if all(v is not None for v in values) and rows and cols and res.isdecimal():
            if best is None or int(res) < best[1]:
                x, y, dx, dy = values
                best = ((x, y, x + cols * dx, y + rows * dy), int(res))  # type: ignore[operator]
    if best is None:
        raise IngestError(f"{href}: no Geoposition with its Size, the granule cannot be placed")
    (x0, y0, x1, y1), res = best
    return crs, box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), res


def granule_footprint(crs: CRS, extent: Polygon, product_area: Polygon | None) -> dict:
    """The tile's extent in WGS84 (edges densified), cut to the product's footprint when the
    two overlap: a valid GeoJSON Polygon or MultiPolygon."""
    dense = shapely.segmentize(extent, max_segment_length=extent.length / 64)
    tile = shape(transform_geom(crs, "EPSG:4326", mapping(dense), precision=7))
    tile = shapely.make_valid(tile)
    area = tile
    if product_area is not None and tile.intersects(product_area):
        cut = tile.intersection(product_area)
        if cut.area > tile.area * 1e-4:
            area = cut
    polygons = [g for g in getattr(area, "geoms", [area]) if isinstance(g, Polygon) and g.area]
    if not polygons:
        raise IngestError("the granule's footprint is empty")
    geometry = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
    geometry = orient(geometry) if isinstance(geometry, Polygon) else geometry
    return mapping(geometry)  # type: ignore[return-value]


def _platform(product: SafeProduct) -> str | None:
    name = xmldoc.text(product.info, "Datatake/SPACECRAFT_NAME")
    if name:
        return name.strip().lower().replace(" ", "-")
    match = re.match(r"^S2([A-D])_", product.name)
    return f"sentinel-2{match.group(1).lower()}" if match else None


class SafeScene:
    """One granule of a SAFE product: one catalog image."""

    def __init__(self, product: SafeProduct, granule: Granule, single: bool = True):
        self.product, self.granule, self.single = product, granule, single
        self.href = granule.document

    def __repr__(self) -> str:
        return f"SafeScene({self.href!r})"

    @cached_property
    def tile(self) -> ET.Element:
        """The granule's tile document."""
        return read_document(self.granule.document)

    @property
    def product_id(self) -> str:
        """sentinel-2-l1c / sentinel-2-l2a, whatever the processing baseline."""
        return f"sentinel-2-{self.product.level.lower()}"

    def properties(self) -> dict[str, Any]:
        """STAC properties (Sentinel-2 extension names where they exist)."""
        product, tile = self.product, self.tile
        info = product.info
        tile_id = xmldoc.text(tile, "General_Info/TILE_ID") or self.granule.identifier
        mgrs = TILE_IN_NAME.search(tile_id) or TILE_IN_NAME.search(self.granule.identifier)
        if mgrs is None:
            mgrs = TILE_IN_NAME.search(posixpath.basename(self.granule.folder))
        orbit = ORBIT_IN_NAME.search(tile_id)
        relative = xmldoc.text(info, "Datatake/SENSING_ORBIT_NUMBER")
        direction = xmldoc.text(info, "Datatake/SENSING_ORBIT_DIRECTION")
        properties: dict[str, Any] = {
            "platform": _platform(product),
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "instrument": "msi",
            "processing:level": product.level,
            "s2:processing_baseline": product.baseline,
            "s2:product_type": xmldoc.text(info, "PRODUCT_TYPE"),
            "s2:product_uri": xmldoc.text(info, "PRODUCT_URI"),
            "s2:generation_time": xmldoc.text(info, "GENERATION_TIME"),
            "s2:datatake_id": (
                info.find("Datatake").get("datatakeIdentifier")
                if info is not None and info.find("Datatake") is not None
                else None
            ),  # fmt: skip
            "s2:datastrip_id": self.granule.datastrip,
            "s2:granule_id": self.granule.identifier,
            "s2:tile_id": tile_id,
            "s2:mgrs_tile": mgrs.group(1) if mgrs else None,
            "mgrs:utm_zone": int(mgrs.group(1)[:2]) if mgrs else None,
            "mgrs:latitude_band": mgrs.group(1)[2] if mgrs else None,
            "mgrs:grid_square": mgrs.group(1)[3:] if mgrs else None,
            "sat:relative_orbit": int(relative) if relative and relative.isdecimal() else None,
            "sat:absolute_orbit": int(orbit.group(1)) if orbit else None,
            "sat:orbit_state": direction.lower() if direction else None,
        }
        quality = tile.find("Quality_Indicators_Info/Image_Content_QI")
        for node in quality if quality is not None else []:
            value = xmldoc.number(node, ".")
            if isinstance(node.tag, str) and value is not None:
                properties[f"s2:{node.tag.lower()}"] = value
        return {k: v for k, v in properties.items() if v is not None}

    def acquired(self) -> datetime | None:
        """The granule's SENSING_TIME, else the product's PRODUCT_START_TIME."""
        for text in (
            xmldoc.text(self.tile, "General_Info/SENSING_TIME"),
            xmldoc.text(self.product.info, "PRODUCT_START_TIME"),
        ):
            if text and (parsed := parse_time(text)) is not None:
                return parsed
        return None

    def cloud_cover(self) -> float | None:
        """CLOUDY_PIXEL_PERCENTAGE of the granule, else the product's assessment."""
        for value in (
            xmldoc.number(
                self.tile, "Quality_Indicators_Info/Image_Content_QI/CLOUDY_PIXEL_PERCENTAGE"
            ),
            xmldoc.number(self.product.doc, "Quality_Indicators_Info/Cloud_Coverage_Assessment"),
        ):
            if value is not None and 0 <= value <= 100:
                return value
        return None

    def meta(self) -> SceneMeta:
        """Id, time, footprint, cloud cover and product from the two documents only."""
        crs, extent, _ = _tile_box(self.tile, self.granule.document)
        try:
            geometry = granule_footprint(crs, extent, self.product.footprint())
        except IngestError as exc:
            raise IngestError(f"{self.granule.document}: {exc}") from None
        return SceneMeta(
            id=self.product.name if self.single else self.granule.identifier,
            acquired=self.acquired(),
            geometry=geometry,
            cloud_cover=self.cloud_cover(),
            product_id=self.product_id,
            properties=self.properties(),
        )

    # -- bands and files ---------------------------------------------------------------------

    def band_order(self) -> list[str]:
        """The granule's bands in file order (module docstring)."""
        order = [b for b in SPECTRAL if b in self.granule.files]
        return order + [b for b in EXTRA_BANDS if b in self.granule.files]

    def _wavelengths(self) -> dict[str, dict[str, float]]:
        """wavelength_nm_* per band from Spectral_Information (MIN, MAX, CENTRAL in nm)."""
        found: dict[str, dict[str, float]] = {}
        chars = self.product.characteristics()
        for node in chars.iter("Spectral_Information") if chars is not None else []:
            try:
                band = SPECTRAL[int(node.get("bandId", ""))]
            except (ValueError, IndexError):
                continue
            lo, hi = xmldoc.number(node, "Wavelength/MIN"), xmldoc.number(node, "Wavelength/MAX")
            center = xmldoc.number(node, "Wavelength/CENTRAL")
            if lo is None or hi is None or not 0 < lo < hi:
                continue
            found[band] = {
                "wavelength_nm_min": lo,
                "wavelength_nm_max": hi,
                "wavelength_nm_center": center if center is not None else (lo + hi) / 2,
                "wavelength_nm_fwhm": hi - lo,
            }
        return found

    def shifts(self) -> dict[str, float]:
        """What each spectral band's VRT adds to a valid DN so the band reads as the canonical
        conversion (its own offset - CANONICAL_OFFSET); only bands that need one. IngestError
        for a scene that cannot be read so (module docstring)."""
        product = self.product
        quantification = product.quantification()
        if quantification != CANONICAL_QUANTIFICATION:
            raise IngestError(
                f"{product.href}: quantification value {quantification:g}; Sentinel-2 images "
                f"are read as (DN {CANONICAL_OFFSET:+g}) / {CANONICAL_QUANTIFICATION:g}"
            )
        offsets = product.offsets()
        shifts = {}
        for name in self.band_order():
            if name in EXTRA_BANDS:
                continue
            offset = offsets.get(name, 0.0)
            shift = offset - CANONICAL_OFFSET
            if shift < 0 or not shift.is_integer():
                raise IngestError(
                    f"{product.href}: band {name} has offset {offset:g}; Sentinel-2 images are "
                    f"read as (DN {CANONICAL_OFFSET:+g}) / {CANONICAL_QUANTIFICATION:g}, which "
                    "takes whole offsets from that value up"
                )
            if shift:
                shifts[name] = shift
        return shifts

    def bands(self, dtypes: dict[str, str]) -> list[Band]:
        """Band records in file order; `dtypes` the numpy type of each band's file."""
        product = self.product
        level = LEVELS[product.level]
        waves = self._wavelengths()
        # the whole type's range: reflectances above 1 (clouds, snow) are not clipped, and
        # `physical` scaling maps it linearly onto reflectance
        data_range = (0, 65535)
        physical = (
            CANONICAL_OFFSET / CANONICAL_QUANTIFICATION,
            (65535 + CANONICAL_OFFSET) / CANONICAL_QUANTIFICATION,
        )
        step = ProcessingStep(
            function="linear",
            parameter=[1 / CANONICAL_QUANTIFICATION, CANONICAL_OFFSET / CANONICAL_QUANTIFICATION],
            data_type="Float32",
            data_range=physical,
            display_range=physical,
            physical_range=physical,
            physical_range_unit="reflectance",
        )
        bands = []
        for index, name in enumerate(self.band_order()):
            dtype = dtypes[name]
            data_type = NUMPY_TO_DATA_TYPE.get(dtype)
            if data_type is None:
                raise IngestError(f"{self.granule.files[name][0]}: unsupported type {dtype}")
            common = {
                "name": name,
                "data_type": data_type,
                "nodata": 0,
                "resolution": Resolution(value=self.granule.files[name][1]),
                "file_index": index,
                "band_index": 0,
            }
            if name == "SCL":
                colormap, labels = scl_legend()
                bands.append(
                    Band(
                        **common,
                        description="scene classification",
                        type="class",
                        data_range=(0, len(labels) - 1),
                        colormap=colormap,
                        class_labels=labels,
                    )
                )
                continue
            if name in ("AOT", "WVP"):
                scale = product.quantification(name)
                bands.append(
                    Band(
                        **common,
                        description="aerosol optical thickness"
                        if name == "AOT"
                        else "water vapour (cm)",
                        type="generic",
                        data_range=(0, 65535),
                        physical_range=(0.0, 65535 / scale),
                        physical_range_unit=None if name == "AOT" else "cm",
                    )
                )
                continue
            bands.append(
                Band(
                    **common,
                    description=f"{level.replace('_', ' ')}: (DN {CANONICAL_OFFSET:+g}) / "
                    f"{CANONICAL_QUANTIFICATION:g} (harmonised)",
                    type="spectral",
                    data_range=data_range,
                    physical_range=physical,
                    physical_range_unit="reflectance",
                    processing_levels={level: [step.model_copy()]},
                    **waves.get(name, {}),
                )
            )
        return bands

    def build(
        self, meta: SceneMeta, product_id: str, product: Product | None, vrt_path: Path
    ) -> tuple[Image, list[Band]]:
        """The image: one file per band, the JPEG2000 read in place, or a VRT of it
        (`<vrt_path stem>_<band>.vrt`) for a band whose offset is not the canonical one."""
        if meta.acquired is None:
            raise IngestError(f"{self.href}: no acquisition time in its metadata; pass --datetime")
        order = self.band_order()
        headers: dict[str, BandFile] = {}
        for name in order:
            href = self.granule.files[name][0]
            try:
                with open_raster(href) as src:
                    headers[name] = BandFile(
                        href, src.dtypes[0], src.crs, src.transform, src.width, src.height,
                        src.block_shapes[0],
                    )  # fmt: skip
            except RasterioIOError as exc:
                raise IngestError(f"band file {href} cannot be opened ({exc})") from exc
        bands = self.bands({name: header.dtype for name, header in headers.items()})
        shifts = self.shifts()
        if product is not None:
            check_layout(product, bands, self.href)
            check_conversion(product, bands, self.href)
        files, stats = [], {}
        for band in bands:
            header = headers[band.name]
            href = header.href
            if band.name in shifts:
                path = vrt_path.with_name(f"{vrt_path.stem}_{band.name}.vrt")
                write_atomic(path, shift_vrt(header, shifts[band.name], band.name))
                href = str(path)
            files.append(ImageFile(href=href, size=file_size(header.href)))
            found: list[BandStatistics] | None = image_statistics(href, [1], 0)
            if found:
                stats[band.name] = found[0]
                if band.type == "spectral":
                    band.display_range = display_range(found[0], band.data_range)
        finest = headers[min(order, key=lambda n: headers[n].transform.a)]
        if finest.crs is None:
            raise IngestError(f"{finest.href} has no CRS")
        epsg = finest.crs.to_epsg()
        image = Image(
            name=safe_name(meta.id),
            product_id=product_id,
            acquired=meta.acquired,
            geometry=meta.geometry,
            cloud_cover=meta.cloud_cover,
            properties=dict(meta.properties),
            files=files,
            crs=f"EPSG:{epsg}" if epsg else finest.crs.to_wkt(),
            geotrans=tuple(finest.transform.to_gdal()),
            width=finest.width,
            height=finest.height,
            band_stats=stats,
        )
        if product is not None and product.bands:
            return image, product.bands
        return image, bands


class BandFile(NamedTuple):
    """A band file's header, as its VRT needs it."""

    href: str
    dtype: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    block: tuple[int, int]  # rows, columns


def shift_vrt(source: BandFile, shift: float, name: str) -> bytes:
    """A one-band VRT of `source` adding `shift` to every valid DN: a ComplexSource whose
    NODATA 0 is skipped (the band's nodata 0 stays where it was), output clamped to the
    band's type (DN 65000 + 1000 reads 65535)."""
    root = ET.Element("VRTDataset", rasterXSize=str(source.width), rasterYSize=str(source.height))
    if source.crs is not None:
        ET.SubElement(root, "SRS").text = source.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in source.transform.to_gdal()
    )
    data_type = VRT_DATA_TYPES[source.dtype]
    band = ET.SubElement(root, "VRTRasterBand", dataType=data_type, band="1")
    ET.SubElement(band, "Description").text = name
    ET.SubElement(band, "NoDataValue").text = "0"
    complex_source = ET.SubElement(band, "ComplexSource")
    ET.SubElement(complex_source, "SourceFilename", relativeToVRT="0").text = source.href
    ET.SubElement(complex_source, "SourceBand").text = "1"
    ET.SubElement(
        complex_source,
        "SourceProperties",
        RasterXSize=str(source.width),
        RasterYSize=str(source.height),
        DataType=data_type,
        BlockXSize=str(source.block[1]),
        BlockYSize=str(source.block[0]),
    )
    size = {"xSize": str(source.width), "ySize": str(source.height)}
    ET.SubElement(complex_source, "SrcRect", xOff="0", yOff="0", **size)
    ET.SubElement(complex_source, "DstRect", xOff="0", yOff="0", **size)
    ET.SubElement(complex_source, "ScaleOffset").text = f"{shift:g}"
    ET.SubElement(complex_source, "ScaleRatio").text = "1"
    ET.SubElement(complex_source, "NODATA").text = "0"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def check_conversion(product: Product, bands: list[Band], href: str) -> None:
    """The product's reflectance conversion must be the canonical one the scene is read as
    (a product created otherwise, e.g. with another processing level, is not)."""
    for band in bands:
        expected = product.band(band.name)
        if expected is None or band.processing_levels is None:
            continue
        if (expected.processing_levels or {}) != band.processing_levels:
            raise IngestError(
                f"{href}: band '{band.name}' converts to reflectance differently from product "
                f"'{product.id}' (Sentinel-2 images read as {band.description}): import it "
                "into another product"
            )
