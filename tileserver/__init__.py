"""tileserver: a dynamic web-map tile server for satellite imagery."""

__version__ = "0.1.0"
