"""Readiness: can this process serve? The catalog answers, Redis (when configured) answers,
the data dir takes files; and which versions of the stack it runs.

Answers name what failed, never a path, a URL or a driver's message (those go to the log).
"""

from __future__ import annotations

import logging
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tileserver import __version__

logger = logging.getLogger(__name__)


def check(what: str, probe) -> str:
    """`ok`, or `failed` with the reason in the log only (it may hold hosts and paths)."""
    try:
        probe()
    except Exception as exc:  # any failure means not ready; the reason is for the operator
        logger.warning("readiness: %s failed: %s", what, exc)
        return "failed"
    return "ok"


def writable(folder: Path) -> None:
    """Create and remove a file in `folder` (OSError when it cannot)."""
    if not folder.is_dir():
        raise OSError("the data dir does not exist")
    fd, name = tempfile.mkstemp(prefix=".ready-", dir=folder)
    os.close(fd)
    os.unlink(name)


def versions() -> dict[str, str]:
    """tileserver, GDAL, rasterio and rio-tiler as this process loaded them."""
    import rasterio

    found = {"tileserver": __version__, "gdal": rasterio.__gdal_version__}
    for name in ("rasterio", "rio-tiler"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "unknown"
    return found


def readiness(store, cache, data_dir: Path) -> dict:
    """Each check's outcome, `ready` when every one is `ok`, and the versions."""
    checks = {"catalog": check("catalog", store.ping)}
    if getattr(cache, "remote", False):
        checks["cache"] = check("cache (Redis)", cache.ping)
    checks["data_dir"] = check("data dir", lambda: writable(Path(data_dir)))
    ready = all(outcome == "ok" for outcome in checks.values())
    return {"status": "ready" if ready else "not ready", "checks": checks, "versions": versions()}
