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
