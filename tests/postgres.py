"""A real PostgreSQL + PostGIS + pgSTAC for the pgSTAC store tests.

`.ci/run` starts a cluster on loopback and names it in TILESERVER_TEST_POSTGRES (a DSN of a
role that may create databases). Without it, a private cluster is created here with the
Debian binaries (initdb, pg_ctl) and removed at the end. pgSTAC is migrated once into a
template database; each test gets a fresh copy of it, dropped afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import free_port

TEMPLATE = "tileserver_test_template"


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _private_cluster() -> Iterator[str]:
    """initdb + pg_ctl on a free loopback port; yields the admin DSN."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL is not installed: apt-get install postgresql postgresql-15-postgis-3, "
            "or set TILESERVER_TEST_POSTGRES to a server's DSN"
        )
    bindir = os.path.dirname(found[-1])
    folder = tempfile.mkdtemp(prefix="tileserver-pg-")
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run(
        _as_postgres(
            [
                f"{bindir}/initdb",
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--locale=C.UTF-8",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                f"{bindir}/pg_ctl",
                "-D",
                data,
                "-w",
                "-l",
                os.path.join(folder, "log"),
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def database_url(admin_dsn: str, name: str) -> str:
    """The DSN of another database on the same server."""
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The admin DSN of a running PostgreSQL with a pgSTAC template database."""
    from tileserver.catalog.pgstac import migrate

    dsn = os.environ.get("TILESERVER_TEST_POSTGRES")
    cluster = None if dsn else _private_cluster()
    if cluster is not None:
        dsn = next(cluster)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0 LOCALE 'C.UTF-8'")
    migrate(database_url(dsn, TEMPLATE))
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
    if cluster is not None:
        next(cluster, None)


def new_database(admin_dsn: str) -> str:
    """A fresh migrated catalog database (a copy of the template); its DSN."""
    name = "t_" + uuid.uuid4().hex[:12]
    for attempt in range(50):  # the template may still be busy for a moment
        try:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
            break
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1 * (attempt + 1))
    return database_url(admin_dsn, name)


def drop_database(admin_dsn: str, url: str) -> None:
    """Drop a test database, ending its sessions first."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture()
def pgstac_url(postgres_admin) -> Iterator[str]:
    """A fresh, migrated pgSTAC catalog database for one test."""
    url = new_database(postgres_admin)
    yield url
    drop_database(postgres_admin, url)
