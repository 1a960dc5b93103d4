"""Errors of the pixel pipeline; the API maps each to a 4xx with its message as `detail`."""

import re


class RenderError(ValueError):
    """A request the pipeline cannot honour because of its parameters (a 400)."""


class UnknownBand(RenderError):
    """A band name that the product does not have."""


class ImageNotReadable(Exception):
    """The image has no pixels here (a remote image) or its files cannot be read (a 409/424)."""


POINTER = "See previous exception for details."  # rasterio's words when GDAL said more
# a path or URL inside GDAL's words: answers never show where the server keeps files
PATH = re.compile(
    r"'(?:/|[A-Za-z][\w+.-]*://)[^']*'|(?<![\w.])(?:[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+|/[^\s'\",;()]+)"
)


def without_paths(text: str, local_only: bool = False) -> str:
    """`text` with every absolute path and URL replaced by `<file>` (`local_only`: only the
    server's own paths; bucket objects and URLs stay)."""

    def hide(match: re.Match) -> str:
        found = match.group(0).strip("'")
        local_zip = found.startswith("/vsizip/{/") and not found.startswith("/vsizip/{/vsi")
        if local_only and (found.startswith("/vsi") or "://" in found) and not local_zip:
            return match.group(0)
        return "<file>"

    return PATH.sub(hide, text)


def gdal_reason(exc: BaseException, keep_paths: bool = False) -> str:
    """The message of a rasterio error, with what GDAL said when rasterio only points at it.

    A failed read is "Read failed. See previous exception for details.": the GDAL errors
    (which block failed, how many bytes came back) are the exception's chain of causes.
    """
    clean = (lambda text: text) if keep_paths else without_paths
    text = clean(str(exc))
    if POINTER not in text:
        return text
    parts = [text.replace(POINTER, "").strip().rstrip(".")]
    cause = exc.__cause__
    while cause is not None and len(parts) < 8:
        said = clean(str(cause)).strip().rstrip(".")
        if said and not any(said in part for part in parts):
            parts.append(said)
        cause = cause.__cause__
    return ": ".join(parts)
