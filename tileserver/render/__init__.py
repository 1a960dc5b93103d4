"""Rendering: pure functions from files to encoded tiles; no FastAPI here."""
