"""A Python client of tileserver with the Descartes Labs Catalog client's names: a script
written for `descarteslabs.catalog` runs after changing its imports and credentials.

    from tileserver.client import Product, Image, properties as p

It talks only to the server's HTTP API (TILESERVER_URL, key TILESERVER_API_KEY) and
imports nothing of the server: httpx, numpy and rasterio are enough.
"""

from tileserver.client.blob import Blob, BlobSearch, StorageType
from tileserver.client.catalog import (
    Band,
    ClassBand,
    GenericBand,
    Image,
    ImageCollection,
    ImageSearch,
    MaskBand,
    MicrowaveBand,
    Product,
    ProductSearch,
    Resolution,
    Search,
    SpectralBand,
    SummaryResult,
)
from tileserver.client.http import (
    AuthError,
    BadRequestError,
    CatalogClient,
    ClientError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServerError,
)
from tileserver.client.properties import Properties, Property, properties
from tileserver.client.uploads import (
    ImageUpload,
    ImageUploadEvent,
    ImageUploadEventSeverity,
    ImageUploadEventType,
    ImageUploadOptions,
    ImageUploadStatus,
    ImageUploadType,
    OverviewResampler,
)

__all__ = [
    "AuthError",
    "BadRequestError",
    "Band",
    "Blob",
    "BlobSearch",
    "CatalogClient",
    "ClassBand",
    "ClientError",
    "ConflictError",
    "ForbiddenError",
    "GenericBand",
    "Image",
    "ImageCollection",
    "ImageSearch",
    "ImageUpload",
    "ImageUploadEvent",
    "ImageUploadEventSeverity",
    "ImageUploadEventType",
    "ImageUploadOptions",
    "ImageUploadStatus",
    "ImageUploadType",
    "MaskBand",
    "MicrowaveBand",
    "NotFoundError",
    "OverviewResampler",
    "Product",
    "ProductSearch",
    "Properties",
    "Property",
    "Resolution",
    "Search",
    "ServerError",
    "SpectralBand",
    "StorageType",
    "SummaryResult",
    "properties",
]
