"""Ingest: turn files (GeoTIFF/COG, STAC items) into catalog records."""
