"""`POST /imports`: the UP42 DIMAP import block as an endpoint.

The import runs within the request and answers its result (the GeoJSON
FeatureCollection of SEMANTICS.md section 4, failures under "failed"): scenes are
registered from their metadata and the pixels stay where they are, so an import of
hundreds of scenes takes seconds to minutes. Run `tileserver import` for very large
prefixes or when a progress bar is wanted.

A caller imports only from what was granted to them: admins from TILESERVER_IMPORT_ROOTS
and any bucket, others from their organisation's and their own TILESERVER_IMPORT_GRANTS.
Paths in the answer are relative to the folder the caller named; the server's own paths and
its list of roots are never shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from tileserver.api.deps import PrincipalDep, SettingsDep, StoreDep
from tileserver.ingest.imports import ImportRequest, run_import
from tileserver.ingest.vsi import StorageError, gdal_path
from tileserver.metrics import IMPORT_REQUESTS, IMPORTS
from tileserver.opener import Allowed, Refused
from tileserver.render.errors import without_paths

router = APIRouter(tags=["imports"])
NOT_GRANTED = "not a folder or bucket prefix you may import from: ask the operator for a grant"


def check_root(request: ImportRequest, caller: Allowed) -> str:
    """The location the import lists, when the caller was granted it (403 otherwise).

    `..`, `~` (a home folder) and an absolute prefix are refused outright, whatever they would
    resolve to; links inside the roots that point out are skipped by the listing (run_import).
    """
    if request.cloud_provider == "file":
        parts = [*Path(request.bucket_name).parts, *Path(request.prefix).parts]
        if ".." in parts or any(p.startswith("~") for p in parts) or request.prefix.startswith("/"):
            raise HTTPException(
                403,
                "a file import's bucket_name and prefix may not hold '..' or '~', nor the prefix "
                "start with '/': name a folder you were granted",
            )
    where = gdal_path(request.cloud_provider, request.bucket_name, request.prefix)
    try:
        return caller.check(where).path
    except Refused:
        raise HTTPException(403, f"{request.bucket_name}: {NOT_GRANTED}") from None


def relative(value: Any, base: str, data_dir: str) -> Any:
    """The answer with the server's paths made relative: to the folder the caller named, to
    the data dir for the files the server wrote; any other absolute path is left out."""
    if isinstance(value, dict):
        return {k: relative(v, base, data_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [relative(v, base, data_dir) for v in value]
    if not isinstance(value, str) or "/" not in value:
        return value
    for folder in (base, data_dir):
        if folder:
            value = value.replace(folder.rstrip("/") + "/", "")
    return without_paths(value, local_only=True)


@router.post("/imports", summary="Import scenes from a bucket prefix (UP42 DIMAP import)")
def create_import(
    request: ImportRequest,
    http: Request,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> dict:
    """List the prefix, filter the scenes by their metadata, register them."""
    confinement = http.app.state.confinement
    caller = confinement.for_caller(principal.user, principal.org, principal.admin)
    try:
        base = check_root(request, caller)
    except HTTPException:
        IMPORT_REQUESTS.labels("refused").inc()  # a folder or bucket the caller may not import
        raise
    roots = [Path(r) for r in caller.roots]
    try:
        result = run_import(
            store,
            request,
            settings.data_dir,
            roots=roots,
            caller=caller,
            confinement=confinement,
        )
    except StorageError as exc:
        IMPORT_REQUESTS.labels("refused").inc()
        raise HTTPException(400, without_paths(str(exc), local_only=True)) from None
    IMPORT_REQUESTS.labels("done").inc()
    IMPORTS.labels("registered").inc(len(result.features))
    IMPORTS.labels("failed").inc(len(result.failed))
    IMPORTS.labels("filtered_out").inc(result.filtered_out)
    shown_base = base if request.cloud_provider == "file" else ""
    return relative(result.collection(), shown_base, os.path.realpath(settings.data_dir))
