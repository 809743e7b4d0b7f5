"""Fixtures for the knowledge base tests: SQLite databases in tmp_path and, where the binaries
and psycopg are present, a throwaway PostgreSQL server started in a temp directory.

The ``db`` fixture is parametrized over both backends; the PostgreSQL variant is marked
``postgres`` and skipped (with the reason) when no server can be started. Set
``ARCHDISCO_TEST_PG_URL`` to use an existing server instead (a database URL whose user may
CREATE DATABASE), or ``ARCHDISCO_TEST_PG=0`` to skip PostgreSQL entirely.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge_base.db import Database, open_database

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: runs against a real PostgreSQL server (skipped when unavailable)"
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kb' / 'disco.db'}"


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    db = open_database(sqlite_url)
    yield db
    db.close()


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """A running server plus a factory of fresh databases on it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._counter = itertools.count()
        self._template: str | None = None

    def _admin(self, sql: str) -> None:
        import psycopg

        url = self.base_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url + "/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def blank_url(self) -> str:
        name = f"archdisco_t{os.getpid()}_{next(self._counter)}"
        self._admin(f"CREATE DATABASE {name}")
        return f"{self.base_url}/{name}"

    def migrated_url(self) -> str:
        """A fresh database already at the newest schema (copied from a migrated template)."""
        if self._template is None:
            url = self.blank_url()
            open_database(url).close()
            self._template = url.rsplit("/", 1)[1]
        name = f"archdisco_t{os.getpid()}_{next(self._counter)}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {self._template}")
        return f"{self.base_url}/{name}"


def _start_local_server() -> tuple[PgServer, list[str], str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("initdb/pg_ctl not found")
    prefix: list[str] = []
    workdir = tempfile.mkdtemp(prefix="archdisco-pg-")
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as err:
            raise RuntimeError("running as root and no 'postgres' user to run the server") from err
        runuser = shutil.which("runuser")
        if not runuser:
            raise RuntimeError("running as root and no runuser to drop privileges")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = os.path.join(workdir, "data"), _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", data, "-A", "trust", "-U", "archdisco", "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(workdir, "log"),
         "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=90,
    )
    stop = [*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]
    return PgServer(f"postgresql+psycopg://archdisco@127.0.0.1:{port}"), stop, workdir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if os.environ.get("ARCHDISCO_TEST_PG") == "0":
        pytest.skip("PostgreSQL tests disabled by ARCHDISCO_TEST_PG=0")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    external = os.environ.get("ARCHDISCO_TEST_PG_URL")
    if external:
        yield PgServer(external.rsplit("/", 1)[0])
        return
    try:
        server, stop, workdir = _start_local_server()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot start a local PostgreSQL: {err}")
    try:
        yield server
    finally:
        subprocess.run(stop, capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """A URL of an empty (not yet migrated) database on each backend."""
    if request.param == "sqlite":
        return sqlite_url
    return request.getfixturevalue("pg_server").blank_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Database]:
    """An opened, migrated database on each backend."""
    if request.param == "sqlite":
        url = sqlite_url
    else:
        url = request.getfixturevalue("pg_server").migrated_url()
    database = open_database(url)
    yield database
    database.close()
