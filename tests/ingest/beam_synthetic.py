"""Synthetic SNAP BEAM-DIMAP products, written to the format's rules (SEMANTICS.md section 6).

A product is `<name>.dim` (XML header) beside `<name>.data/`, holding one ENVI `.hdr`/`.img`
pair per band, big-endian (`byte order = 1`), and `tie_point_grids/` for satellite geometry.
As SNAP writes them, int8 bands are ENVI Byte (1) and uint32 bands ENVI Int32 (3) files: only
the `.dim`'s DATA_TYPE says how to read their bytes.

Variants from SNAP's public test resources (senbox-org/snap-engine): products without
PRODUCT_SCENE_RASTER_START_TIME whose times are metadata attributes (`metadata`: NetCDF/CF
`Global_Attributes` time_coverage_start/end, ENVISAT `SPH` FIRST/LAST_LINE_TIME), and the
older places a tie-point geocoding names its grids (`geocoding`: "beam4" under
Coordinate_Reference_System/Geocoding_Tie_Point_Grids, "gcp" inside Original_Geocoding), as
DimapProductHelpersTest's expected headers show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy

# BEAM DATA_TYPE -> ENVI `data type` code of the file SNAP writes
ENVI_CODES = {
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 12,
    "int32": 3,
    "uint32": 3,
    "float32": 4,
    "float64": 5,
}

# GeoTools-style WKT, as SNAP's CrsGeoCoding writes it
UTM32N_WKT = (
    'PROJCS["WGS 84 / UTM zone 32N", GEOGCS["WGS 84", DATUM["World Geodetic System 1984", '
    'SPHEROID["WGS 84", 6378137.0, 298.257223563, AUTHORITY["EPSG","7030"]], '
    'AUTHORITY["EPSG","6326"]], PRIMEM["Greenwich", 0.0, AUTHORITY["EPSG","8901"]], '
    'UNIT["degree", 0.017453292519943295], AXIS["Geodetic longitude", EAST], '
    'AXIS["Geodetic latitude", NORTH], AUTHORITY["EPSG","4326"]], '
    'PROJECTION["Transverse_Mercator", AUTHORITY["EPSG","9807"]], '
    'PARAMETER["central_meridian", 9.0], PARAMETER["latitude_of_origin", 0.0], '
    'PARAMETER["scale_factor", 0.9996], PARAMETER["false_easting", 500000.0], '
    'PARAMETER["false_northing", 0.0], UNIT["m", 1.0], AXIS["Easting", EAST], '
    'AXIS["Northing", NORTH], AUTHORITY["EPSG","32632"]]'
)


@dataclass
class SyntheticBand:
    """A band to write: its raw values and what the `.dim` says about them."""

    name: str
    data: numpy.ndarray  # (rows, cols) raw values
    data_type: str  # BEAM DATA_TYPE
    unit: str | None = None
    description: str | None = None
    wavelength: float = 0.0
    bandwidth: float = 0.0
    factor: float = 1.0
    offset: float = 0.0
    log10: bool = False
    nodata: float | None = None
    flag_coding: bool = False
    virtual_expression: str | None = None  # a virtual band: no file, only an expression


@dataclass
class TiePoints:
    """Lat/lon tie-point grids: grid (x, y) at image pixel (offset + x * step)."""

    lat: numpy.ndarray  # (nrows, ncols)
    lon: numpy.ndarray
    offset_x: float = 0.5
    offset_y: float = 0.5
    step_x: float = 10.0
    step_y: float = 10.0

    def pixels(self) -> tuple[numpy.ndarray, numpy.ndarray]:
        rows, cols = numpy.mgrid[0 : self.lat.shape[0], 0 : self.lat.shape[1]]
        return self.offset_x + cols * self.step_x, self.offset_y + rows * self.step_y


@dataclass
class SyntheticProduct:
    name: str
    width: int
    height: int
    bands: list[SyntheticBand]
    start: str | None = "15-JUN-2021 10:20:30.123456"
    stop: str | None = "15-JUN-2021 10:20:45.654321"
    product_type: str | None = "SYN_TEST_1"
    wkt: str | None = None
    image_to_model: tuple[float, ...] | None = None  # m00, m10, m01, m11, m02, m12
    tie_points: TiePoints | None = None
    mission: str | None = None
    extra_xml: list[str] = field(default_factory=list)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # MDElem -> MDATTRs
    geocoding: str = "current"  # where the tie-point grid names go: current, beam4, gcp


def _element(tag: str, value) -> str:
    if value is None:
        return f"<{tag} />"
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def envi_header(description: str, cols: int, rows: int, code: int) -> str:
    return (
        "ENVI\n"
        f"description = {{{description}}}\n"
        f"samples = {cols}\n"
        f"lines = {rows}\n"
        "bands = 1\n"
        "header offset = 0\n"
        "file type = ENVI Standard\n"
        f"data type = {code}\n"
        "interleave = bsq\n"
        "byte order = 1\n"
    )


def big_endian(data: numpy.ndarray, data_type: str) -> bytes:
    """Raw bytes as SNAP writes them: the declared type, most significant byte first."""
    dtype = numpy.dtype(data_type).newbyteorder(">")
    return numpy.asarray(data).astype(dtype).tobytes()


def _band_xml(index: int, band: SyntheticBand) -> str:
    parts = [
        _element("BAND_INDEX", index),
        _element("BAND_DESCRIPTION", band.description),
        _element("BAND_NAME", band.name),
        _element("DATA_TYPE", band.data_type),
        _element("PHYSICAL_UNIT", band.unit),
        _element("SOLAR_FLUX", 0.0),
        _element("BAND_WAVELEN", band.wavelength),
        _element("BANDWIDTH", band.bandwidth),
    ]
    if band.flag_coding:
        parts.append(_element("FLAG_CODING_NAME", band.name))
    if band.virtual_expression is not None:
        parts += [_element("VIRTUAL_BAND", True), _element("EXPRESSION", band.virtual_expression)]
    parts += [
        _element("SCALING_FACTOR", repr(band.factor)),
        _element("SCALING_OFFSET", repr(band.offset)),
        _element("LOG10_SCALED", band.log10),
        _element("NO_DATA_VALUE_USED", band.nodata is not None),
        _element("NO_DATA_VALUE", repr(float(band.nodata or 0.0))),
    ]
    inner = "\n            ".join(parts)
    return f"        <Spectral_Band_Info>\n            {inner}\n        </Spectral_Band_Info>"


def _grid_xml(index: int, name: str, tie_points: TiePoints) -> str:
    rows, cols = tie_points.lat.shape
    parts = [
        _element("TIE_POINT_GRID_INDEX", index),
        _element("TIE_POINT_DESCRIPTION", f"{name} of the tie points"),
        _element("PHYSICAL_UNIT", "deg"),
        _element("TIE_POINT_GRID_NAME", name),
        _element("DATA_TYPE", "float32"),
        _element("NCOLS", cols),
        _element("NROWS", rows),
        _element("OFFSET_X", tie_points.offset_x),
        _element("OFFSET_Y", tie_points.offset_y),
        _element("STEP_X", tie_points.step_x),
        _element("STEP_Y", tie_points.step_y),
        _element("CYCLIC", name == "longitude"),
    ]
    inner = "\n            ".join(parts)
    return f"        <Tie_Point_Grid_Info>\n            {inner}\n        </Tie_Point_Grid_Info>"


def dim_xml(product: SyntheticProduct) -> str:
    """The `.dim` header of `product`."""
    name = product.name
    stored = [b for b in product.bands if b.virtual_expression is None]
    sections = [
        "    <Metadata_Id>\n"
        '        <METADATA_FORMAT version="2.12.1">DIMAP</METADATA_FORMAT>\n'
        "        <METADATA_PROFILE>BEAM-DATAMODEL-V1</METADATA_PROFILE>\n"
        "    </Metadata_Id>",
        "    <Dataset_Id>\n"
        "        <DATASET_SERIES>BEAM-PRODUCT</DATASET_SERIES>\n"
        f"        {_element('DATASET_NAME', name)}\n"
        "    </Dataset_Id>",
        "    <Production>\n"
        "        <DATASET_PRODUCER_NAME />\n"
        f"        {_element('PRODUCT_TYPE', product.product_type)}\n"
        + (
            f"        {_element('PRODUCT_SCENE_RASTER_START_TIME', product.start)}\n"
            if product.start
            else ""
        )
        + (
            f"        {_element('PRODUCT_SCENE_RASTER_STOP_TIME', product.stop)}\n"
            if product.stop
            else ""
        )
        + "    </Production>",
    ]
    if product.wkt is not None:
        sections.append(
            "    <Coordinate_Reference_System>\n"
            f"        <WKT>\n{escape(product.wkt)}\n        </WKT>\n"
            "    </Coordinate_Reference_System>"
        )
    if product.image_to_model is not None:
        matrix = ",".join(repr(float(v)) for v in product.image_to_model)
        sections.append(
            "    <Geoposition>\n"
            f"        <IMAGE_TO_MODEL_TRANSFORM>{matrix}</IMAGE_TO_MODEL_TRANSFORM>\n"
            "    </Geoposition>"
        )
    if product.tie_points is not None:
        names = (
            "<TIE_POINT_GRID_NAME_LAT>latitude</TIE_POINT_GRID_NAME_LAT>\n"
            "<TIE_POINT_GRID_NAME_LON>longitude</TIE_POINT_GRID_NAME_LON>\n"
        )
        sections.append(
            {
                "current": "<Geoposition><Geoposition_Points>\n"
                f"{names}</Geoposition_Points></Geoposition>",
                "beam4": "<Coordinate_Reference_System><Geocoding_Tie_Point_Grids>\n"
                f"{names}</Geocoding_Tie_Point_Grids></Coordinate_Reference_System>",
                "gcp": "<Geoposition><Geoposition_Points>\n"
                "<INTERPOLATION_METHOD>POLYNOMIAL1</INTERPOLATION_METHOD>\n"
                "<Original_Geocoding><Geoposition><Geoposition_Points>\n"
                f"{names}</Geoposition_Points></Geoposition></Original_Geocoding>\n"
                "</Geoposition_Points></Geoposition>",
            }[product.geocoding]
        )
    for band in stored:
        if band.flag_coding:
            sections.append(
                f'    <Flag_Coding name="{escape(band.name)}">\n'
                "        <Flag>\n"
                "            <Flag_Name>INVALID</Flag_Name>\n"
                "            <Flag_Index>1</Flag_Index>\n"
                "            <Flag_description>Invalid pixel</Flag_description>\n"
                "        </Flag>\n"
                "    </Flag_Coding>"
            )
    sections.append(
        "    <Raster_Dimensions>\n"
        f"        <NCOLS>{product.width}</NCOLS>\n"
        f"        <NROWS>{product.height}</NROWS>\n"
        f"        <NBANDS>{len(product.bands)}</NBANDS>\n"
        "    </Raster_Dimensions>"
    )
    files = [
        "        <Data_File>\n"
        f'            <DATA_FILE_PATH href="{escape(name)}.data/{escape(band.name)}.hdr" />\n'
        f"            <BAND_INDEX>{product.bands.index(band)}</BAND_INDEX>\n"
        "        </Data_File>"
        for band in stored
    ]
    if product.tie_points is not None:
        files += [
            "        <Tie_Point_Grid_File>\n"
            f'            <TIE_POINT_GRID_FILE_PATH href="{escape(name)}.data/tie_point_grids/'
            f'{grid}.hdr" />\n'
            f"            <TIE_POINT_GRID_INDEX>{i}</TIE_POINT_GRID_INDEX>\n"
            "        </Tie_Point_Grid_File>"
            for i, grid in enumerate(("latitude", "longitude"))
        ]
    sections.append(
        "    <Data_Access>\n"
        "        <DATA_FILE_FORMAT>ENVI</DATA_FILE_FORMAT>\n"
        "        <DATA_FILE_FORMAT_DESC>ENVI File Format</DATA_FILE_FORMAT_DESC>\n"
        "        <DATA_FILE_ORGANISATION>BAND_SEPARATE</DATA_FILE_ORGANISATION>\n"
        + "\n".join(files)
        + "\n    </Data_Access>"
    )
    if product.tie_points is not None:
        grids = "\n".join(
            _grid_xml(i, grid, product.tie_points)
            for i, grid in enumerate(("latitude", "longitude"))
        )
        sections.append(
            "    <Tie_Point_Grids>\n"
            "        <NUM_TIE_POINT_GRIDS>2</NUM_TIE_POINT_GRIDS>\n"
            f"{grids}\n"
            "    </Tie_Point_Grids>"
        )
    bands = "\n".join(_band_xml(i, band) for i, band in enumerate(product.bands))
    sections.append(f"    <Image_Interpretation>\n{bands}\n    </Image_Interpretation>")
    elements = dict(product.metadata)
    if product.mission is not None:
        elements["Abstracted_Metadata"] = {
            "MISSION": product.mission,
            **elements.get("Abstracted_Metadata", {}),
        }
    if elements:
        inner = "\n".join(
            f'        <MDElem name="{escape(element)}">\n'
            + "".join(
                f'            <MDATTR name="{escape(k)}" type="ascii">{escape(v)}</MDATTR>\n'
                for k, v in attributes.items()
            )
            + "        </MDElem>"
            for element, attributes in elements.items()
        )
        sections.append(
            '    <Dataset_Sources>\n    <MDElem name="metadata">\n'
            f"{inner}\n    </MDElem>\n    </Dataset_Sources>"
        )
    sections += product.extra_xml
    body = "\n".join(sections)
    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        f'<Dimap_Document name="{escape(name)}.dim">\n{body}\n</Dimap_Document>\n'
    )


def write_product(folder: Path, product: SyntheticProduct) -> Path:
    """Write `product` under `folder`; returns the path of its `.dim`."""
    data_dir = folder / f"{product.name}.data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for band in product.bands:
        if band.virtual_expression is not None:
            continue
        assert band.data.shape == (product.height, product.width), band.name
        code = ENVI_CODES[band.data_type]
        header = envi_header(band.description or band.name, product.width, product.height, code)
        (data_dir / f"{band.name}.hdr").write_text(header)
        (data_dir / f"{band.name}.img").write_bytes(big_endian(band.data, band.data_type))
    if product.tie_points is not None:
        grids = data_dir / "tie_point_grids"
        grids.mkdir(exist_ok=True)
        for grid, values in (
            ("latitude", product.tie_points.lat),
            ("longitude", product.tie_points.lon),
        ):
            rows, cols = values.shape
            (grids / f"{grid}.hdr").write_text(envi_header(grid, cols, rows, 4))
            (grids / f"{grid}.img").write_bytes(big_endian(values, "float32"))
    dim = folder / f"{product.name}.dim"
    dim.write_text(dim_xml(product), encoding="latin-1")
    return dim


# -- the products the tests use ---------------------------------------------------------------

MAP_WIDTH, MAP_HEIGHT = 20, 16  # not square: a transposed read cannot pass
MAP_TRANSFORM = (10.0, 0.0, 0.0, -10.0, 600000.0, 5100000.0)  # m00, m10, m01, m11, m02, m12


def map_bands(width: int = MAP_WIDTH, height: int = MAP_HEIGHT) -> list[SyntheticBand]:
    """A band of every kind the reader handles, each with known pixels."""
    rows, cols = numpy.mgrid[0:height, 0:width]
    reflectance = (rows * 1000 + cols * 7 + 1).astype("uint16")
    reflectance[0, :3] = 0  # nodata
    signed = ((rows * width + cols) % 256 - 128).astype("int8")  # -128..127
    counts = (numpy.uint64(3_000_000_000) + rows * 100_000 + cols).astype("uint32")  # > 2**31
    chl = ((rows * width + cols) % 200 + 1).astype("uint8")
    flags = ((rows + cols) % 4).astype("uint8")
    return [
        SyntheticBand(
            "refl_red",
            reflectance,
            "uint16",
            unit="dl",
            description="Reflectance, red",
            wavelength=665.0,
            bandwidth=10.0,
            factor=1e-4,
            offset=-0.1,
            nodata=0,
        ),
        SyntheticBand("signed_i8", signed, "int8", description="Signed bytes"),
        SyntheticBand("counts_u32", counts, "uint32", description="Large counts"),
        SyntheticBand("chl", chl, "uint8", unit="mg/m^3", factor=0.015, offset=-1.5, log10=True),
        SyntheticBand("quality_flags", flags, "uint8", flag_coding=True),
        SyntheticBand(
            "refl_pct",
            numpy.zeros((height, width)),
            "float32",
            virtual_expression="refl_red * 100",
        ),
    ]


def map_product(name: str = "S2_SYNTH_MAP", **changes) -> SyntheticProduct:
    values = {
        "name": name,
        "width": MAP_WIDTH,
        "height": MAP_HEIGHT,
        "bands": map_bands(),
        "wkt": UTM32N_WKT,
        "image_to_model": MAP_TRANSFORM,
        "mission": "SENTINEL-2A",
        **changes,
    }
    return SyntheticProduct(**values)


GCP_SIZE = 31  # 31x31 image, 4x4 tie points every 10 pixels from pixel centre 0.5
# square pixels in degrees: rio-tiler's WarpedVRT for GCPs then keeps the image's grid
LON0, LAT0, DLON, DLAT = 5.0, 45.0, 0.01, -0.01  # per image pixel


def affine_tie_points(curve: float = 0.0) -> TiePoints:
    """Tie points of lon = LON0 + DLON * x, lat = LAT0 + DLAT * y (+ curve * y**2 on lon)."""
    tie_points = TiePoints(numpy.zeros((4, 4)), numpy.zeros((4, 4)))
    x, y = tie_points.pixels()
    tie_points.lon = LON0 + DLON * x + curve * y**2
    tie_points.lat = LAT0 + DLAT * y
    return tie_points


def gcp_product(name: str = "MER_SYNTH_GCP", curve: float = 0.0, **changes) -> SyntheticProduct:
    rows, cols = numpy.mgrid[0:GCP_SIZE, 0:GCP_SIZE]
    values = {
        "name": name,
        "width": GCP_SIZE,
        "height": GCP_SIZE,
        "bands": [
            SyntheticBand("radiance_1", (rows * 100 + cols + 1).astype("uint16"), "uint16"),
            SyntheticBand("l1_flags", (rows % 3).astype("int16"), "int16"),
        ],
        "product_type": "MER_RR__1P",
        "tie_points": affine_tie_points(curve),
        **changes,
    }
    return SyntheticProduct(**values)
