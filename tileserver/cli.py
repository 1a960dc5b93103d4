"""Command line: `tileserver serve | ingest | import | demo | parcels | db | keys | ...`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from tileserver.logs import log_config, redact_url
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

    from tileserver.ingest.vsi import configure_gdal

    configure_gdal()  # before any read (the demo's): GDAL takes GDAL_CACHEMAX once per process
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
    if settings.catalog_url.startswith(("postgresql://", "postgres://")):
        from tileserver.catalog.pgstac import migrate

        # once here, before the workers start (they find the schema current)
        click.echo(f"pgSTAC schema {migrate(settings.catalog_url)}", err=True)
    os.environ["TILESERVER_CATALOG_URL"] = settings.catalog_url
    catalog_name = redact_url(settings.catalog_url)
    click.echo(f"tileserver on http://{host}:{port}/ (catalog {catalog_name})", err=True)
    uvicorn.run(
        "tileserver.main:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=log_config(),  # every handler redacts keys, passwords, credentials
        http="tileserver.server:NoDelayProtocol",
    )


def _acquired(when: str | None) -> datetime | None:
    """The --datetime option as an aware UTC time."""
    from tileserver.ingest.raster import parse_time

    if not when:
        return None
    acquired = parse_time(when)
    if acquired is None:
        raise click.BadParameter(f"'{when}' is not an ISO 8601 time", param_hint="--datetime")
    return acquired.astimezone(UTC)


def _run_import(request, catalog: str | None, when, overrides, quiet: bool):
    """Run an import with a progress bar; StorageError (listing failed) exits 2."""
    from tileserver.catalog.store import open_store
    from tileserver.ingest.imports import run_import
    from tileserver.ingest.vsi import StorageError, configure_gdal
    from tileserver.opener import confinement_of

    settings = _settings(catalog)
    store = open_store(settings.catalog_url)
    try:
        configure_gdal()
        confinement = confinement_of(settings, store)  # the operator's: every local file
        return run_import(
            store,
            request,
            settings.data_dir,
            when,
            overrides,
            progress=not quiet,
            confinement=confinement,
        )
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--product",
    "product_id",
    help="product to register images into (default: from the metadata, else the folder name)",
)
@click.option("--datetime", "when", help="acquisition time for every file (ISO 8601)")
@click.option(
    "--bands",
    "bands_file",
    type=click.Path(exists=True, path_type=Path),
    help="JSON/YAML file overriding inferred band attributes: {band: {attr: value}}",
)
@click.option("--copy", "copy_pixels", is_flag=True, help="copy pixels into local COGs")
@click.option("--catalog", help="catalog URL")
@click.option("--quiet", is_flag=True, help="no progress bar")
def ingest(
    path: Path,
    product_id: str | None,
    when: str | None,
    bands_file: Path | None,
    copy_pixels: bool,
    catalog: str | None,
    quiet: bool,
) -> None:
    """Register every DIMAP, BEAM-DIMAP, Sentinel-2 SAFE, STAC Item and GeoTIFF/COG under PATH."""
    from tileserver.ingest.imports import ImportRequest
    from tileserver.ingest.overrides import load_band_overrides
    from tileserver.ingest.raster import IngestError

    acquired = _acquired(when)
    try:
        overrides = load_band_overrides(bands_file)
    except (IngestError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--bands") from None
    request = ImportRequest(
        cloud_provider="file", bucket_name=str(path), product=product_id, copy=copy_pixels
    )
    result = _run_import(request, catalog, acquired, overrides, quiet)
    click.echo(json.dumps({"registered": len(result.features), "failed": result.failed}, indent=2))
    if result.failed and not result.features:
        sys.exit(1)


def _geometry_option(value: str | None) -> dict | None:
    """A GeoJSON geometry given inline or as a file name."""
    if value is None:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise click.BadParameter(f"not GeoJSON and not a file: {value[:80]}") from None
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        doc = doc.get("geometry")
    return doc


@cli.command("import")
@click.option("--cloud-provider", type=click.Choice(["aws", "gcs", "file"]), required=True)
@click.option("--bucket-name", required=True, help="bucket (for file: a folder)")
@click.option("--prefix", default="", help="folder inside the bucket, e.g. folder1/folder2/")
@click.option("--ids", help="comma-separated scene ids; override every other filter")
@click.option("--time", "time_range", help="start/end acquisition range (RFC 3339, '..' open)")
@click.option("--bbox", help="minx,miny,maxx,maxy (WGS84)")
@click.option("--intersects", help="GeoJSON geometry (inline or a file) scenes must intersect")
@click.option("--contains", help="GeoJSON geometry (inline or a file) scenes must cover")
@click.option("--limit", type=int, help="most scenes to import")
@click.option("--max-cloud-cover", type=float, help="keep scenes with cloud cover <= this %")
@click.option("--product", help="register every scene into this product")
@click.option("--copy", "copy_pixels", is_flag=True, help="copy pixels into local COGs")
@click.option("--datetime", "when", help="acquisition time for scenes that carry none")
@click.option("--catalog", help="catalog URL")
@click.option("--quiet", is_flag=True, help="no progress bar")
def import_(**options) -> None:
    """Import the scenes under a bucket prefix (the UP42 DIMAP import parameters).

    Prints the GeoJSON FeatureCollection of the registered scenes, with the scenes
    that failed under "failed". Credentials and endpoints come from the environment
    (AWS_*, GOOGLE_KEY_STRING, CPL_GS_ENDPOINT: see the README).
    """
    from pydantic import ValidationError

    from tileserver.ingest.imports import ImportRequest

    body = {
        "cloud_provider": options["cloud_provider"],
        "bucket_name": options["bucket_name"],
        "prefix": options["prefix"],
        "time": options["time_range"],
        "limit": options["limit"],
        "max_cloud_cover": options["max_cloud_cover"],
        "product": options["product"],
        "copy": options["copy_pixels"],
        "intersects": _geometry_option(options["intersects"]),
        "contains": _geometry_option(options["contains"]),
    }
    if options["ids"]:
        body["ids"] = [i.strip() for i in options["ids"].split(",") if i.strip()]
    if options["bbox"]:
        try:
            body["bbox"] = [float(v) for v in options["bbox"].split(",")]
        except ValueError:
            raise click.BadParameter(
                "four numbers: minx,miny,maxx,maxy", param_hint="--bbox"
            ) from None
    try:
        request = ImportRequest.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(problems) from None
    result = _run_import(
        request, options["catalog"], _acquired(options["when"]), None, options["quiet"]
    )
    click.echo(json.dumps(result.collection(), indent=2, default=str))
    if result.failed and not result.features:
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
    click.echo(f"demo product '{product}' registered in {redact_url(target)}")


@cli.command()
@click.option("--product", "products", multiple=True, help="only this product (repeatable)")
@click.option("--catalog", help="catalog URL")
@click.option("--quiet", is_flag=True, help="no progress bar")
def overviews(products: tuple[str, ...], catalog: str | None, quiet: bool) -> None:
    """Make the reduced copies that images without overviews lack (tileserver/pyramids.py).

    Imports make them; this catches up a catalog filled before, or files rewritten since.
    """
    from tqdm import tqdm

    from tileserver.catalog.store import open_store
    from tileserver.ingest.overviews import missing
    from tileserver.ingest.vsi import configure_gdal
    from tileserver.opener import confined, confinement_of, reading

    settings = _settings(catalog)
    store = open_store(settings.catalog_url)
    written = found = failed = 0
    try:
        configure_gdal()
        confinement = confinement_of(settings, store)
        ids = list(products) or [p.id for p in store.list_products()]
        total = sum(store.count_images(i) for i in ids)
        with confined(confinement), tqdm(total=total, disable=quiet, unit="image") as bar:
            for product_id in ids:
                with reading(confinement.for_product(store.get_product(product_id))):
                    token = None
                    while True:
                        page = store.list_images(product_id, limit=100, token=token)
                        for image in page.images:
                            try:
                                for _, done in missing([image], settings.data_dir):
                                    written += sum(r.written for r in done)
                                    found += sum(not r.written for r in done)
                            except Exception as exc:  # one bad file must not stop the rest
                                failed += 1
                                bar.write(f"{image.id}: {exc}")
                            bar.update()
                        token = page.next_token
                        if not token:
                            break
    finally:
        store.close()
    click.echo(json.dumps({"written": written, "up_to_date": found, "failed": failed}))


@cli.group()
def db() -> None:
    """The PostgreSQL/pgSTAC catalog's schema."""


@db.command("migrate")
@click.option("--catalog", help="postgresql:// URL (default: TILESERVER_CATALOG_URL)")
def db_migrate(catalog: str | None) -> None:
    """Install or upgrade pgSTAC (pypgstac's migrations) and tileserver's tables."""
    from tileserver.catalog.pgstac import migrate

    url = _settings(catalog).catalog_url
    if not url.startswith(("postgresql://", "postgres://")):
        raise click.ClickException(f"'{redact_url(url)}' is not a postgresql:// catalog URL")
    try:
        version = migrate(url)
    except Exception as exc:  # connection refused, no PostGIS, no rights: say which
        raise click.ClickException(f"migration failed: {exc}") from None
    click.echo(f"pgSTAC {version} ready in {redact_url(url)}")


@cli.group()
def keys() -> None:
    """API keys. Once one exists, every request needs a key (README: Access control)."""


def _key_store(catalog: str | None):
    from tileserver.catalog.store import open_store

    return open_store(_settings(catalog).catalog_url)


@keys.command("create")
@click.option("--user", required=True, help="who the key is for (products list them as user:NAME)")
@click.option("--org", required=True, help="their organisation (org:NAME in product lists)")
@click.option("--admin", is_flag=True, help="may read and change every product")
@click.option("--note", help="what the key is for, shown by `keys list`")
@click.option("--catalog", help="catalog URL (default: TILESERVER_CATALOG_URL)")
def keys_create(user: str, org: str, admin: bool, note: str | None, catalog: str | None) -> None:
    """Create a key and print it; it is shown this once (the catalog keeps its hash)."""
    from pydantic import ValidationError

    from tileserver.catalog.keys import new_key

    try:
        key, token = new_key(user, org, admin, note)
    except ValidationError as exc:
        raise click.BadParameter(exc.errors()[0]["msg"]) from None
    store = _key_store(catalog)
    try:
        first = not store.has_keys()
        store.put_key(key)
    finally:
        store.close()
    role = "admin" if admin else "user"
    click.echo(f"key {key.id} for {role} {user} of org {org}:", err=True)
    click.echo(token)
    if first:
        click.echo("this is the catalog's first key: from now on every request needs one", err=True)


@keys.command("list")
@click.option("--catalog", help="catalog URL (default: TILESERVER_CATALOG_URL)")
def keys_list(catalog: str | None) -> None:
    """Every key (never their secrets)."""
    store = _key_store(catalog)
    try:
        found = store.list_keys()
    finally:
        store.close()
    if not found:
        click.echo("no keys: the server is open to everyone", err=True)
        return
    click.echo("id            user          org           admin  created               revoked")
    for key in found:
        revoked = f"{key.revoked:%Y-%m-%d %H:%M}" if key.revoked else "-"
        click.echo(
            f"{key.id}  {key.user:<12}  {key.org:<12}  {'yes' if key.admin else 'no':<5}  "
            f"{key.created:%Y-%m-%d %H:%M:%S}   {revoked}" + (f"  {key.note}" if key.note else "")
        )


@keys.command("revoke")
@click.argument("key_id")
@click.option("--catalog", help="catalog URL (default: TILESERVER_CATALOG_URL)")
def keys_revoke(key_id: str, catalog: str | None) -> None:
    """Revoke a key: servers refuse it within TILESERVER_KEY_CACHE_SECONDS."""
    from tileserver.catalog.models import utcnow

    store = _key_store(catalog)
    try:
        key = store.find_key(key_id)
        if key is None:
            raise click.ClickException(f"no key '{key_id}' (see `tileserver keys list`)")
        if key.revoked is None:
            store.put_key(key.model_copy(update={"revoked": utcnow()}))
    finally:
        store.close()
    click.echo(f"key {key_id} of {key.user} ({key.org}) is revoked")


@cli.command("migrate-catalog")
@click.argument("source")
@click.argument("destination")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--quiet", is_flag=True, help="no progress bar")
def migrate_catalog(source: str, destination: str, batch: int, quiet: bool) -> None:
    """Copy every product, image, registered search and parcel layer from SOURCE to
    DESTINATION.

    Catalog URLs: sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB. Records keep
    their ids and times. Run it again after an interruption: it resumes.
    """
    from tileserver.catalog.migrate import checkpoint_path, copy_catalog
    from tileserver.catalog.store import open_store

    if source == destination:
        raise click.BadParameter("SOURCE and DESTINATION are the same catalog")
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_path(settings.data_dir, source, destination)
    src = open_store(source)
    try:
        dst = open_store(destination)
    except Exception:
        src.close()
        raise
    try:
        report = copy_catalog(
            src, dst, checkpoint, (source, destination), batch=batch, progress=not quiet
        )
    except KeyboardInterrupt:
        message = f"interrupted; run the same command to resume ({checkpoint})"
        raise click.ClickException(message) from None
    finally:
        src.close()
        dst.close()
    click.echo(report.model_dump_json())


def _parcel_store(catalog: str | None):
    """The catalog store and its parcel store; a clear error for catalogs without one."""
    from tileserver.catalog.parcels import NO_PARCELS
    from tileserver.catalog.store import open_store

    store = open_store(_settings(catalog).catalog_url)
    parcels = store.parcels()
    if parcels is None:
        store.close()
        raise click.ClickException(NO_PARCELS)
    return store, parcels


@cli.group()
def parcels() -> None:
    """Parcel layers (agricultural fields) in the catalog: load, list, delete."""


@parcels.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="layer name (letters, digits, . _ -) [default: AOI_YEAR[_PTYPE]]")
@click.option("--aoi", help="JRC CbM area of interest the layer serves under /query/ (e.g. nl)")
@click.option("--year", type=int, help="JRC CbM dataset year (with --aoi)")
@click.option("--ptype", default="", help="JRC CbM parcel type (with --aoi), e.g. b")
@click.option(
    "--id-field",
    help="parcel id attribute, or 'fid' for feature ids [auto: id, pid, parcel_id, ...]",
)
@click.option("--crop-field", help="crop type attribute [auto: crop, crop_type, cropname, ...]")
@click.option("--year-field", help="year attribute [auto: year, crop_year, ...]")
@click.option("--source-layer", help="layer of a multi-layer file (e.g. a GeoPackage)")
@click.option("--crs", help="CRS of a file that declares none (overrides a declared one)")
@click.option("--make-valid", is_flag=True, help="repair invalid polygons instead of skipping them")
@click.option("--strict", is_flag=True, help="refuse the load instead of skipping any feature")
@click.option("--catalog", help="catalog URL")
@click.option("--quiet", is_flag=True, help="no progress bar")
def parcels_load(
    path: Path,
    name: str | None,
    aoi: str | None,
    year: int | None,
    ptype: str,
    id_field: str | None,
    crop_field: str | None,
    year_field: str | None,
    source_layer: str | None,
    crs: str | None,
    make_valid: bool,
    strict: bool,
    catalog: str | None,
    quiet: bool,
) -> None:
    """Load a GeoJSON, GeoPackage or FlatGeobuf parcel file as layer NAME (replacing it),
    and with --aoi and --year as that JRC CbM dataset (the /query/ services' aoi/year/ptype).

    Features without geometry, with empty, non-polygonal or invalid geometries, or
    without an id are skipped and reported per reason; duplicate ids refuse the load.
    """
    from tileserver.catalog.parcels import Dataset, LoadError

    if (aoi is None) != (year is None) or (ptype and aoi is None):
        raise click.UsageError("--aoi and --year go together (--ptype with them)")
    if name is None and aoi is None:
        raise click.UsageError("give --name, or --aoi and --year")
    try:
        dataset = Dataset(aoi, year, ptype) if aoi is not None else None
    except LoadError as exc:
        raise click.UsageError(str(exc)) from None
    store, parcel_store = _parcel_store(catalog)
    try:
        report = parcel_store.load(
            name,
            path,
            progress=not quiet,
            dataset=dataset,
            id_field=id_field,
            crop_field=crop_field,
            year_field=year_field,
            source_layer=source_layer,
            crs=crs,
            make_valid=make_valid,
            strict=strict,
        )
    except LoadError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(json.dumps(report.as_dict(), indent=2))


@parcels.command("list")
@click.option("--catalog", help="catalog URL")
def parcels_list(catalog: str | None) -> None:
    """List the parcel layers with their counts (JSON)."""
    store, parcel_store = _parcel_store(catalog)
    try:
        layers = [layer.model_dump() for layer in parcel_store.layers()]
    finally:
        store.close()
    click.echo(json.dumps(layers, indent=2))


@parcels.command("delete")
@click.argument("name")
@click.option("--catalog", help="catalog URL")
def parcels_delete(name: str, catalog: str | None) -> None:
    """Delete parcel layer NAME and its parcels."""
    from tileserver.catalog.store import NotFound

    store, parcel_store = _parcel_store(catalog)
    try:
        gone = parcel_store.delete(name)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"deleted parcel layer '{name}' ({gone} parcels)")


if __name__ == "__main__":  # python -m tileserver.cli, as the tileserver script
    cli()
