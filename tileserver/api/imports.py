"""`POST /imports`: the UP42 DIMAP import block as an endpoint.

The import runs within the request and answers its result (the GeoJSON
FeatureCollection of SEMANTICS.md section 4, failures under "failed"): scenes are
registered from their metadata and the pixels stay where they are, so an import of
hundreds of scenes takes seconds to minutes. Run `tileserver import` for very large
prefixes or when a progress bar is wanted.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException

from tileserver.api.deps import SettingsDep, StoreDep
from tileserver.ingest.imports import ImportRequest, run_import
from tileserver.ingest.vsi import StorageError, under

router = APIRouter(tags=["imports"])


def check_root(request: ImportRequest, roots: list[Path]) -> None:
    """A `file` import must stay under TILESERVER_IMPORT_ROOTS (no traversal, no symlink out).

    `..`, `~` (a home folder) and an absolute prefix are refused outright, whatever they would
    resolve to; links inside the roots that point out are skipped by the listing (run_import).
    """
    if request.cloud_provider != "file":
        return
    if not roots:
        raise HTTPException(
            403, "file imports are disabled: set TILESERVER_IMPORT_ROOTS to the allowed folders"
        )
    allowed = ", ".join(str(r) for r in roots)
    parts = [*Path(request.bucket_name).parts, *Path(request.prefix).parts]
    if ".." in parts or any(p.startswith("~") for p in parts) or request.prefix.startswith("/"):
        raise HTTPException(
            403,
            "a file import's bucket_name and prefix may not hold '..' or '~', nor the prefix "
            f"start with '/': name a folder under an import root ({allowed})",
        )
    if under(Path(request.bucket_name) / request.prefix, roots):
        return
    raise HTTPException(403, f"{request.bucket_name}: not under an import root ({allowed})")


@router.post("/imports", summary="Import scenes from a bucket prefix (UP42 DIMAP import)")
def create_import(request: ImportRequest, store: StoreDep, settings: SettingsDep) -> dict:
    """List the prefix, filter the scenes by their metadata, register them."""
    check_root(request, settings.import_roots)
    try:
        result = run_import(store, request, settings.data_dir, roots=settings.import_roots)
    except StorageError as exc:
        raise HTTPException(400, str(exc)) from None
    return result.collection()
