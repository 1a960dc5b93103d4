"""Hostile XML in scene metadata: entity expansion and external entities are refused.

Each case is a valid DIMAP v2 `DIM_*.XML` or BEAM-DIMAP `.dim` (the same product imports
when left clean) given a DTD: a billion-laughs entity bomb, an external entity naming
/etc/passwd, an external parameter entity. Imported over HTTP, the scene is reported
under `failed` with the reason, nothing is registered, and no line of /etc/passwd shows
up in the answer or the logs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.ingest.beam_synthetic import map_product, write_product
from tests.ingest.dimap2_synthetic import write_spot_bundle

LAUGHS = '<!ENTITY lol0 "lol">' + "".join(
    f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
)  # &lol9; is 10^9 "lol"
DTDS = {  # name -> (internal subset, the reference put into a field the answer would show)
    "billion laughs": (LAUGHS, "&lol9;"),
    "external entity": ('<!ENTITY xxe SYSTEM "file:///etc/passwd">', "&xxe;"),
    "external parameter entity": ('<!ENTITY % xxe SYSTEM "file:///etc/passwd"> %xxe;', ""),
}
PASSWD = [line for line in Path("/etc/passwd").read_text().splitlines() if line.strip()]


def dimap_scene(folder: Path) -> tuple[Path, str]:
    """A lone DIM_*.XML (SPOT 7 MS) with its tiles; the field to poison."""
    bundle = write_spot_bundle(folder / "bundle")
    ms_folder = bundle["ms_dim"].parent
    scene = folder / ms_folder.name
    shutil.move(ms_folder, scene)
    shutil.rmtree(folder / "bundle")
    return scene / bundle["ms_dim"].name, "SOURCE_ID"


def beam_scene(folder: Path) -> tuple[Path, str]:
    """A BEAM-DIMAP .dim with its .data folder; the field to poison."""
    return write_product(folder / "beam", map_product()), "DATASET_NAME"


FORMATS = {"DIMAP v2": dimap_scene, "BEAM-DIMAP": beam_scene}


def poison(path: Path, field: str, subset: str, reference: str) -> None:
    """Put a DOCTYPE with `subset` after the XML declaration; `reference` into `field`."""
    data = path.read_bytes()
    declaration, _, rest = data.partition(b"?>")
    doctype = f"\n<!DOCTYPE Dimap_Document [{subset}]>".encode()
    rest = rest.replace(f"<{field}>".encode(), f"<{field}>{reference}".encode(), 1)
    path.write_bytes(declaration + b"?>" + doctype + rest)


def file_import(client, folder: Path) -> dict:
    response = client.post("/imports", json={"cloud_provider": "file", "bucket_name": str(folder)})
    assert response.status_code == 200, response.text
    return response.json()


def registered(client) -> list[str]:
    return [f["id"] for f in client.post("/stac/search", json={}).json()["features"]]


@pytest.mark.parametrize("kind", list(FORMATS))
def test_the_clean_scenes_import(tmp_path, importer, kind):
    FORMATS[kind](tmp_path / "imports" / "clean")
    answer = file_import(importer, tmp_path / "imports" / "clean")
    assert len(answer["features"]) == 1 and answer["failed"] == []


@pytest.mark.parametrize("dtd", list(DTDS))
@pytest.mark.parametrize("kind", list(FORMATS))
def test_entities_are_refused_and_nothing_leaks(tmp_path, importer, caplog, kind, dtd):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "imports" / "hostile"
    entry, field = FORMATS[kind](folder)
    poison(entry, field, *DTDS[dtd])
    response = importer.post(
        "/imports", json={"cloud_provider": "file", "bucket_name": str(folder)}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["features"] == []
    # paths relative to the folder the caller named: no server path in the answer
    assert [f["path"] for f in answer["failed"]] == [str(entry.relative_to(folder))]
    reason = answer["failed"][0]["reason"]
    assert "XML entities are refused" in reason, reason
    assert registered(importer) == []
    for text in (response.text, caplog.text):
        assert not [line for line in PASSWD if line in text]
