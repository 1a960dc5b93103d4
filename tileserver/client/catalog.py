"""Products, bands, images and searches with the Descartes Labs Catalog client's names,
over tileserver's HTTP API (`/products`, `/images`, `/stac/search`, `/summary`,
`/searches`, downloads). Attribute names are the Catalog's; where the server spells a field
otherwise (`cloud_fraction` 0..1 is `eo:cloud_cover` in percent, `acquired` is `datetime`)
the mapping is `IMAGE_FIELDS` and the record converters below.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections import namedtuple
from collections.abc import Iterator, Sequence
from itertools import groupby as _groupby
from typing import Any

import numpy

from tileserver.client import raster
from tileserver.client.http import CatalogClient, NotFoundError, client_or_default
from tileserver.client.properties import Expression, Field, Fields, parse_time, time_text

PAGE = 1000  # images per /stac/search page

IMAGE_FIELDS = Fields(
    {
        "acquired": Field("datetime", time=True),
        "created": Field("created", time=True),
        "modified": Field("updated", time=True),
        "cloud_fraction": Field("eo:cloud_cover", lambda v: v * 100),
        "product_id": Field("collection"),
        "name": Field("id"),
    }
)
SORT_FIELDS = {
    "acquired": "datetime",
    "cloud_fraction": "eo:cloud_cover",
    "name": "id",
    "product_id": "collection",
    "modified": "updated",
}


class DocumentObject:
    """Attributes kept in a server document; unknown keyword arguments are refused."""

    _fields: tuple[str, ...] = ()

    def __init__(self, client: CatalogClient | None = None, **kwargs):
        self._client = client
        self._saved = False
        for name in self._fields:
            setattr(self, name, None)
        for name, value in kwargs.items():
            if name not in self._fields:
                raise AttributeError(f"{type(self).__name__} has no attribute '{name}'")
            setattr(self, name, value)

    @property
    def client(self) -> CatalogClient:
        """The client this object talks through (the default one when none was given)."""
        return client_or_default(self._client)

    @property
    def state(self) -> str:
        """'saved' once it exists on the server, else 'unsaved' (as the Catalog's)."""
        return "saved" if self._saved else "unsaved"

    def __repr__(self) -> str:
        return f"{type(self).__name__}: {getattr(self, 'id', None)}"


# --- products -------------------------------------------------------------------------


class Product(DocumentObject):
    """A product (STAC collection) with its ACL lists `owners`, `writers`, `readers`."""

    _fields = (
        "id",
        "name",
        "description",
        "tags",
        "start_datetime",
        "end_datetime",
        "owners",
        "writers",
        "readers",
        "default_bands",
        "extra_properties",
        "created",
        "modified",
    )

    def __init__(self, client: CatalogClient | None = None, **kwargs):
        super().__init__(client, **kwargs)
        self._doc: dict = {}

    @classmethod
    def _from_doc(cls, doc: dict, client: CatalogClient | None) -> Product:
        product = cls(client)
        product._doc = doc
        for name in cls._fields:
            key = "properties" if name == "extra_properties" else name
            value = doc.get(key)
            if name in ("start_datetime", "end_datetime", "created", "modified") and value:
                value = parse_time(value)
            setattr(product, name, value)
        product._saved = True
        return product

    def _to_doc(self) -> dict:
        doc = {k: v for k, v in self._doc.items() if k not in ("created", "modified")}
        for name in self._fields:
            if name in ("created", "modified"):
                continue
            value = getattr(self, name)
            key = "properties" if name == "extra_properties" else name
            if value is None:
                doc.pop(key, None)
            elif isinstance(value, dt.datetime | dt.date):
                doc[key] = time_text(value)
            else:
                doc[key] = list(value) if isinstance(value, tuple) else value
        return doc

    @classmethod
    def get(cls, id: str, client: CatalogClient | None = None) -> Product | None:
        """The product, or None when it does not exist (or is hidden from this key)."""
        try:
            doc = client_or_default(client).json("GET", f"/products/{id}")
        except NotFoundError:
            return None
        return cls._from_doc(doc, client)

    @classmethod
    def get_or_create(cls, id: str, client: CatalogClient | None = None, **kwargs) -> Product:
        """The saved product, with `kwargs` applied, or a new unsaved one (call save())."""
        product = cls.get(id, client=client) or cls(client, id=id)
        for name, value in kwargs.items():
            setattr(product, name, value)
        return product

    @classmethod
    def get_many(cls, ids: Sequence[str], client: CatalogClient | None = None) -> list[Product]:
        """The products of `ids` that exist."""
        return [p for p in (cls.get(i, client=client) for i in ids) if p is not None]

    @classmethod
    def search(cls, client: CatalogClient | None = None) -> ProductSearch:
        """A search over the products this key may read."""
        return ProductSearch(client)

    def save(self) -> None:
        """Create the product (POST /products), or replace it with these attributes.

        The server's current bands are kept: as in the Catalog, bands change only through
        Band.save/delete, so saving a product object read before a band was added keeps it.
        """
        if not self.id:
            raise ValueError("a product needs an id")
        if self._saved:
            current = self.client.json("GET", f"/products/{self.id}")
            self._put({**self._to_doc(), "bands": current.get("bands", [])})
        else:
            self._update(self.client.json("POST", "/products", json=self._to_doc()))

    def _put(self, doc: dict) -> None:
        self._update(self.client.json("PUT", f"/products/{self.id}", json=doc))

    def _update(self, doc: dict) -> None:
        fresh = Product._from_doc(doc, self._client)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})

    def reload(self) -> None:
        """Read the product again from the server."""
        fresh = Product.get(self.id, client=self._client)
        if fresh is None:
            raise NotFoundError(f"product '{self.id}' not found")
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})

    def delete(self, cascade: bool = False) -> None:
        """Delete the product; it must have no images unless `cascade` deletes them too."""
        params = {"cascade": "true"} if cascade else {}
        self.client.request("DELETE", f"/products/{self.id}", params=params)
        self._saved = False

    def delete_related_objects(self) -> int:
        """Delete the product's images (its bands go with it); returns how many."""
        images = list(self.images())
        for image in images:
            image.delete()
        return len(images)

    def named_id(self, name: str) -> str:
        """`product_id:name`, the id of this product's band or image called `name`."""
        return f"{self.id}:{name}"

    def bands(self) -> list[Band]:
        """The product's bands, each as its type's class."""
        return [Band._from_doc(b, self.id, self._client) for b in self._doc.get("bands", [])]

    def get_band(self, name: str) -> Band | None:
        """The band called `name`, or None."""
        return next((b for b in self.bands() if b.name == name), None)

    def images(self) -> ImageSearch:
        """A search over this product's images."""
        return ImageSearch(self._client, products=[self.id])

    def get_image(self, name: str) -> Image | None:
        """The image called `name` in this product, or None."""
        return Image.get(self.named_id(name), client=self._client)

    def image_uploads(self):
        """This key's uploads into the product (a search to filter, or iterate)."""
        from tileserver.client.uploads import UploadSearch

        return UploadSearch(self._client, product_id=self.id)


# --- bands ----------------------------------------------------------------------------

Resolution = namedtuple("Resolution", ["value", "unit"], defaults=["meters"])


class Band(DocumentObject):
    """A band of a product; its `type` decides its class (SpectralBand, MaskBand, ...)."""

    type: str = "generic"
    _fields = (
        "name",
        "product_id",
        "description",
        "data_type",
        "nodata",
        "data_range",
        "display_range",
        "physical_range",
        "physical_range_unit",
        "resolution",
        "file_index",
        "band_index",
        "is_alpha",
        "colormap_name",
        "colormap",
        "class_labels",
        "wavelength_nm_center",
        "wavelength_nm_min",
        "wavelength_nm_max",
        "wavelength_nm_fwhm",
        "processing_levels",
        "vendor_order",
        "tags",
    )

    def __init__(self, client: CatalogClient | None = None, product=None, **kwargs):
        if product is not None:
            kwargs["product_id"] = getattr(product, "id", product)
            client = client or getattr(product, "_client", None)
        super().__init__(client, **kwargs)

    @property
    def id(self) -> str:
        """`product_id:name`, as the Catalog spells a band's id."""
        return f"{self.product_id}:{self.name}"

    @staticmethod
    def _from_doc(doc: dict, product_id: str, client) -> Band:
        kind = BAND_TYPES.get(doc.get("type", "spectral"), GenericBand)
        band = kind(client)
        for name in Band._fields:
            value = doc.get(name)
            if name == "resolution" and value is not None:
                value = Resolution(value["value"], value.get("unit", "meters"))
            if isinstance(value, list) and name.endswith("_range"):
                value = tuple(value)
            setattr(band, name, value)
        band.product_id = product_id
        band._saved = True
        return band

    def _to_doc(self) -> dict:
        doc: dict[str, Any] = {"type": self.type}
        for name in self._fields:
            value = getattr(self, name)
            if value is None or name == "product_id":
                continue
            if name == "resolution":
                value = _resolution(value)
            doc[name] = list(value) if isinstance(value, tuple) else value
        return doc

    @classmethod
    def get(cls, id: str, client: CatalogClient | None = None) -> Band | None:
        """The band `product_id:name`, or None."""
        product_id, _, name = id.rpartition(":")
        product = Product.get(product_id, client=client)
        return product.get_band(name) if product is not None else None

    @classmethod
    def get_or_create(cls, name: str, product=None, client=None, **kwargs) -> Band:
        """The saved band with `kwargs` applied, or a new unsaved one (call save())."""
        product_id = getattr(product, "id", product) or kwargs.get("product_id")
        band = cls.get(f"{product_id}:{name}", client=client) or cls(
            client, name=name, product_id=product_id
        )
        for key, value in kwargs.items():
            setattr(band, key, value)
        return band

    def save(self) -> None:
        """Add or replace this band in its product (a read and a PUT of the product)."""
        if not self.name or not self.product_id:
            raise ValueError("a band needs a name and a product")
        product = Product.get(self.product_id, client=self._client)
        if product is None:
            raise NotFoundError(f"product '{self.product_id}' not found")
        bands = [b for b in product._doc.get("bands", []) if b["name"] != self.name]
        product._put({**product._to_doc(), "bands": [*bands, self._to_doc()]})
        self._saved = True

    def delete(self) -> None:
        """Remove this band from its product."""
        product = Product.get(self.product_id, client=self._client)
        if product is None or product.get_band(self.name) is None:
            raise NotFoundError(f"band '{self.id}' not found")
        bands = [b for b in product._doc["bands"] if b["name"] != self.name]
        product._put({**product._to_doc(), "bands": bands})
        self._saved = False


def _resolution(value) -> dict:
    if isinstance(value, int | float):
        return {"value": value, "unit": "meters"}
    if isinstance(value, dict):
        return value
    return {"value": value.value, "unit": getattr(value.unit, "value", value.unit)}


class SpectralBand(Band):
    """A band of reflectance or radiance values."""

    type = "spectral"


class MaskBand(Band):
    """A band marking valid (nonzero) and invalid pixels."""

    type = "mask"


class ClassBand(Band):
    """A band of class codes (land cover, scene classification)."""

    type = "class"


class GenericBand(Band):
    """A band with no more specific type."""

    type = "generic"


class MicrowaveBand(Band):
    """A band of radar values."""

    type = "microwave"


BAND_TYPES = {
    cls.type: cls for cls in (SpectralBand, MaskBand, ClassBand, GenericBand, MicrowaveBand)
}


# --- images ---------------------------------------------------------------------------


class Image(DocumentObject):
    """An image (STAC item). `cloud_fraction` is 0..1 as in the Catalog."""

    _fields = (
        "name",
        "product_id",
        "acquired",
        "cloud_fraction",
        "geometry",
        "bbox",
        "cs_code",
        "geotrans",
        "x_pixels",
        "y_pixels",
        "files",
        "storage_state",
        "extra_properties",
        "created",
        "modified",
    )

    def __init__(self, client: CatalogClient | None = None, product=None, id=None, **kwargs):
        if product is not None:
            kwargs["product_id"] = getattr(product, "id", product)
            client = client or getattr(product, "_client", None)
        if id is not None:
            kwargs["product_id"], _, kwargs["name"] = id.partition(":")
        super().__init__(client, **kwargs)
        self._doc: dict | None = None

    @property
    def id(self) -> str:
        """`product_id:name`, the image's id."""
        return f"{self.product_id}:{self.name}"

    @property
    def date(self) -> dt.datetime | None:
        """The acquisition time (the Catalog's older name for `acquired`)."""
        return self.acquired

    @property
    def product(self) -> Product | None:
        """The image's product, read from the server."""
        return Product.get(self.product_id, client=self._client)

    @classmethod
    def _from_doc(cls, doc: dict, client) -> Image:
        image = cls(client)
        image._doc = doc
        cloud = doc.get("cloud_cover")
        image.__dict__.update(
            name=doc["name"],
            product_id=doc["product_id"],
            acquired=parse_time(doc["acquired"]),
            cloud_fraction=cloud / 100 if cloud is not None else None,
            geometry=doc.get("geometry"),
            bbox=tuple(doc["bbox"]) if doc.get("bbox") else None,
            cs_code=doc.get("crs"),
            geotrans=tuple(doc["geotrans"]) if doc.get("geotrans") else None,
            x_pixels=doc.get("width"),
            y_pixels=doc.get("height"),
            files=[f["href"] for f in doc.get("files", [])],
            storage_state=doc.get("storage_state"),
            extra_properties=dict(doc.get("properties") or {}),
            created=parse_time(doc["created"]) if doc.get("created") else None,
            modified=parse_time(doc["modified"]) if doc.get("modified") else None,
        )
        image._saved = True
        return image

    @classmethod
    def _from_item(cls, item: dict, client) -> Image:
        """An image from a STAC item of a search (its files are read again on save())."""
        props = dict(item["properties"])
        image = cls(client)
        cloud = props.pop("eo:cloud_cover", None)
        transform = props.pop("proj:transform", None)
        shape = props.pop("proj:shape", None)
        image.__dict__.update(
            name=item["id"],
            product_id=item["collection"],
            acquired=parse_time(props.pop("datetime")),
            cloud_fraction=cloud / 100 if cloud is not None else None,
            geometry=item.get("geometry"),
            bbox=tuple(item["bbox"]) if item.get("bbox") else None,
            cs_code=props.pop("proj:code", None) or props.pop("proj:wkt2", None),
            geotrans=(
                transform[2],
                transform[0],
                transform[1],
                transform[5],
                transform[3],
                transform[4],
            )
            if transform
            else None,
            x_pixels=shape[1] if shape else None,
            y_pixels=shape[0] if shape else None,
            created=parse_time(props["created"]) if props.get("created") else None,
            modified=parse_time(props["updated"]) if props.get("updated") else None,
        )
        for key in ("created", "updated"):
            props.pop(key, None)
        image.extra_properties = props
        image._saved = True
        return image

    def _to_doc(self) -> dict:
        doc = dict(self._doc or {})
        for key in ("created", "modified", "id", "bbox"):
            doc.pop(key, None)
        doc.update(
            name=self.name,
            product_id=self.product_id,
            acquired=time_text(self.acquired),
            geometry=getattr(self.geometry, "__geo_interface__", self.geometry),
            properties=dict(self.extra_properties or {}),
        )
        if self.cloud_fraction is not None:
            doc["cloud_cover"] = self.cloud_fraction * 100
        if self.files is not None:
            old = {f["href"]: f for f in doc.get("files", [])}
            doc["files"] = [old.get(h, {"href": h}) for h in self.files]
        for name, key in (
            ("cs_code", "crs"),
            ("geotrans", "geotrans"),
            ("x_pixels", "width"),
            ("y_pixels", "height"),
            ("storage_state", "storage_state"),
        ):
            value = getattr(self, name)
            if value is not None:
                doc[key] = list(value) if isinstance(value, tuple) else value
        return doc

    @classmethod
    def get(cls, id: str, client: CatalogClient | None = None) -> Image | None:
        """The image `product_id:name`, or None."""
        try:
            doc = client_or_default(client).json("GET", f"/images/{id}")
        except NotFoundError:
            return None
        return cls._from_doc(doc, client)

    @classmethod
    def search(cls, client: CatalogClient | None = None) -> ImageSearch:
        """A search over every image this key may read (filter by `product_id`)."""
        return ImageSearch(client)

    def save(self) -> None:
        """Create or replace the image (PUT /images/{id}) from files the server can read;
        send pixels the server cannot read with upload() or upload_ndarray()."""
        if self._saved and self._doc is None:  # from a search: keep what items leave out
            self._doc = self.client.json("GET", f"/images/{self.id}")
        doc = self.client.json("PUT", f"/images/{self.id}", json=self._to_doc())
        fresh = Image._from_doc(doc, self._client)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})

    def delete(self) -> None:
        """Delete the image record (its files stay where they are)."""
        self.client.request("DELETE", f"/images/{self.id}")
        self._saved = False

    @classmethod
    def exists(cls, id: str, client: CatalogClient | None = None) -> bool:
        """Whether the image exists (and this key may read it)."""
        return cls.get(id, client=client) is not None

    def _check_upload(self, overwrite: bool) -> None:
        if not self.name or not self.product_id:
            raise ValueError("id field required")
        if self._saved:
            raise ValueError(
                f"Image {self.id} has been saved. Please use an unsaved image for uploading"
            )
        if overwrite:
            raise NotImplementedError(
                "overwrite=True: an upload never replaces an image on this server; "
                "delete the image first, then upload"
            )
        if Image.exists(self.id, client=self._client):
            raise ValueError(
                f"Image {self.id} already exists in the catalog. Please use a new image id"
            )

    def upload(self, files, upload_options=None, overwrite=False):
        """Send a GeoTIFF (or JPEG2000) file, a path or an open binary file, to become this
        image (POST /products/{id}/uploads, then its bytes); returns its ImageUpload.

        The image's name, `acquired` (else the file's time tag), `cloud_fraction` and
        `extra_properties` are kept; its footprint and grid come from the file. One file
        per image: the server's images made by uploads have a single file."""
        from tileserver.client import uploads

        self._check_upload(overwrite)
        source = uploads.single(files, "files")
        size, md5 = uploads._measure(source)
        body = uploads.upload_request(self, "file", upload_options, None, None, size, md5)
        return uploads.send(self, source, body, size, md5)

    def upload_ndarray(
        self,
        ndarray,
        upload_options=None,
        raster_meta=None,
        overviews=None,
        overview_resampler=None,
        overwrite=False,
    ):
        """Send an array (rows, cols) or (bands, rows, cols) to become this image, placed by
        the image's `cs_code` and `geotrans` or else by `raster_meta` (the `raster_info` of
        an `ndarray(...)` call); returns its ImageUpload."""
        import io

        from tileserver.client import uploads

        self._check_upload(overwrite)
        data = uploads.npy_bytes(uploads.single(ndarray, "arrays"))
        body = uploads.upload_request(
            self,
            "ndarray",
            upload_options,
            overviews,
            overview_resampler,
            len(data),
            hashlib.md5(data, usedforsecurity=False).hexdigest(),
        )
        body["array"] = uploads.array_grid(self, raster_meta)
        return uploads.send(self, io.BytesIO(data), body, body["size"], body["md5"])

    def image_uploads(self):
        """This key's uploads of this image (a search to filter, or iterate)."""
        from tileserver.client.properties import properties
        from tileserver.client.uploads import UploadSearch

        search = UploadSearch(self._client, product_id=self.product_id)
        return search.filter(properties.image_id == self.id)

    # pixels

    def _download(self, suffix: str, params, body) -> bytes:
        return raster.fetch(self.client, f"/images/{self.id}/{suffix}", params, body)

    def ndarray(
        self,
        bands,
        geocontext=None,
        crs=None,
        resolution=None,
        all_touched=None,
        mask_nodata=True,
        mask_alpha=None,
        bands_axis=0,
        raster_info=False,
        resampler=None,
        processing_level=None,
        scaling=None,
        data_type=None,
        progress=None,
    ):
        """The image's bands as an array (bands, y, x) (masked where invalid unless
        `mask_nodata=False`); with `raster_info`, also the server's description of it."""
        _, params, body = raster.raster_params(
            bands,
            geocontext=geocontext,
            crs=crs,
            resolution=resolution,
            resampler=resampler,
            processing_level=processing_level,
            scaling=scaling,
            data_type=data_type,
            mask_alpha=mask_alpha,
        )
        array = raster.read_geotiff(self._download("download.tif", params, body), mask_nodata)
        array = _bands_axis(array, 0, bands_axis)
        if raster_info:
            info = raster.raster_info(self.client, f"/images/{self.id}/raster_info", params, body)
            return array, info
        return array

    def download(
        self,
        bands,
        geocontext=None,
        crs=None,
        resolution=None,
        all_touched=None,
        dest=None,
        format="tif",
        resampler=None,
        processing_level=None,
        scaling=None,
        data_type=None,
        nodata=None,
        progress=None,
    ) -> str:
        """Write the bands as a GeoTIFF (`format="tif"`) or .npy to `dest` (default
        `<image id>-<bands>.<format>` here); returns the path."""
        fmt = getattr(format, "value", format).lower().lstrip(".")
        if fmt not in ("tif", "npy"):
            raise ValueError(f"format '{fmt}': the server writes tif or npy")
        names, params, body = raster.raster_params(
            bands,
            geocontext=geocontext,
            crs=crs,
            resolution=resolution,
            resampler=resampler,
            processing_level=processing_level,
            scaling=scaling,
            data_type=data_type,
            nodata=nodata,
        )
        content = self._download(f"download.{fmt}", params, body)
        if dest is None:
            dest = f"{self.id.replace(':', '_')}-{'-'.join(names)}.{fmt}"
        return raster.write_file(content, dest)

    def scaling_parameters(self, bands, processing_level=None, scaling=None, data_type=None):
        """(scales, data_type) as the Catalog's client computes them (locally, from the
        product's band definitions)."""
        from tileserver.scaling_rules import scaling_parameters

        product = Product.get(self.product_id, client=self._client)
        props = {b["name"]: b for b in product._doc.get("bands", [])}
        names = raster.band_list(bands)
        missing = [n for n in names if n not in props]
        if missing:
            raise ValueError(f"Invalid bands: band '{missing[0]}' is not available")
        return scaling_parameters([props[n] for n in names], scaling, data_type, processing_level)

    def coverage(self, geom) -> float:
        """The fraction of `geom` (GeoJSON or shapely) this image's footprint covers."""
        from shapely.geometry import shape

        area = shape(getattr(geom, "__geo_interface__", geom))
        return area.intersection(shape(self.geometry)).area / area.area if area.area else 0.0


def _bands_axis(array: numpy.ndarray, axis: int, bands_axis: int) -> numpy.ndarray:
    return (
        array
        if bands_axis in (axis, axis - array.ndim)
        else numpy.moveaxis(array, axis, bands_axis)
    )


# --- searches -------------------------------------------------------------------------

SummaryResult = namedtuple(
    "SummaryResult", ["count", "bytes", "products", "interval_start"], defaults=[None, None]
)


class Search:
    """A lazy search: `filter`, `sort`, `limit` give new searches; iterating runs it."""

    def __init__(self, client: CatalogClient | None = None):
        self._client = client
        self._filters: list[Expression] = []
        self._sort: list[tuple[str, bool]] = []
        self._limit: int | None = None

    @property
    def client(self) -> CatalogClient:
        """The client this search talks through (the default one when none was given)."""
        return client_or_default(self._client)

    def _clone(self):
        other = copy.copy(self)
        other._filters = list(self._filters)
        other._sort = list(self._sort)
        return other

    def filter(self, properties: Expression):
        """Only what matches the expression (several filters all apply)."""
        if not isinstance(properties, Expression):
            raise TypeError("filter() takes an expression: properties.NAME < value, ...")
        other = self._clone()
        other._filters.append(properties)
        return other

    def sort(self, field: str, ascending: bool = True):
        """Order by `field` (a leading '-' means descending); sorts add up."""
        if field.startswith("-"):
            field, ascending = field[1:], False
        other = self._clone()
        other._sort.append((field, ascending))
        return other

    def limit(self, limit: int | None):
        """At most `limit` results."""
        other = self._clone()
        other._limit = limit
        return other

    def __iter__(self) -> Iterator:
        raise NotImplementedError

    def collect(self, **kwargs) -> list:
        """Every match, as a list."""
        return list(self)

    def count(self) -> int:
        """How many match (counted by iterating; subclasses ask the server)."""
        return sum(1 for _ in self)

    def first(self):
        """The first match, or None."""
        return next(iter(self.limit(1)), None)


class ProductSearch(Search):
    """Products this key reads, filtered and sorted here: the server lists products
    (GET /products) but does not search them (issue 24 part 4: collection search)."""

    def __iter__(self) -> Iterator[Product]:
        docs = self.client.json("GET", "/products")["products"]
        products = [Product._from_doc(d, self._client) for d in docs]
        found = [p for p in products if all(f.evaluate(_getter(p)) for f in self._filters)]
        for field, ascending in reversed(self._sort):
            found.sort(key=lambda p, f=field: _sort_key(getattr(p, f, None)), reverse=not ascending)
        return iter(found[: self._limit] if self._limit is not None else found)

    def collect(self, **kwargs) -> list[Product]:
        """Every matching product, as a list."""
        return list(self)


def _getter(obj):
    def get(name: str):
        value = getattr(obj, name, None) if name in type(obj)._fields else None
        if value is None:
            extra = getattr(obj, "extra_properties", None) or {}
            value = extra.get(name.removeprefix("extra_properties.").removeprefix("properties."))
        return value

    return get


def _sort_key(value):
    return (value is None, value)


class ImageSearch(Search):
    """Images through the server's STAC search (CQL2-JSON filter, intersects, sortby)."""

    def __init__(self, client=None, products: Sequence[str] | None = None):
        super().__init__(client)
        self._products = list(products) if products else None
        self._intersects: dict | None = None

    def intersects(self, geometry, match_null_geometry=False):
        """Only images whose footprint meets `geometry` (GeoJSON or shapely)."""
        other = self._clone()
        geometry = getattr(geometry, "__geo_interface__", geometry)
        if isinstance(geometry, dict) and geometry.get("type") == "Feature":
            geometry = geometry["geometry"]
        other._intersects = dict(geometry)
        return other

    def find_text(self, text):
        """Not served: free-text search (raises NotImplementedError)."""
        raise NotImplementedError("free-text search (STAC `q`) is not served yet")

    def _body(self) -> dict:
        body: dict[str, Any] = {}
        if self._products:
            body["collections"] = self._products
        if self._intersects is not None:
            body["intersects"] = self._intersects
        if self._filters:
            terms = [f.cql2(IMAGE_FIELDS) for f in self._filters]
            body["filter"] = terms[0] if len(terms) == 1 else {"op": "and", "args": terms}
            body["filter-lang"] = "cql2-json"
        return body

    def __iter__(self) -> Iterator[Image]:
        body = self._body()
        if self._sort:
            body["sortby"] = [
                {
                    "field": SORT_FIELDS.get(f, IMAGE_FIELDS(f).queryable),
                    "direction": "asc" if up else "desc",
                }
                for f, up in self._sort
            ]
        left = self._limit
        while left is None or left > 0:
            body["limit"] = PAGE if left is None else min(PAGE, left)
            page = self.client.json("POST", "/stac/search", json=body)
            for item in page["features"]:
                yield Image._from_item(item, self._client)
            if left is not None:
                left -= len(page["features"])
            following = next(
                (link for link in page.get("links", []) if link.get("rel") == "next"), None
            )
            if following is None or not page["features"]:
                return
            body = dict(following["body"])

    def collect(self, geocontext=None, **kwargs) -> ImageCollection:
        """The images, in the search's order; the collection's area (the default of its
        stack, mosaic and download_mosaic) is `geocontext`, else the search's
        `intersects` geometry, as in the Catalog."""
        area = geocontext if geocontext is not None else self._intersects
        return ImageCollection(list(self), geocontext=area, client=self._client)

    def count(self) -> int:
        """How many images match (exact, from the server's summary; `limit` applies)."""
        total = self.summary().count
        return min(total, self._limit) if self._limit is not None else total

    def summary(self) -> SummaryResult:
        """Count, bytes and products of what matches."""
        answer = self.client.json("POST", "/summary", json=self._body())
        return SummaryResult(answer["count"], answer["bytes"], answer["products"])

    def summary_interval(
        self,
        aggregate_date_field="acquired",
        interval="year",
        start_datetime=None,
        end_datetime=None,
    ) -> list[SummaryResult]:
        """Count and bytes per year, quarter, month, week, day or hour of acquisition."""
        field = getattr(aggregate_date_field, "value", aggregate_date_field) or "acquired"
        if field != "acquired":
            raise ValueError("summary_interval: the server aggregates by `acquired` only")
        body = self._body()
        if start_datetime not in (None, 0) or end_datetime not in (None, 0):
            start = time_text(start_datetime) if start_datetime not in (None, 0) else ".."
            end = time_text(end_datetime) if end_datetime not in (None, 0) else ".."
            body["datetime"] = f"{start}/{end}"
        name = getattr(interval, "value", interval)
        answer = self.client.json("POST", "/summary", params={"interval": name}, json=body)
        return [
            SummaryResult(b["count"], b["bytes"], None, parse_time(b["interval_start"]))
            for b in answer.get("summaries") or []
        ]


# --- image collections ----------------------------------------------------------------


class ImageCollection(list):
    """A list of images with the Catalog's whole-collection raster calls."""

    def __init__(self, images=(), geocontext=None, client: CatalogClient | None = None):
        super().__init__(images)
        self.geocontext = geocontext  # the default area of stack, mosaic, download_mosaic
        self._client = client

    def _like(self, images) -> ImageCollection:
        return ImageCollection(images, geocontext=self.geocontext, client=self._client)

    def _area(self, geocontext):
        return self.geocontext if geocontext is None else geocontext

    @property
    def client(self) -> CatalogClient:
        """The client the images are read through (the default one when none was given)."""
        return client_or_default(self._client)

    def __getitem__(self, index):
        found = super().__getitem__(index)
        return self._like(found) if isinstance(index, slice) else found

    def filter(self, predicate) -> ImageCollection:
        """The images for which `predicate(image)` is true."""
        return self._like([i for i in self if predicate(i)])

    def sorted(self, key, reverse: bool = False) -> ImageCollection:
        """Sorted by an attribute name or a function of the image."""
        keyfunc = key if callable(key) else lambda i: getattr(i, key)
        return self._like(sorted(self, key=keyfunc, reverse=reverse))

    def groupby(self, key) -> Iterator[tuple[Any, ImageCollection]]:
        """(key, images) groups; `key` an attribute name or a function of the image."""
        keyfunc = key if callable(key) else lambda i: getattr(i, key)
        for value, group in _groupby(sorted(self, key=keyfunc), keyfunc):
            yield value, self._like(group)

    def each(self):
        """Iterate over the images (the Catalog's spelling)."""
        return iter(self)

    def _register(self, sortby: str) -> str:
        """A registered search of exactly these images, painted in `sortby` order."""
        if not self:
            raise ValueError("the collection is empty")
        names = sorted({i.name for i in self})
        products = sorted({i.product_id for i in self})
        field, direction = sortby.lstrip("-"), "desc" if sortby.startswith("-") else "asc"
        body = {
            "collections": products,
            "ids": names,
            "sortby": [{"field": field, "direction": direction}],
            "limit": max(len(names), 1),
        }
        return self.client.json("POST", "/searches", json=body)["id"]

    def _paint_order(self) -> str:
        """The Catalog paints the collection's last image on top; the server paints the
        first of the search's order on top."""
        times = [i.acquired for i in self]
        if times == sorted(times):
            return "-datetime"
        if times == sorted(times, reverse=True):
            return "datetime"
        raise ValueError(
            "sort the collection by acquired: the server paints and stacks in time order"
        )

    def mosaic(
        self,
        bands,
        geocontext=None,
        crs=None,
        resolution=None,
        all_touched=None,
        mask_nodata=True,
        mask_alpha=None,
        bands_axis=0,
        resampler=None,
        processing_level=None,
        scaling=None,
        data_type=None,
        progress=None,
        raster_info=False,
    ):
        """One array (bands, y, x) of the images, the last one on top where it has data."""
        search_id = self._register(self._paint_order())
        _, params, body = raster.raster_params(
            bands,
            geocontext=self._area(geocontext),
            crs=crs,
            resolution=resolution,
            resampler=resampler,
            processing_level=processing_level,
            scaling=scaling,
            data_type=data_type,
            mask_alpha=mask_alpha,
        )
        path = f"/searches/{search_id}"
        content = raster.fetch(self.client, f"{path}/mosaic.tif", params, body)
        array = _bands_axis(raster.read_geotiff(content, mask_nodata), 0, bands_axis)
        if raster_info:
            return array, raster.raster_info(self.client, f"{path}/raster_info", params, body)
        return array

    def stack(
        self,
        bands,
        geocontext=None,
        crs=None,
        resolution=None,
        all_touched=None,
        flatten=None,
        mask_nodata=True,
        mask_alpha=None,
        bands_axis=1,
        raster_info=False,
        resampler=None,
        processing_level=None,
        scaling=None,
        data_type=None,
        progress=None,
        max_workers=None,
    ):
        """One layer per image in time order (image, band, y, x), or with `flatten` one
        mosaicked layer per day, month or year of acquisition, or per property value."""
        group = flatten_group(flatten)
        # one layer per image comes in the search's order; a group is painted in that order
        order = self._paint_order()
        search_id = self._register(
            order
            if group != "none"
            else order.lstrip("-")
            if order.startswith("-")
            else f"-{order}"
        )
        names, params, body = raster.raster_params(
            bands,
            geocontext=self._area(geocontext),
            crs=crs,
            resolution=resolution,
            resampler=resampler,
            processing_level=processing_level,
            scaling=scaling,
            data_type=data_type,
            mask_alpha=mask_alpha,
            extra=[("flatten", group)],
        )
        path = f"/searches/{search_id}"
        content = raster.fetch(self.client, f"{path}/stack.tif", params, body)
        flat = raster.read_geotiff(content, mask_nodata)
        array = flat.reshape((-1, len(names), *flat.shape[1:]))
        array = _bands_axis(array, 1, bands_axis)
        if raster_info:
            info_params = [*params, ("stack", "true")]
            return array, raster.raster_info(self.client, f"{path}/raster_info", info_params, body)
        return array

    def download(
        self,
        bands,
        geocontext=None,
        crs=None,
        resolution=None,
        all_touched=None,
        dest=None,
        format="tif",
        resampler=None,
        processing_level=None,
        scaling=None,
        data_type=None,
        progress=None,
        max_workers=None,
    ) -> list[str]:
        """Each image as a file: `dest` a folder (default here; files named by image id
        and bands) or one path per image (its extension gives the format)."""
        import os

        fmt = getattr(format, "value", format)
        if dest is None or isinstance(dest, str | os.PathLike):
            folder = os.fspath(dest or ".")
            os.makedirs(folder, exist_ok=True)
            names = "-".join(raster.band_list(bands))
            dests = [os.path.join(folder, f"{i.id.replace(':', '_')}-{names}.{fmt}") for i in self]
        else:
            dests = [os.fspath(d) for d in dest]
            if len(dests) != len(self):
                raise ValueError(f"dest: {len(dests)} paths for {len(self)} images")
        paths = []
        for image, path in zip(self, dests, strict=True):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            paths.append(
                image.download(
                    bands,
                    geocontext=self._area(geocontext),
                    crs=crs,
                    resolution=resolution,
                    dest=path,
                    format=os.path.splitext(path)[1].lstrip(".") or fmt,
                    resampler=resampler,
                    processing_level=processing_level,
                    scaling=scaling,
                    data_type=data_type,
                )
            )
        return paths

    def download_mosaic(
        self,
        bands,
        geocontext=None,
        crs=None,
        resolution=None,
        all_touched=None,
        dest=None,
        format="tif",
        resampler=None,
        processing_level=None,
        scaling=None,
        data_type=None,
        mask_alpha=None,
        nodata=None,
        progress=None,
    ) -> str:
        """The mosaic as a file (GeoTIFF or .npy); returns its path."""
        fmt = getattr(format, "value", format).lower().lstrip(".")
        search_id = self._register(self._paint_order())
        _, params, body = raster.raster_params(
            bands,
            geocontext=self._area(geocontext),
            crs=crs,
            resolution=resolution,
            resampler=resampler,
            processing_level=processing_level,
            scaling=scaling,
            data_type=data_type,
            nodata=nodata,
            mask_alpha=mask_alpha,
        )
        content = raster.fetch(self.client, f"/searches/{search_id}/mosaic.{fmt}", params, body)
        return raster.write_file(content, dest or f"mosaic.{fmt}")

    def scaling_parameters(self, bands, processing_level=None, scaling=None, data_type=None):
        """(scales, data_type) over every product of the collection (the Catalog's rules)."""
        from tileserver.scaling_rules import multiproduct_scaling_parameters

        names = raster.band_list(bands)
        products = {}
        for product_id in sorted({i.product_id for i in self}):
            product = Product.get(product_id, client=self._client)
            products[product_id] = product._doc.get("bands", [])
        return multiproduct_scaling_parameters(
            products, names, scaling, data_type, processing_level
        )


FLATTEN = {
    ("day",): "day",
    ("month",): "month",
    ("year",): "year",
    ("year", "month", "day"): "day",
    ("year", "month"): "month",
}


def flatten_group(flatten) -> str:
    """The Catalog's `flatten` (e.g. "properties.date.month", ["properties.date.year",
    "properties.date.month"], or the server's "month") as the server's stack groups. One
    calendar part alone groups by that part within its year (the server's `month` is
    2024-05, not May of every year)."""
    if flatten is None:
        return "none"
    parts = [flatten] if isinstance(flatten, str) else list(flatten)
    if any(callable(p) for p in parts):
        raise ValueError("flatten: the server groups by day, month, year or a property name")
    short = tuple(
        p.removeprefix("properties.").removeprefix("acquired.").removeprefix("date.") for p in parts
    )
    if short in FLATTEN:
        return FLATTEN[short]
    if len(parts) == 1:
        return parts[0].removeprefix("properties.").removeprefix("extra_properties.")
    raise ValueError(f"flatten {flatten!r}: the server groups by day, month, year or one property")
