"""Errors of the pixel pipeline; the API maps each to a 4xx with its message as `detail`."""


class RenderError(ValueError):
    """A request the pipeline cannot honour because of its parameters (a 400)."""


class UnknownBand(RenderError):
    """A band name that the product does not have."""


class ImageNotReadable(Exception):
    """The image has no pixels here (a remote image) or its files cannot be read (a 409/424)."""


POINTER = "See previous exception for details."  # rasterio's words when GDAL said more


def gdal_reason(exc: BaseException) -> str:
    """The message of a rasterio error, with what GDAL said when rasterio only points at it.

    A failed read is "Read failed. See previous exception for details.": the GDAL errors
    (which block failed, how many bytes came back) are the exception's chain of causes.
    """
    text = str(exc)
    if POINTER not in text:
        return text
    parts = [text.replace(POINTER, "").strip().rstrip(".")]
    cause = exc.__cause__
    while cause is not None and len(parts) < 8:
        said = str(cause).strip().rstrip(".")
        if said and not any(said in part for part in parts):
            parts.append(said)
        cause = cause.__cause__
    return ": ".join(parts)
