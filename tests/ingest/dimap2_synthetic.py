"""Synthetic DIMAP v2 products (SPOT 6/7, Pleiades, Pleiades Neo) with pixels the tests choose.

Written to the format's rules: a VOL_*.XML listing DIM_*.XML components, each DIM naming
its IMG_<stem>[_<part>]_R{r}C{c}.TIF/.JP2 tiles under Raster_Data/Data_Access, with
Raster_Encoding/NBITS, Special_Value NODATA, Raster_Index_List, Band_Display_Order,
Band_Radiance / Band_Reflectance / Band_Spectral_Range under Band_Measurement_List,
Dataset_Extent, CLOUD_COVERAGE and the Strip_Source. Sensor products get an RPC_*.XML with a
linear ground-to-image model whose inverse the tests work out by hand.

Variants seen in GDAL's public samples (autotest/gdrivers/data/dimap2): no Dataset_Extent at
all (`DIM_foo.XML`, `bundle/`), a Dataset_Extent holding only a Center with a height
(`primary_rpc_center_h`), placeholder IMAGING_DATE with the time in Geometric_Data's
Located_Geometric_Values (`single_component`), placement by Geoposition_Insert; plus tiles
that carry only GCPs (GeoTIFF tie points, as GDAL reads them).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import from_origin


@dataclass
class FileGroup:
    """One Data_Files group: the component's pixels stored in one tile set."""

    data: numpy.ndarray  # (bands, rows, cols), in file band order, the whole component
    part: str = ""  # "RGB" / "NED" for Pleiades Neo MS-FS
    index_list: list[tuple[str, int | None]] | None = None  # Raster_Index in document order
    display: tuple[str, ...] | None = None  # Band_Display_Order channels


@dataclass
class LinearRpc:
    """A ground-to-image RPC whose polynomials are sample = lon_n and line = -lat_n.

    DIMAP RPCs count pixel centres from 1: sample s is the centre of the 0-based column
    s - 1, so a GDAL pixel-corner coordinate x sits at sample x + 0.5.
    """

    long_off: float
    long_scale: float
    lat_off: float
    lat_scale: float
    samp_off: float
    samp_scale: float
    line_off: float
    line_scale: float
    height_off: float = 100.0
    height_scale: float = 500.0

    def lonlat(self, x: float, y: float) -> tuple[float, float]:
        """Lon/lat of GDAL pixel-corner coordinates (x = column, y = row)."""
        lon = self.long_off + self.long_scale * (x + 0.5 - self.samp_off) / self.samp_scale
        lat = self.lat_off - self.lat_scale * (y + 0.5 - self.line_off) / self.line_scale
        return lon, lat


@dataclass
class DimSpec:
    """Everything one DIM_<stem>.XML says, and the pixels of its tiles."""

    stem: str
    groups: list[FileGroup]
    mission: str = "SPOT"
    mission_index: str = "7"
    instrument: str | None = "NAOMI"
    spectral: str | None = "MS"
    processing_level: str = "ORTHO"
    radiometric_processing: str = "BASIC"
    crs: str | None = "EPSG:32633"
    transform: Affine | None = None
    tile_size: tuple[int, int] | None = None  # (cols, rows); None: one tile
    driver: str = "GTiff"
    nbits: int = 12
    nodata: float | None = 0
    radiance: dict[str, tuple[float, float]] = field(default_factory=dict)
    radiance_unit: str = "watt/m2/steradian/micrometer"
    reflectance: dict[str, tuple[float, float]] = field(default_factory=dict)
    spectral_range: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    cloud_cover: float | None = None
    snow_cover: float | None = None
    extent: list[tuple[float, float]] | None = None
    extent_type: str = "Bounding_Polygon"
    extent_centre: tuple[float, float] | None = None  # an extra, inner Vertex
    extent_center_only: tuple[float, float, float] | None = None  # <Center> LON LAT H, no Vertex
    located_times: list[tuple[str, str]] = field(default_factory=list)  # (LOCATION_TYPE, TIME)
    insert: bool = False  # write Geoposition_Insert (and tiles without a CRS)
    gcps: list | None = None  # GroundControlPoints in EPSG:4326 written into the (single) tile
    imaging_date: str | None = None
    imaging_time: str | None = None
    source_id: str | None = None
    dataset_name: str | None = None
    rpc: LinearRpc | None = None
    rpc_file: str | None = None  # named in Geoposition_Models; None: RPC_<stem>.XML
    raster_data: bool = True
    regular_tiling: bool = True  # write Tile_Set/Regular_Tiling (GDAL needs it for mosaics)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the component."""
        return self.groups[0].data.shape[1:]


def _el(parent: ET.Element, tag: str, text=None, **attrs) -> ET.Element:
    node = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        node.text = str(text)
    return node


def _save(root: ET.Element, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="UTF-8", xml_declaration=True)
    return path


def corner_extent(crs: str, transform: Affine, width: int, height: int) -> list:
    """The four corners of a grid in lon/lat, clockwise from the top left."""
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    return [to_wgs84.transform(*(transform * c)) for c in corners]


def tile_name(spec: DimSpec, group: FileGroup, row: int, col: int) -> str:
    """IMG_<stem>[_<part>]_R{row}C{col}.TIF/.JP2, as the DIMAP naming convention has it."""
    suffix = ".JP2" if spec.driver == "JP2OpenJPEG" else ".TIF"
    part = f"_{group.part}" if group.part else ""
    return f"IMG_{spec.stem}{part}_R{row}C{col}{suffix}"


def tile_windows(spec: DimSpec) -> list[tuple[int, int, int, int, int, int]]:
    """(row, col, y0, x0, rows, cols) of every tile, R1C1 first."""
    height, width = spec.shape
    tile_cols, tile_rows = spec.tile_size or (width, height)
    windows = []
    for r, y0 in enumerate(range(0, height, tile_rows), start=1):
        for c, x0 in enumerate(range(0, width, tile_cols), start=1):
            windows.append((r, c, y0, x0, min(tile_rows, height - y0), min(tile_cols, width - x0)))
    return windows


def write_tiles(folder: Path, spec: DimSpec) -> dict[int, dict[tuple[int, int], str]]:
    """Each group's tiles (georeferenced unless the product is a sensor one)."""
    written: dict[int, dict[tuple[int, int], str]] = {}
    options = {"QUALITY": "100", "REVERSIBLE": "YES"} if spec.driver == "JP2OpenJPEG" else {}
    for g, group in enumerate(spec.groups):
        written[g] = {}
        for r, c, y0, x0, rows, cols in tile_windows(spec):
            name = tile_name(spec, group, r, c)
            profile = {
                "driver": spec.driver,
                "width": cols,
                "height": rows,
                "count": group.data.shape[0],
                "dtype": str(group.data.dtype),
                **options,
            }
            if spec.crs is not None and not spec.insert:
                profile["crs"] = spec.crs
                profile["transform"] = spec.transform * Affine.translation(x0, y0)
            with rasterio.open(folder / name, "w", **profile) as dst:
                dst.write(group.data[:, y0 : y0 + rows, x0 : x0 + cols])
                if spec.gcps:
                    dst.gcps = (spec.gcps, CRS.from_epsg(4326))
            written[g][(r, c)] = name
    return written


def _radiometric_data(root: ET.Element, spec: DimSpec) -> None:
    measures = _el(
        _el(
            _el(_el(root, "Radiometric_Data"), "Radiometric_Calibration"), "Instrument_Calibration"
        ),
        "Band_Measurement_List",
    )
    for band_id, (lo, hi, unit) in spec.spectral_range.items():
        node = _el(measures, "Band_Spectral_Range")
        _el(node, "BAND_ID", band_id)
        _el(node, "MEASURE_UNIT", unit)
        fwhm = _el(node, "FWHM")
        _el(fwhm, "MIN", lo)
        _el(fwhm, "MAX", hi)
        _el(node, "GAIN", 0)
        _el(node, "BIAS", 0)
    for band_id, (gain, bias) in spec.radiance.items():
        node = _el(measures, "Band_Radiance")
        _el(node, "BAND_ID", band_id)
        source = "Reflectance (RHO)" if spec.radiometric_processing == "REFLECTANCE" else "DN"
        _el(node, "MEASURE_DESC", f"{source} to TOA Radiance (L)")
        _el(node, "MEASURE_UNIT", spec.radiance_unit)
        _el(node, "GAIN", gain)
        _el(node, "BIAS", bias)
    for band_id, (gain, bias) in spec.reflectance.items():
        node = _el(measures, "Band_Reflectance")
        _el(node, "BAND_ID", band_id)
        _el(node, "GAIN", gain)
        _el(node, "BIAS", bias)


def _raster_display(parent: ET.Element, spec: DimSpec, group: FileGroup) -> None:
    display = _el(parent, "Raster_Display")
    if group.index_list:
        entries = _el(display, "Raster_Index_List")
        for band_id, index in group.index_list:
            entry = _el(entries, "Raster_Index")
            _el(entry, "BAND_ID", band_id)
            if index is not None:
                _el(entry, "BAND_INDEX", index)
    if group.display:
        order = _el(display, "Band_Display_Order")
        for channel, band_id in zip(("RED", "GREEN", "BLUE"), group.display, strict=False):
            _el(order, f"{channel}_CHANNEL", band_id)
    if spec.nodata is not None:
        special = _el(display, "Special_Value")
        _el(special, "SPECIAL_VALUE_TEXT", "NODATA")
        _el(special, "SPECIAL_VALUE_COUNT", spec.nodata)
    saturated = _el(display, "Special_Value")
    _el(saturated, "SPECIAL_VALUE_TEXT", "SATURATED")
    _el(saturated, "SPECIAL_VALUE_COUNT", 2**spec.nbits - 1)


def _raster_data(root: ET.Element, spec: DimSpec, tiles: dict) -> None:
    rows, cols = spec.shape
    raster = _el(root, "Raster_Data")
    dims = _el(raster, "Raster_Dimensions")
    _el(dims, "NROWS", rows)
    _el(dims, "NCOLS", cols)
    _el(dims, "NBANDS", sum(g.data.shape[0] for g in spec.groups))
    tile_set = _el(dims, "Tile_Set")
    windows = tile_windows(spec)
    _el(tile_set, "NTILES", len(windows))
    if spec.regular_tiling:
        tiling = _el(tile_set, "Regular_Tiling")
        tile_cols, tile_rows = spec.tile_size or (cols, rows)
        _el(tiling, "NTILES_SIZE", nrows=tile_rows, ncols=tile_cols)
        _el(tiling, "NTILES_COUNT", ntiles_R=windows[-1][0], ntiles_C=windows[-1][1])
        _el(tiling, "OVERLAP_ROW", 0)
        _el(tiling, "OVERLAP_COL", 0)
    encoding = _el(raster, "Raster_Encoding")
    _el(encoding, "DATA_TYPE", "INTEGER")
    _el(encoding, "NBITS", spec.nbits)
    _el(encoding, "SIGN", "UNSIGNED")
    access = _el(raster, "Data_Access")
    _el(access, "DATA_FILE_ORGANISATION", "BAND_COMPOSITE")
    _el(access, "DATA_FILE_FORMAT", "image/jp2" if spec.driver == "JP2OpenJPEG" else "image/tiff")
    _el(access, "DATA_FILE_TILES", "true" if len(windows) > 1 else "false")
    for g, group in enumerate(spec.groups):
        files = _el(access, "Data_Files")
        for (r, c), name in tiles[g].items():
            data_file = _el(files, "Data_File", tile_R=r, tile_C=c)
            _el(data_file, "DATA_FILE_PATH", href=name)
        _raster_display(files, spec, group)


def _rpc_document(rpc: LinearRpc) -> ET.Element:
    root = ET.Element("Dimap_Document")
    identification = _el(root, "Metadata_Identification")
    _el(identification, "METADATA_FORMAT", "DIMAP", version="2.0")
    _el(identification, "METADATA_SUBPROFILE", "RPC")
    model = _el(_el(root, "Rational_Function_Model"), "Global_RFM")
    # a Direct_Model (image to ground) that would place the image elsewhere: unused
    direct = _el(model, "Direct_Model")
    for i in range(1, 21):
        for name in ("SAMP_NUM_COEFF", "SAMP_DEN_COEFF", "LINE_NUM_COEFF", "LINE_DEN_COEFF"):
            _el(direct, f"{name}_{i}", 0.5 if i == 1 else 0.25)
    inverse = _el(model, "Inverse_Model")
    terms = {"SAMP_NUM_COEFF": 2, "LINE_NUM_COEFF": 3}  # 1-based: term 2 = lon, 3 = lat
    for name in ("SAMP_NUM_COEFF", "SAMP_DEN_COEFF", "LINE_NUM_COEFF", "LINE_DEN_COEFF"):
        for i in range(1, 21):
            if name.endswith("DEN_COEFF"):
                value = 1.0 if i == 1 else 0.0
            else:
                value = (-1.0 if name.startswith("LINE") else 1.0) if i == terms[name] else 0.0
            _el(inverse, f"{name}_{i}", value)
    validity = _el(model, "RFM_Validity")
    for name in (
        "LONG_SCALE",
        "LONG_OFF",
        "LAT_SCALE",
        "LAT_OFF",
        "HEIGHT_SCALE",
        "HEIGHT_OFF",
        "SAMP_SCALE",
        "SAMP_OFF",
        "LINE_SCALE",
        "LINE_OFF",
    ):
        _el(validity, name, getattr(rpc, name.lower()))
    return root


def write_dim(folder: Path, spec: DimSpec) -> Path:
    """Write a DIM_<stem>.XML and its tiles (and RPC file) into `folder`; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    tiles = write_tiles(folder, spec)
    root = ET.Element("Dimap_Document", version="2.0")
    identification = _el(root, "Metadata_Identification")
    _el(identification, "METADATA_FORMAT", "DIMAP", version="2.0")
    _el(identification, "METADATA_PROFILE", f"{spec.mission}_{spec.processing_level}")
    _el(identification, "METADATA_SUBPROFILE", "PRODUCT")
    dataset = _el(root, "Dataset_Identification")
    if spec.dataset_name:
        _el(dataset, "DATASET_NAME", spec.dataset_name)
    content = _el(root, "Dataset_Content")
    if spec.cloud_cover is not None:
        _el(content, "CLOUD_COVERAGE", spec.cloud_cover, unit="percent")
    if spec.snow_cover is not None:
        _el(content, "SNOW_COVERAGE", spec.snow_cover, unit="percent")
    _el(content, "Dataset_Components")
    if spec.extent_center_only:
        extent = _el(content, "Dataset_Extent")
        _el(extent, "EXTENT_TYPE", "Bounding_Box")
        center = _el(extent, "Center")
        for tag, value in zip(("LON", "LAT", "H"), spec.extent_center_only, strict=True):
            _el(center, tag, repr(value))
    if spec.extent:
        extent = _el(content, "Dataset_Extent")
        _el(extent, "EXTENT_TYPE", spec.extent_type)
        for lon, lat in spec.extent + ([spec.extent_centre] if spec.extent_centre else []):
            vertex = _el(extent, "Vertex")
            _el(vertex, "LON", repr(lon))
            _el(vertex, "LAT", repr(lat))
    crs = _el(root, "Coordinate_Reference_System")
    if spec.crs is not None:
        code = spec.crs.split(":")[1]
        kind = "Geodetic_CRS" if code == "4326" else "Projected_CRS"
        tag = "GEODETIC_CRS_CODE" if code == "4326" else "PROJECTED_CRS_CODE"
        _el(_el(crs, kind), tag, f"urn:ogc:def:crs:EPSG::{code}")
    geoposition = _el(root, "Geoposition")
    if spec.insert:
        insert = _el(geoposition, "Geoposition_Insert")
        t = spec.transform
        for tag, value in (("ULXMAP", t.c), ("ULYMAP", t.f), ("XDIM", t.a), ("YDIM", -t.e)):
            _el(insert, tag, repr(value), unit="m")
    if spec.rpc is not None:
        rpc_file = spec.rpc_file or f"RPC_{spec.stem}.XML"
        _save(_rpc_document(spec.rpc), folder / rpc_file)
        if spec.rpc_file:
            models = _el(_el(geoposition, "Geoposition_Models"), "Rational_Function_Model")
            component = _el(models, "Component")
            _el(component, "COMPONENT_TITLE", "RPC Model")
            _el(component, "COMPONENT_PATH", href=rpc_file)
    settings = _el(_el(root, "Processing_Information"), "Product_Settings")
    _el(settings, "PROCESSING_LEVEL", spec.processing_level)
    if spec.spectral:
        _el(settings, "SPECTRAL_PROCESSING", spec.spectral)
    radiometric = _el(settings, "Radiometric_Settings")
    _el(radiometric, "RADIOMETRIC_PROCESSING", spec.radiometric_processing)
    if spec.raster_data:
        _raster_data(root, spec, tiles)
    _radiometric_data(root, spec)
    if spec.located_times:
        area = _el(_el(root, "Geometric_Data"), "Use_Area")
        for location, time in spec.located_times:
            located = _el(area, "Located_Geometric_Values")
            _el(located, "LOCATION_TYPE", location)
            _el(located, "TIME", time)
    source = _el(_el(root, "Dataset_Sources"), "Source_Identification")
    if spec.source_id:
        _el(source, "SOURCE_ID", spec.source_id)
    _el(source, "SOURCE_TYPE", "Strip_Source")
    strip = _el(source, "Strip_Source")
    _el(strip, "MISSION", spec.mission)
    _el(strip, "MISSION_INDEX", spec.mission_index)
    if spec.instrument:
        _el(strip, "INSTRUMENT", spec.instrument)
        _el(strip, "INSTRUMENT_INDEX", spec.mission_index)
    if spec.imaging_date:
        _el(strip, "IMAGING_DATE", spec.imaging_date)
    if spec.imaging_time:
        _el(strip, "IMAGING_TIME", spec.imaging_time)
    return _save(root, folder / f"DIM_{spec.stem}.XML")


def write_vol(path: Path, components: list[tuple[str, str]]) -> Path:
    """A VOL_*.XML listing (title, href relative to the VOL) DIMAP components."""
    root = ET.Element("Dimap_Document")
    identification = _el(root, "Metadata_Identification")
    _el(identification, "METADATA_FORMAT", "DIMAP", version="2.0")
    _el(identification, "METADATA_PROFILE", "VOLUME")
    _el(_el(root, "Dataset_Identification"), "DATASET_NAME", "Volume Description")
    listed = _el(_el(root, "Dataset_Content"), "Dataset_Components")
    for title, href in components:
        component = _el(listed, "Component")
        _el(component, "COMPONENT_TITLE", title)
        _el(component, "COMPONENT_TYPE", "DIMAP")
        _el(component, "COMPONENT_PATH", href=href)
    documentation = _el(listed, "Component")
    _el(documentation, "COMPONENT_TITLE", "Digital Documentation")
    _el(documentation, "COMPONENT_TYPE", "ENCAPSULATED")
    _el(documentation, "COMPONENT_PATH", href="http://example.com")
    return _save(root, path)


RNG = numpy.random.default_rng(20240612)
SPOT_ID = "DS_SPOT7_201909220949204_FR1_FR1_SV1_SV1_E013N53_03414"


def pixels(bands: int, rows: int, cols: int, top: int = 4095) -> numpy.ndarray:
    """Random 12-bit pixels, never 0 (the nodata value) except where a test puts it."""
    return RNG.integers(1, top + 1, size=(bands, rows, cols), dtype="uint16")


def write_spot_bundle(tmp_path: Path) -> dict:
    """A SPOT 7 P + MS bundle under `tmp_path`: pan 40x60 at 1.5 m, MS 4 bands 10x15 at 6 m."""
    origin = (400000.0, 5900000.0)
    pan = pixels(1, 40, 60)
    ms = pixels(4, 10, 15)
    ms[:, 0, 0] = 0  # a nodata pixel
    extent = corner_extent("EPSG:32633", from_origin(*origin, 6, 6), 15, 10)
    common = dict(
        mission="SPOT",
        mission_index="7",
        crs="EPSG:32633",
        cloud_cover=12.5,
        snow_cover=1.5,
        extent=extent,
        imaging_date="2019-09-22",
        imaging_time="09:49:20.4Z",
        source_id=SPOT_ID,
    )
    # calibration listed out of BAND_ID order: the file order is still B0 B1 B2 B3 (GDAL's)
    ms_spec = DimSpec(
        stem="SPOT7_MS_201909220949204_ORT_1",
        groups=[FileGroup(ms, display=("B2", "B1", "B0"))],
        spectral="MS",
        transform=from_origin(*origin, 6, 6),
        radiance={"B3": (11.0, 0.5), "B2": (9.0, 0.25), "B1": (8.0, 0.0), "B0": (7.5, 1.0)},
        spectral_range={"B0": (0.455, 0.525, "micrometer"), "B3": (760, 890, "nanometer")},
        **common,
    )
    pan_spec = DimSpec(
        stem="SPOT7_P_201909220949204_ORT_1",
        groups=[FileGroup(pan)],
        spectral="P",
        transform=from_origin(*origin, 1.5, 1.5),
        radiance={"P": (12.0, 0.0)},
        **common,
    )
    ms_dim = write_dim(tmp_path / "IMG_SPOT7_MS_001_A", ms_spec)
    pan_dim = write_dim(tmp_path / "IMG_SPOT7_P_001_A", pan_spec)
    vol = write_vol(
        tmp_path / "VOL_SPOT7.XML",
        [  # MS listed first: the pan component still becomes file 0
            ("SPOT7 MS", "IMG_SPOT7_MS_001_A/" + ms_dim.name),
            ("SPOT7 P", "IMG_SPOT7_P_001_A/" + pan_dim.name),
        ],
    )
    return {"vol": vol, "pan": pan, "ms": ms, "ms_dim": ms_dim, "extent": extent, "spec": ms_spec}
