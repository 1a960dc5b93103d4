"""Metadata documents of scenes (DIMAP, SAFE): parsed with defusedxml, namespaces dropped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml.ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from tileserver.ingest.raster import IngestError


def parse(data: bytes, href: str, what: str) -> ET.Element:
    """The document's root with namespace prefixes dropped from every tag; entities, external
    DTDs and malformed XML are an IngestError naming the file and `what` it should be."""
    try:
        root = SafeET.fromstring(data)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        why = "XML entities are refused: " if isinstance(exc, DefusedXmlException) else ""
        raise IngestError(f"{href}: not a readable {what} ({why}{exc})") from exc
    for node in root.iter():
        if isinstance(node.tag, str) and "}" in node.tag:
            node.tag = node.tag.split("}", 1)[1]
    return root


def text(node: ET.Element | None, path: str) -> str | None:
    """Stripped text at `path` below `node`, None when absent or empty."""
    found = node.find(path) if node is not None else None
    value = found.text.strip() if found is not None and found.text else ""
    return value or None


def number(node: ET.Element | None, path: str) -> float | None:
    """A number at `path` below `node`, None when absent or not a number."""
    value = text(node, path)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
