"""The confined opener's rules, driven directly: canonical locations, grants, drivers.

The attacks through a real server are in tests/test_confinement.py; these pin the rules
the opener applies, one case a line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy
import pytest
from pydantic import ValidationError
from rasterio.errors import RasterioIOError

from tests.synthetic import write
from tileserver.catalog.models import Product
from tileserver.opener import (
    Confinement,
    Grant,
    Refused,
    Within,
    identify,
    locate,
    open_raster,
    open_staged,
)
from tileserver.settings import Settings


@pytest.mark.parametrize(
    ("href", "path"),
    [
        ("s3://bucket/a/b.tif", "/vsis3/bucket/a/b.tif"),
        ("gs://bucket/a.tif", "/vsigs/bucket/a.tif"),
        ("/vsis3/bucket/a.tif", "/vsis3/bucket/a.tif"),
        ("https://Data.Example.com/a/b.tif", "/vsicurl/https://data.example.com/a/b.tif"),
        (
            "/vsicurl/https://h.example:8443/x.tif?sig=1",
            "/vsicurl/https://h.example:8443/x.tif?sig=1",
        ),
        ("/tmp/../etc/./hosts", "/etc/hosts"),
        ("/vsizip/{s3://b/k/p.zip}/P.SAFE/a.jp2", "/vsizip/{/vsis3/b/k/p.zip}/P.SAFE/a.jp2"),
        ("/vsizip/{/tmp/../etc/p.ZIP}/a/b.jp2", "/vsizip/{/etc/p.ZIP}/a/b.jp2"),
    ],
)
def test_locations_are_canonical(href, path):
    assert locate(href).path == path


@pytest.mark.parametrize(
    "href",
    [
        "",
        "relative.tif",
        "./a.tif",
        "<VRTDataset/>",
        "GTIFF_DIR:1:/data/a.tif",
        "WMS:http://h/x",
        "PG:dbname=x",
        "/vsizip//data/a.zip/a.tif",
        "/vsimem/a.tif",
        "/vsicurl_streaming/http://h/a.tif",
        "/vsicurl?url=http://h/a.tif",
        "/vsis3/bucket/a/../b.tif",
        "/vsis3/bucket/a/%2e%2e/b.tif",
        "/vsis3/bucket//b.tif",
        "/vsis3/bad bucket/b.tif",
        "https://good.example@evil.example/a.tif",
        "https://h.example/a/../../b.tif",
        "https://h.example/a.tif#frag",
        "ftp://h.example/a.tif",
        "/data/a\n.tif",
        "/data/a\x00.tif",
        "/" + "a" * 5000,
        # zip members: only /vsizip/{ARCHIVE.zip}/MEMBER, a plain archive, a plain member
        "/vsizip//data/a.zip/a.jp2",
        "/vsizip/data/a.zip/a.jp2",
        "/vsizip/{/data/a.zip}",
        "/vsizip/{/data/a.zip}/",
        "/vsizip/{/data/a.zip}/dir/",
        "/vsizip/{/data/a.zip}/../b.jp2",
        "/vsizip/{/data/a.zip}/a/../../b.jp2",
        "/vsizip/{/data/a.zip}/%2e%2e/b.jp2",
        "/vsizip/{/data/a.zip}/./a.jp2",
        "/vsizip/{/data/a.zip}//etc/passwd",
        "/vsizip/{/data/a.zip}/a\\..\\b.jp2",
        "/vsizip/{/data/a.zip}//vsis3/b/k.jp2",
        "/vsizip/{/data/a.zip}/vsis3/b/k.jp2",
        "/vsizip/{/data/a.zip}/inner.zip/a.jp2",
        "/vsizip/{/data/a.zip}/a{b}.jp2",
        "/vsizip/{/data/a.tar}/a.jp2",
        "/vsizip/{data/a.zip}/a.jp2",
        "/vsizip/{/vsimem/a.zip}/a.jp2",
        "/vsizip/{/vsicurl/https://h.example/a.zip}/a.jp2",
        "/vsizip/{https://h.example/a.zip}/a.jp2",
        "/vsizip/{/vsis3/b/../a.zip}/a.jp2",
        "/vsizip/{/vsizip/{/data/a.zip}/b.zip}/a.jp2",
    ],
)
def test_anything_but_plain_files_objects_and_urls_is_refused(href):
    with pytest.raises(Refused):
        locate(href)


@pytest.fixture()
def rules(tmp_path) -> Confinement:
    acme, other = tmp_path / "roots" / "acme", tmp_path / "roots" / "other"
    acme.mkdir(parents=True)
    other.mkdir(parents=True)
    grants = {
        "org:acme": Grant.parse([str(acme), "s3://acme/scenes/", "https://cdn.example/acme/"]),
        "org:other": Grant.parse([str(other)]),
        "admin": Grant.parse(["https://cdn.example/public/"]),
    }
    users = {"alice": (frozenset({"acme"}), False), "root": (frozenset({"ops"}), True)}
    return Confinement(
        data_dir=tmp_path / "data",
        protected=(tmp_path / "data" / "catalog.db",),
        grants=grants,
        import_roots=(tmp_path / "imports",),
        key_users=lambda: users,
    )


def permits(allowed, href: str) -> bool:
    try:
        allowed.check(href)
    except Refused:
        return False
    return True


def test_a_product_reads_what_its_owners_were_granted(rules, tmp_path):
    owned = rules.for_product(Product(id="p", owners=["user:alice"]))  # alice is of acme
    assert permits(owned, str(tmp_path / "roots" / "acme" / "x.tif"))
    assert permits(owned, "s3://acme/scenes/2024/x.tif")
    assert permits(owned, "https://cdn.example/acme/x.tif")
    assert permits(owned, str(tmp_path / "data" / "vrt" / "p" / "x.vrt"))
    assert not permits(owned, str(tmp_path / "roots" / "other" / "x.tif"))
    assert not permits(owned, str(tmp_path / "roots" / "acme-evil" / "x.tif"))  # prefix trick
    assert not permits(owned, "s3://acme/scenes-other/x.tif")
    assert not permits(owned, "s3://acme/x.tif")
    assert not permits(owned, "https://cdn.example/acmeX/x.tif")
    assert not permits(owned, str(tmp_path / "data" / "vrt" / "q" / "x.vrt"))
    assert not permits(owned, str(tmp_path / "data" / "catalog.db"))
    assert not permits(owned, "/etc/passwd")


def test_the_operator_reads_any_local_file_and_bucket_but_urls_only_when_granted(rules, tmp_path):
    nobody = rules.for_product(Product(id="p"))
    assert permits(nobody, "/etc/hosts")
    assert permits(nobody, "s3://any-bucket/x.tif")
    assert permits(nobody, "https://cdn.example/public/x.tif")
    assert not permits(nobody, "https://cdn.example/acme/x.tif")
    assert not permits(nobody, "http://169.254.169.254/latest/meta-data")
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm", "catalog.db-journal"):
        assert not permits(nobody, str(tmp_path / "data" / name))
    assert not permits(nobody, str(tmp_path / "data" / "vrt" / "q" / "x.vrt"))  # not its own
    assert not permits(nobody, str(tmp_path / "data" / "chips" / "q_x.png"))
    admin_owned = rules.for_product(Product(id="p", owners=["user:root"]))  # an admin's
    assert permits(admin_owned, "/etc/hosts")


def test_callers_import_from_their_grants_admins_from_the_roots(rules, tmp_path):
    alice = rules.for_caller("alice", "acme", admin=False)
    assert permits(alice, str(tmp_path / "roots" / "acme"))
    assert not permits(alice, str(tmp_path / "imports"))
    admin = rules.for_caller("root", "ops", admin=True)
    assert permits(admin, str(tmp_path / "imports" / "x"))
    assert permits(admin, "s3://whatever/x.tif")
    assert not permits(admin, str(tmp_path / "roots" / "acme"))
    assert not permits(admin, "https://cdn.example/acme/x.tif")
    stranger = rules.for_caller("eve", "nowhere", admin=False)
    assert not permits(stranger, str(tmp_path / "roots" / "acme" / "x.tif"))
    product = rules.for_product(Product(id="p", owners=["org:other"]))
    both = Within(alice.with_own(*rules.own_folders("p")), product)
    assert not permits(both, str(tmp_path / "roots" / "acme" / "x.tif"))  # not the owners'
    assert not permits(both, str(tmp_path / "roots" / "other" / "x.tif"))  # not alice's
    assert permits(both, str(tmp_path / "data" / "vrt" / "p" / "x.vrt"))


def test_links_are_resolved_before_the_check(rules, tmp_path):
    alice = rules.for_product(Product(id="p", owners=["org:acme"]))
    link = tmp_path / "roots" / "acme" / "link.tif"
    os.symlink(tmp_path / "roots" / "other" / "x.tif", link)
    assert not permits(alice, str(link))
    inner = tmp_path / "roots" / "acme" / "inner.tif"
    os.symlink(tmp_path / "roots" / "acme" / "x.tif", inner)
    assert permits(alice, str(inner))


def test_tenant_files_open_with_imagery_drivers_only(rules, tmp_path):
    acme = tmp_path / "roots" / "acme"
    tif = write(acme / "a.tif", numpy.ones((1, 256, 256), "uint16"))
    allowed = rules.for_product(Product(id="p", owners=["org:acme"]))
    assert identify(str(tif), ["GTiff"]) == "GTiff"
    with open_raster(str(tif), allowed) as src:
        assert src.driver == "GTiff"
    vrt = acme / "a.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand band="1">'
                   f"<SimpleSource><SourceFilename>{tif}</SourceFilename></SimpleSource>"
                   "</VRTRasterBand></VRTDataset>")  # fmt: skip
    disguised = acme / "b.tif"
    disguised.write_bytes(vrt.read_bytes())
    for path in (vrt, disguised):
        with pytest.raises(Refused, match="not a raster format"):
            open_raster(str(path), allowed)


def test_grants_are_checked_when_settings_are_read(tmp_path):
    good = {"org:acme": [str(tmp_path)], "admin": ["https://cdn.example/"]}
    assert Settings(import_grants=good).import_grants == good
    for bad in (
        {"acme": [str(tmp_path)]},
        {"org:acme": ["relative/folder"]},
        {"org:acme": ["/vsizip/x.zip"]},
        {"org:acme": ["ftp://h/x/"]},
    ):
        with pytest.raises(ValidationError):
            Settings(import_grants=bad)


def test_nothing_opens_outside_a_confinement(tmp_path):
    from tileserver.opener import _CONFINEMENT, _READING

    tif = write(tmp_path / "a.tif", numpy.ones((1, 256, 256), "uint16"))
    reading, confinement = _READING.set(None), _CONFINEMENT.set(None)
    try:
        with pytest.raises(Refused, match="no file confinement"):
            open_raster(str(tif))
    finally:
        _READING.reset(reading)
        _CONFINEMENT.reset(confinement)
    assert Path(tif).exists()


def test_a_zip_member_is_allowed_where_its_archive_is(rules, tmp_path):
    acme, other = tmp_path / "roots" / "acme", tmp_path / "roots" / "other"
    alice = rules.for_product(Product(id="p", owners=["org:acme"]))
    assert permits(alice, f"/vsizip/{{{acme}/s2.zip}}/S2.SAFE/B02.jp2")
    assert permits(alice, "/vsizip/{s3://acme/scenes/s2.zip}/S2.SAFE/B02.jp2")
    assert not permits(alice, f"/vsizip/{{{other}/s2.zip}}/S2.SAFE/B02.jp2")
    assert not permits(alice, f"/vsizip/{{{acme}/../other/s2.zip}}/S2.SAFE/B02.jp2")
    assert not permits(alice, "/vsizip/{s3://acme/other/s2.zip}/B02.jp2")
    assert not permits(alice, f"/vsizip/{{{tmp_path}/data/vrt/q/s2.zip}}/B02.jp2")
    link = acme / "link.zip"  # a link inside the root to an archive outside it
    os.symlink(other / "s2.zip", link)
    assert not permits(alice, f"/vsizip/{{{link}}}/S2.SAFE/B02.jp2")


def test_zip_members_open_with_imagery_drivers_only(rules, tmp_path):
    import zipfile

    acme = tmp_path / "roots" / "acme"
    tif = write(tmp_path / "a.tif", numpy.arange(64 * 64, dtype="uint16").reshape(1, 64, 64))
    vrt = (
        '<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand band="1"><SimpleSource>'
        f"<SourceFilename>{tif}</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    archive = acme / "s2.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.write(tif, "S2.SAFE/a.tif")
        out.writestr("S2.SAFE/b.tif", vrt)  # a VRT named .tif, pointing out of the archive
    allowed = rules.for_product(Product(id="p", owners=["org:acme"]))
    with open_raster(f"/vsizip/{{{archive}}}/S2.SAFE/a.tif", allowed) as src:
        assert src.driver == "GTiff" and int(src.read(1)[1, 2]) == 66
    # never the VRT driver: GDAL says the member is no format it was allowed to use
    with pytest.raises(RasterioIOError, match="not recognized"):
        open_raster(f"/vsizip/{{{archive}}}/S2.SAFE/b.tif", allowed)
    elsewhere = rules.for_product(Product(id="p", owners=["org:other"]))
    with pytest.raises(Refused):
        open_raster(f"/vsizip/{{{archive}}}/S2.SAFE/a.tif", elsewhere)


def test_our_vrts_take_zip_members_exactly_as_direct_opens_do(rules, tmp_path):
    """A zip member is accepted as a source of one of our VRTs (as the Sentinel-2 ingest
    writes them) exactly when it opens directly, and reads the same pixels."""
    import zipfile

    acme, other = tmp_path / "roots" / "acme", tmp_path / "roots" / "other"
    tif = write(tmp_path / "a.tif", numpy.arange(1, 17, dtype="uint16").reshape(1, 4, 4))
    for root in (acme, other):
        with zipfile.ZipFile(root / "s2.zip", "w") as out:
            out.write(tif, "S2.SAFE/a.tif")
            out.writestr("S2.SAFE/b.tif", tif.read_bytes()[:100])  # not a raster
    os.symlink(other / "s2.zip", acme / "link.zip")
    allowed = rules.for_product(Product(id="p", owners=["org:acme"]))
    own = tmp_path / "data" / "vrt" / "p"
    own.mkdir(parents=True)
    hrefs = [
        f"/vsizip/{{{acme}/s2.zip}}/S2.SAFE/a.tif",
        f"/vsizip/{{{acme}/../acme/s2.zip}}/S2.SAFE/a.tif",
        f"/vsizip/{{{acme}/s2.zip}}/S2.SAFE/b.tif",
        f"/vsizip/{{{acme}/s2.zip}}/S2.SAFE/../S2.SAFE/a.tif",
        f"/vsizip/{{{acme}/s2.zip}}/S2.SAFE/missing.tif",
        f"/vsizip/{{{other}/s2.zip}}/S2.SAFE/a.tif",
        f"/vsizip/{{{acme}/link.zip}}/S2.SAFE/a.tif",
        f"/vsizip/{acme}/s2.zip/S2.SAFE/a.tif",
        f"/vsizip/{{/vsizip/{{{acme}/s2.zip}}/x.zip}}/a.tif",
    ]
    outcomes = []
    for i, href in enumerate(hrefs):
        vrt = own / f"{i}.vrt"
        vrt.write_text(
            '<VRTDataset rasterXSize="4" rasterYSize="4"><VRTRasterBand dataType="UInt16" '
            'band="1"><NoDataValue>0</NoDataValue><ComplexSource><SourceFilename '
            f'relativeToVRT="0">{href}</SourceFilename><SourceBand>1</SourceBand>'
            "<ScaleOffset>1000</ScaleOffset><ScaleRatio>1</ScaleRatio><NODATA>0</NODATA>"
            "</ComplexSource></VRTRasterBand></VRTDataset>"
        )
        got = []
        for target, shift in ((href, 0), (str(vrt), 1000)):
            try:
                with open_raster(target, allowed) as src:
                    got.append(src.read(1).astype(int) - shift)
            except (Refused, RasterioIOError):
                got.append(None)
        direct, through_vrt = got
        assert (direct is None) == (through_vrt is None), href
        if direct is not None:
            numpy.testing.assert_array_equal(through_vrt, direct)
        outcomes.append(direct is not None)
    assert outcomes == [True, True] + [False] * 7


def test_gdal_environments_build_no_boto3_session_when_aws_keys_are_set(monkeypatch):
    """rasterio would make a boto3 session for every environment (and so every warp call of
    every tile read) when boto3 is importable and AWS keys are set; the server leaves the
    keys to GDAL (opener.leave_credentials_to_gdal)."""
    import boto3  # installed with the test extras: the case this guards
    import rasterio
    from rasterio.session import DummySession
    from rasterio.warp import calculate_default_transform

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tileserver-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    made = []
    original = boto3.Session.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(boto3.Session, "__init__", counting)
    with rasterio.Env() as env:
        assert isinstance(env.session, DummySession)
    calculate_default_transform(
        "EPSG:32633", "EPSG:3857", 100, 100, left=5e5, bottom=5e6, right=501000, top=5001000
    )
    assert made == []


def test_a_staged_file_is_read_back_as_a_geotiff_only(tmp_path):
    written = tmp_path / "out.tif.staging.tif"
    write(written, numpy.full((1, 8, 8), 7, "uint16"))
    with open_staged(written) as dataset:
        assert dataset.driver == "GTiff" and int(dataset.read(1)[0, 0]) == 7
    vrt = tmp_path / "other.staging.tif"  # a VRT under a GeoTIFF's name
    vrt.write_text('<VRTDataset rasterXSize="1" rasterYSize="1"></VRTDataset>')
    for refused in (vrt, "/vsis3/bucket/out.staging.tif", "/vsicurl/https://host/x.tif"):
        with pytest.raises(Refused):
            open_staged(refused)
