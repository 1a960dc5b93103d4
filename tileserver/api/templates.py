"""Jinja2 templates (viewer page, WMTS capabilities), autoescaped."""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import Request

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, enable_async=False
)


def render_template(name: str, **context) -> str:
    """Render a template of tileserver/templates."""
    return environment.get_template(name).render(**context)


def viewer_context(settings) -> dict:
    """What the viewer page needs of the settings: the optional basemap."""
    return {
        "basemap_url": settings.basemap_url or "",
        "basemap_attribution": settings.basemap_attribution,
    }


def root_path(request: Request) -> str:
    """The URL prefix the app is mounted under (behind a proxy), without a trailing slash."""
    return request.scope.get("root_path", "").rstrip("/")
