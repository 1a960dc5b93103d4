"""Small Sentinel-2 SAFE products written for the tests, shaped like the real ones.

The documents follow the structure of real MTD_MSIL1C.xml / MTD_MSIL2A.xml / MTD_TL.xml
(namespaced roots, Product_Info with Granule_List, Product_Image_Characteristics with the
quantification values and, from processing baseline 04.00, the per-band offsets; Tile_Geocoding
with Size/Geoposition per resolution; Image_Content_QI) and of the older (before December 2016)
products: `S2A_OPER_MTD_SAFL1C_PDMC_*.xml`, several granules named
`S2A_OPER_MSI_L1C_TL_*_N02.02` holding `S2A_OPER_MTD_L1C_TL_*.xml` and
`IMG_DATA/..._B02.jp2`. Band files are lossless JPEG2000 (GDAL's JP2OpenJPEG) of 60 x 60
pixels at 10 m; the arrays written are returned so tests compare served pixels with them.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_points

SPECTRAL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10")
SPECTRAL += ("B11", "B12")
NATIVE = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20}
NATIVE |= {"B8A": 20, "B11": 20, "B12": 20, "B01": 60, "B09": 60, "B10": 60}
# L2A folders: what each R{res}m holds (as in baseline 05.xx products)
L2A_FILES = {
    10: ("B02", "B03", "B04", "B08", "AOT", "WVP"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL", "AOT", "WVP"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL"),
}
WAVELENGTHS = {"B02": (456, 532, 492.3), "B04": (646, 685, 665), "B8A": (848, 880, 864)}
SIZE = 60  # pixels at 10 m
CRS = "EPSG:32632"


@dataclass
class GranuleSpec:
    """One granule: its tile, where it sits, and the data its files get."""

    tile: str = "32TPS"
    origin: tuple[float, float] = (600000.0, 5000040.0)
    cloudy: float = 12.5
    sensing: str = "2024-06-01T10:36:31.024Z"
    seed: int = 1


@dataclass
class SafeSpec:
    """A product: level, baseline, naming and its granules."""

    level: str = "L2A"  # or L1C
    baseline: str = "05.10"
    compact: bool = True
    platform: str = "S2B"
    start: str = "2024-06-01T10:36:29.024Z"
    relative_orbit: int = 8
    cloud_assessment: float = 20.0
    offsets: dict[str, float] | None = None  # band -> offset; default -1000 from 04.00
    granules: list[GranuleSpec] = field(default_factory=lambda: [GranuleSpec()])
    footprint: list[tuple[float, float]] | None = None  # lon/lat ring; default: all tiles

    @property
    def name(self) -> str:
        """The product name, without .SAFE."""
        n = self.baseline.replace(".", "")
        if self.compact:
            tile = self.granules[0].tile
            return (
                f"{self.platform}_MSI{self.level}_20240601T103629_N{n}_R008_T{tile}_20240601T133011"
            )
        kind = "OPER_PRD" if self.level == "L1C" else "USER_PRD"
        when = "20160607T154053_R022_V20160605T103031_20160605T103031"
        return f"{self.platform}_{kind}_MSI{self.level}_PDMC_{when}"

    def offset(self, band: str) -> float:
        """The band's offset as the product document gives it."""
        if self.offsets is not None:
            return self.offsets.get(band, 0.0)
        return -1000.0 if self.baseline >= "04.00" else 0.0


@dataclass
class WrittenGranule:
    """What a granule got: its identifier, folder and the array of each band file."""

    identifier: str
    folder: Path
    spec: GranuleSpec
    arrays: dict[tuple[str, int], numpy.ndarray]  # (band, resolution m) -> pixels

    def finest(self, band: str) -> tuple[numpy.ndarray, int]:
        """The band's finest array and its resolution."""
        res = min(r for b, r in self.arrays if b == band)
        return self.arrays[(band, res)], res


@dataclass
class WrittenProduct:
    """A written product: its SAFE folder (or zip) and granules."""

    path: Path
    safe: Path
    spec: SafeSpec
    granules: list[WrittenGranule]


def band_array(band: str, res: int, seed: int) -> numpy.ndarray:
    """Deterministic pixels: DN 1..12000 (SCL 1..11), a nodata strip of 0 on the right."""
    size = SIZE * 10 // res
    rng = numpy.random.default_rng([seed, res, sum(map(ord, band))])
    if band == "SCL":
        data = rng.integers(1, 12, (size, size), dtype="uint8")
    else:
        data = rng.integers(1, 12001, (size, size), dtype="uint16")
    data[:, size - max(1, size // 6) :] = 0
    return data


def write_jp2(path: Path, data: numpy.ndarray, origin: tuple[float, float], res: int) -> None:
    """A lossless JPEG2000 in the tile's CRS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "JP2OpenJPEG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": CRS,
        "transform": from_origin(*origin, res, res),
        "QUALITY": 100,
        "REVERSIBLE": True,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _lonlat(x: float, y: float) -> tuple[float, float]:
    lons, lats = transform_points(CRS, "EPSG:4326", [x], [y])
    return lons[0], lats[0]


def tile_ring(granule: GranuleSpec) -> list[tuple[float, float]]:
    """The tile's corners in lon/lat."""
    x, y = granule.origin
    span = SIZE * 10
    return [_lonlat(*c) for c in ((x, y), (x + span, y), (x + span, y - span), (x, y - span))]


def granule_names(spec: SafeSpec, granule: GranuleSpec) -> tuple[str, str, str]:
    """(granuleIdentifier, folder name, tile document name)."""
    if spec.compact:
        level = spec.level
        ident = (
            f"{spec.platform}_OPER_MSI_{level}_TL_2BPS_20240601T133011_A037712_"
            f"T{granule.tile}_N{spec.baseline}"
        )
        return ident, f"{level}_T{granule.tile}_A037712_20240601T103631", "MTD_TL.xml"
    kind = "OPER" if spec.level == "L1C" else "USER"
    ident = (
        f"{spec.platform}_{kind}_MSI_{spec.level}_TL_SGS__20160605T153005_A005000_"
        f"T{granule.tile}_N{spec.baseline}"
    )
    stem = ident.rsplit("_N", 1)[0].replace("_MSI_", "_MTD_", 1)
    return ident, ident, f"{stem}.xml"


def band_files(spec: SafeSpec) -> list[tuple[str, int]]:
    """(band, resolution) of every file a granule holds."""
    if spec.level == "L1C":
        return [(b, NATIVE[b]) for b in SPECTRAL]
    return [(b, res) for res, bands in L2A_FILES.items() for b in bands]


def file_stem(spec: SafeSpec, granule: GranuleSpec, ident: str, band: str, res: int) -> str:
    """A band file's path from the SAFE root, without .jp2 (as IMAGE_FILE / IMAGE_ID say)."""
    _, folder, _ = granule_names(spec, granule)
    suffix = f"_{res}m" if spec.level == "L2A" else ""
    sub = f"R{res}m/" if spec.level == "L2A" else ""
    if spec.compact:
        name = f"T{granule.tile}_20240601T103629_{band}{suffix}"
    else:
        name = f"{ident.rsplit('_N', 1)[0]}_{band}{suffix}"
    return f"GRANULE/{folder}/IMG_DATA/{sub}{name}"


def product_document(spec: SafeSpec) -> str:
    """MTD_MSIL1C.xml / MTD_MSIL2A.xml (or the older S2A_OPER_MTD_SAFL1C_*.xml)."""
    level = spec.level[1:]
    granule_tag = "Granule" if spec.compact else "Granules"
    file_tag = "IMAGE_FILE" if spec.compact else "IMAGE_ID"
    granules = []
    for granule in spec.granules:
        ident, _, _ = granule_names(spec, granule)
        files = "".join(
            f"<{file_tag}>"
            + (
                file_stem(spec, granule, ident, b, r)
                if spec.compact
                else file_stem(spec, granule, ident, b, r).rsplit("/", 1)[1]
            )
            + f"</{file_tag}>"
            for b, r in band_files(spec)
        )
        granules.append(
            f"<{granule_tag} datastripIdentifier="
            f'"{spec.platform}_OPER_MSI_{spec.level}_DS_2BPS_20240601T133011_S20240601T103631_'
            f'N{spec.baseline}" '
            f'granuleIdentifier="{ident}" imageFormat="JPEG2000">{files}</{granule_tag}>'
        )
    if spec.level == "L1C":
        quantification = '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>'
        offset_tag, offset_list = "RADIO_ADD_OFFSET", "Radiometric_Offset_List"
    else:
        quantification = (
            "<QUANTIFICATION_VALUES_LIST>"
            '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>'
            '<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
            '<WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>'
            "</QUANTIFICATION_VALUES_LIST>"
        )
        offset_tag, offset_list = "BOA_ADD_OFFSET", "BOA_ADD_OFFSET_VALUES_LIST"
    offsets = ""
    if spec.baseline >= "04.00" or spec.offsets:
        offsets = (
            f"<{offset_list}>"
            + "".join(
                f'<{offset_tag} band_id="{i}">{spec.offset(b):g}</{offset_tag}>'
                for i, b in enumerate(SPECTRAL)
            )
            + f"</{offset_list}>"
        )
    spectral = "".join(
        f'<Spectral_Information bandId="{SPECTRAL.index(b)}" physicalBand="B{b[1:].lstrip("0")}">'
        f'<RESOLUTION>{NATIVE[b]}</RESOLUTION><Wavelength><MIN unit="nm">{lo}</MIN>'
        f'<MAX unit="nm">{hi}</MAX><CENTRAL unit="nm">{c}</CENTRAL></Wavelength>'
        "</Spectral_Information>"
        for b, (lo, hi, c) in WAVELENGTHS.items()
    )
    ring = spec.footprint
    if ring is None:
        corners = [tile_ring(g) for g in spec.granules]
        lons = [p[0] for c in corners for p in c]
        lats = [p[1] for c in corners for p in c]
        ring = [(min(lons), max(lats)), (max(lons), max(lats)), (max(lons), min(lats)),
                (min(lons), min(lats))]  # fmt: skip
    positions = " ".join(f"{lat} {lon}" for lon, lat in [*ring, ring[0]])
    root = f"Level-{level}_User_Product"
    uri = f"{spec.name}.SAFE" if spec.compact else spec.name
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level}.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{spec.start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{spec.start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[:2]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{spec.baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>2024-06-01T13:30:11.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{spec.platform}_20240601T103629_037712_N{spec.baseline}">
        <SPACECRAFT_NAME>Sentinel-2{spec.platform[-1]}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{spec.start}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>{spec.relative_orbit}</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Product_Organisation><Granule_List>{"".join(granules)}</Granule_List></Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      {quantification}
      {offsets}
      <Spectral_Information_List>{spectral}</Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Product_Footprint><Product_Footprint><Global_Footprint>
      <EXT_POS_LIST>{positions} </EXT_POS_LIST>
    </Global_Footprint></Product_Footprint></Product_Footprint>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>{spec.cloud_assessment}</Cloud_Coverage_Assessment>
  </n1:Quality_Indicators_Info>
</n1:{root}>
"""


def tile_document(spec: SafeSpec, granule: GranuleSpec) -> str:
    """The granule's MTD_TL.xml."""
    level = spec.level[1:]
    ident, _, _ = granule_names(spec, granule)
    x, y = granule.origin
    sizes = "".join(
        f'<Size resolution="{r}"><NROWS>{SIZE * 10 // r}</NROWS>'
        f"<NCOLS>{SIZE * 10 // r}</NCOLS></Size>"
        for r in (10, 20, 60)
    )
    positions = "".join(
        f'<Geoposition resolution="{r}"><ULX>{x:g}</ULX><ULY>{y:g}</ULY><XDIM>{r}</XDIM>'
        f"<YDIM>-{r}</YDIM></Geoposition>"
        for r in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{level}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{level}_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">{ident}</TILE_ID>
    <SENSING_TIME metadataLevel="Standard">{granule.sensing}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 32N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>{CRS}</HORIZONTAL_CS_CODE>
      {sizes}{positions}
    </Tile_Geocoding>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info metadataLevel="Standard">
    <Image_Content_QI>
      <CLOUDY_PIXEL_PERCENTAGE>{granule.cloudy}</CLOUDY_PIXEL_PERCENTAGE>
      <SNOW_ICE_PERCENTAGE>0.5</SNOW_ICE_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
</n1:Level-{level}_Tile_ID>
"""


def write_safe(folder: Path, spec: SafeSpec, zipped: str | None = None) -> WrittenProduct:
    """Write the product under `folder`; `zipped` ('.SAFE.zip' or '.zip'): zip it (the
    SAFE folder as the archive's top folder) and remove the folder."""
    safe = folder / f"{spec.name}.SAFE"
    safe.mkdir(parents=True)
    mtd = f"MTD_MSI{spec.level}.xml"
    if not spec.compact:
        mtd = spec.name.replace("_PRD_MSI", "_MTD_SAF", 1) + ".xml"
    (safe / mtd).write_text(product_document(spec))
    (safe / "manifest.safe").write_text("<xfdu:XFDU xmlns:xfdu='urn:ccsds:schema:xfdu:1'/>")
    written = []
    for granule in spec.granules:
        ident, folder_name, document = granule_names(spec, granule)
        gfolder = safe / "GRANULE" / folder_name
        gfolder.mkdir(parents=True)
        (gfolder / document).write_text(tile_document(spec, granule))
        arrays = {}
        for band, res in band_files(spec):
            data = band_array(band, res, granule.seed)
            write_jp2(safe / f"{file_stem(spec, granule, ident, band, res)}.jp2", data,
                      granule.origin, res)  # fmt: skip
            arrays[(band, res)] = data
        written.append(WrittenGranule(ident, gfolder, granule, arrays))
    path = safe
    if zipped:
        path = folder / f"{spec.name}{zipped}"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(safe.rglob("*")):
                archive.write(file, file.relative_to(folder).as_posix())
        shutil.rmtree(safe)
    return WrittenProduct(path, safe, spec, written)
