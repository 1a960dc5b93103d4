"""The scaled deployment as a user runs it: `tileserver db migrate`, `migrate-catalog` into
pgSTAC, then `tileserver serve --workers 2` on pgSTAC + Redis, driven over HTTP.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy
import psycopg
import pytest
from click.testing import CliRunner

from tests.conftest import DEMO_IMAGE, DEMO_TILE, free_port
from tests.postgres import database_url, drop_database
from tileserver.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture()
def empty_database(postgres_admin):
    """A database with nothing installed in it (not even PostGIS)."""
    name = "empty_" + str(os.getpid())
    with psycopg.connect(postgres_admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = database_url(postgres_admin, name)
    yield url
    drop_database(postgres_admin, url)


def test_db_migrate_installs_pgstac_and_is_idempotent(empty_database):
    runner = CliRunner()
    first = runner.invoke(cli, ["db", "migrate", "--catalog", empty_database])
    assert first.exit_code == 0, first.output
    assert "ready" in first.output
    again = runner.invoke(cli, ["db", "migrate", "--catalog", empty_database])
    assert again.exit_code == 0 and again.output == first.output
    with psycopg.connect(empty_database) as conn:
        (version,) = conn.execute("SELECT pgstac.get_version()").fetchone()
        assert first.output.startswith(f"pgSTAC {version} ready")
        queryables = dict(
            conn.execute("SELECT name, property_wrapper FROM pgstac.queryables").fetchall()
        )
    assert queryables["eo:cloud_cover"] == "to_float" and queryables["created"] == "to_tstz"


def test_db_migrate_refuses_what_is_not_postgres(tmp_path):
    result = CliRunner().invoke(cli, ["db", "migrate", "--catalog", f"sqlite:///{tmp_path}/c.db"])
    assert result.exit_code != 0 and "not a postgresql://" in result.output
    down = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/x"
    result = CliRunner().invoke(cli, ["db", "migrate", "--catalog", down])
    assert result.exit_code == 1 and "migration failed" in result.output
    assert "secret" not in result.output


def serve(env: dict, workers: int) -> tuple[subprocess.Popen, str]:
    """`tileserver serve` as a user starts it; its URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tileserver.cli import cli; cli()",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode()[-3000:])
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


def workers_of(process: subprocess.Popen) -> set[int]:
    """The pids of the server's worker processes (children of the uvicorn parent)."""
    found = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(process.pid)],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    # multiprocessing's resource tracker is a child too; the workers are spawned
    return {int(line.split()[0]) for line in found if "spawn_main" in line}


def test_two_workers_on_pgstac_and_redis_serve_one_catalog(
    demo_store, demo_dir, pgstac_url, redis_server, tmp_path
):
    demo_url = f"sqlite:///{demo_store.path}"
    env = {"TILESERVER_DATA_DIR": str(tmp_path)}
    runner = CliRunner(env=env)
    copied = runner.invoke(cli, ["migrate-catalog", demo_url, pgstac_url, "--quiet"])
    assert copied.exit_code == 0, copied.output
    assert f'"images":{demo_store.count_images("sentinel-2-l2a")}' in copied.output
    redis = redis_server.client()
    redis.flushall()
    process, url = serve(
        {
            "TILESERVER_CATALOG_URL": pgstac_url,
            "TILESERVER_CACHE_URL": redis_server.url,
            "TILESERVER_DATA_DIR": str(demo_dir),
        },
        workers=2,
    )
    try:
        assert len(workers_of(process)) == 2
        z, x, y = DEMO_TILE
        tile = f"{url}/images/{DEMO_IMAGE}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy"
        with httpx.Client(timeout=60) as client:
            first = client.get(tile, params={"bands": "B04"})
            assert first.status_code == 200, first.text
            assert any(k.startswith(b"tileserver:tile:") for k in redis.scan_iter())
            # many requests spread over both workers: every one gets the same bytes
            for _ in range(12):
                again = client.get(tile, params={"bands": "B04"})
                assert again.content == first.content
            # a search registered through one worker is known to all
            search = client.post(f"{url}/searches", json={"collections": ["sentinel-2-l2a"]})
            search_id = search.json()["id"]
            for _ in range(8):
                mosaic = client.get(
                    f"{url}/searches/{search_id}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy",
                    params={"bands": "B04"},
                )
                assert mosaic.status_code == 200, mosaic.text
            # a write through one worker is seen by the next request, whichever answers
            image = client.get(f"{url}/images/{DEMO_IMAGE}").json()
            image["properties"]["note"] = "edited"
            assert client.put(f"{url}/images/{DEMO_IMAGE}", json=image).status_code == 200
            for _ in range(8):
                seen = client.get(f"{url}/images/{DEMO_IMAGE}").json()
                assert seen["properties"]["note"] == "edited"
            pixels = numpy.load(io.BytesIO(first.content))
            assert pixels.shape[-2:] == (256, 256) and pixels.any()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_migrate_catalog_refuses_the_same_catalog_twice(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    result = CliRunner().invoke(cli, ["migrate-catalog", url, url])
    assert result.exit_code == 2 and "same catalog" in result.output
