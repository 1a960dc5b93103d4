"""Command line: `tileserver serve | ingest | demo`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from tileserver.settings import Settings


def _settings(catalog: str | None) -> Settings:
    settings = Settings()
    if catalog:
        settings = settings.model_copy(update={"catalog_url": catalog})
    return settings


def demo_settings(settings: Settings) -> Settings:
    """The demo runs on its own catalog file beside its data, never on the user's catalog."""
    folder = settings.data_dir / "demo"
    return settings.model_copy(update={"catalog_url": f"sqlite:///{folder / 'catalog.db'}"})


@click.group()
@click.version_option(package_name="tileserver")
def cli() -> None:
    """tileserver: dynamic web-map tiles for satellite imagery."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--demo", is_flag=True, help="generate and serve the demo Sentinel-2-like product")
@click.option("--catalog", help="catalog URL (default: TILESERVER_CATALOG_URL or the embedded one)")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, workers: int, demo: bool, catalog: str | None, log_level: str):
    """Start the server."""
    import os

    import uvicorn

    settings = _settings(catalog)
    if demo:
        from tileserver.catalog.store import open_store
        from tileserver.demo import ensure_demo

        settings = demo_settings(settings)
        store = open_store(settings.catalog_url)
        click.echo("preparing demo data in " + str(settings.data_dir / "demo"), err=True)
        product = ensure_demo(store, settings.data_dir / "demo" / "data")
        store.close()
        click.echo(f"demo product '{product}' ready", err=True)
    os.environ["TILESERVER_CATALOG_URL"] = settings.catalog_url
    click.echo(f"tileserver on http://{host}:{port}/ (catalog {settings.catalog_url})", err=True)
    uvicorn.run("tileserver.main:app", host=host, port=port, workers=workers, log_level=log_level)


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--product", "product_id", required=True, help="product to register images into")
@click.option("--datetime", "when", help="acquisition time for every file (ISO 8601)")
@click.option(
    "--bands",
    "bands_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON/YAML file overriding inferred band attributes: {band: {attr: value}}",
)
@click.option("--catalog", help="catalog URL")
@click.option("--quiet", is_flag=True, help="no progress bar")
def ingest(
    path: Path,
    product_id: str,
    when: str | None,
    bands_file: Path | None,
    catalog: str | None,
    quiet: bool,
) -> None:
    """Register every GeoTIFF/COG and STAC Item under PATH into a product."""
    from tileserver.catalog.store import open_store
    from tileserver.ingest.folder import ingest as run_ingest
    from tileserver.ingest.folder import load_band_overrides
    from tileserver.ingest.raster import IngestError, parse_time

    acquired: datetime | None = None
    if when:
        acquired = parse_time(when)
        if acquired is None:
            raise click.BadParameter(f"'{when}' is not an ISO 8601 time", param_hint="--datetime")
        acquired = acquired.astimezone(UTC)
    try:
        overrides = load_band_overrides(bands_file)
    except (IngestError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--bands") from None
    store = open_store(_settings(catalog).catalog_url)
    try:
        report = run_ingest(store, path, product_id, acquired, overrides, progress=not quiet)
    finally:
        store.close()
    click.echo(
        json.dumps(
            {
                "registered": len(report.registered),
                "failed": [{"path": p, "reason": r} for p, r in report.failed],
            },
            indent=2,
        )
    )
    if report.failed and not report.registered:
        sys.exit(1)


@cli.command()
@click.option("--catalog", help="catalog URL (default: the demo's own catalog)")
def demo(catalog: str | None) -> None:
    """Generate the demo data and register it, without serving."""
    from tileserver.catalog.store import open_store
    from tileserver.demo import ensure_demo

    settings = _settings(None)
    target = catalog or demo_settings(settings).catalog_url
    store = open_store(target)
    try:
        product = ensure_demo(store, settings.data_dir / "demo" / "data")
    finally:
        store.close()
    click.echo(f"demo product '{product}' registered in {target}")
