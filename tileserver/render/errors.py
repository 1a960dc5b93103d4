"""Errors of the pixel pipeline; the API maps each to a 4xx with its message as `detail`."""


class RenderError(ValueError):
    """A request the pipeline cannot honour because of its parameters (a 400)."""


class UnknownBand(RenderError):
    """A band name that the product does not have."""


class ImageNotReadable(Exception):
    """The image has no pixels here (a remote image) or its files cannot be read (a 409/424)."""
