"""Opening the knowledge base: URL resolution, engine setup, sessions, automatic migrations.

``resolve_url`` picks the database (``--db`` > ``DISCO_DB`` > ``./disco.db``); ``open_database``
builds the engine, applies the Alembic migrations shipped in ``knowledge_base/migrations``
(programmatically: no ``alembic.ini`` at runtime) and returns a ``Database`` that hands out
sessions. The caller owns the transaction: ``db.session()`` commits when its block succeeds and
rolls back when it raises; repository functions only flush.

SQLite is the embedded default. Every connection gets WAL journaling (readers never block the
writer), a 30 s busy timeout (concurrent writers wait instead of failing), foreign keys and
``synchronous=NORMAL`` (a committed transaction survives a killed process; WAL makes it durable
against power loss only at checkpoints, which is the usual trade for an experiment log).
Write sessions start with ``BEGIN IMMEDIATE`` so a transaction that reads and then writes
takes the write lock up front: a deferred transaction would instead fail at once with
``database is locked`` (no busy wait) when another process committed in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

DEFAULT_URL = "sqlite:///./disco.db"
ENV_VAR = "DISCO_DB"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "archdisco_sqlite_begin"
# Serialises concurrent migrations of one PostgreSQL database (an arbitrary constant key).
_PG_MIGRATION_LOCK = 0x41524348


class DatabaseError(Exception):
    """The database cannot be used; the message is one line meant for the user."""


def resolve_url(cli_url: str | None) -> str:
    """The database URL to use: ``--db`` value, else ``$DISCO_DB``, else ``./disco.db``.

    A value without ``://`` is a file path and becomes a SQLite URL (``runs/x.db`` ->
    ``sqlite:///runs/x.db``; ``~`` is expanded).
    """
    for value in (cli_url, os.environ.get(ENV_VAR)):
        if value is not None and value.strip():
            return _as_url(value.strip())
    return DEFAULT_URL


def _as_url(value: str) -> str:
    if "://" in value:
        return value
    return "sqlite:///" + os.path.expanduser(value)


def describe_url(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return url


class Database:
    """An opened, migrated knowledge base: the engine plus session factories."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        if engine.dialect.name == "sqlite":
            write_bind: Engine = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        else:
            write_bind = engine
        # expire_on_commit=False: rows returned from a committed session stay readable.
        self._write = sessionmaker(bind=write_bind, expire_on_commit=False)
        self._read = sessionmaker(bind=engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write session: commits when the block ends normally, rolls back if it raises."""
        with self._write() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading; whatever it did is rolled back at the end.

        Rows it loaded stay readable after the block (they are detached, not expired);
        relationships that were never loaded cannot be lazy-loaded any more.
        """
        with self._read() as session:
            try:
                yield session
            finally:
                session.expunge_all()
                session.rollback()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({describe_url(self.url)!r})"


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the SQLite connection settings applied (no migration)."""
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or "mode=memory" in str(parsed)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
        if in_memory:
            # One shared connection, or every checkout would see a different empty database.
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"]["check_same_thread"] = False
        elif not parsed.query.get("uri"):
            path = Path(database).expanduser()
            parsed = parsed.set(database=str(path))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DatabaseError(
                    f"cannot create the folder of database {path}: {err.strerror or err}"
                ) from err
    else:
        # A campaign holds connections for hours: check them before use, and fail fast on an
        # unreachable server instead of waiting for the OS TCP timeout.
        kwargs["pool_pre_ping"] = True
        if "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = create_engine(parsed, **kwargs)
    except ImportError as err:
        raise DatabaseError(
            f"cannot use {describe_url(url)}: its driver is not installed ({err}); for "
            "PostgreSQL run: pip install 'psycopg[binary]'"
        ) from err
    except (exc.ArgumentError, exc.NoSuchModuleError) as err:
        shown = describe_url(url)
        raise DatabaseError(f"invalid database URL {shown!r}: {one_line_error(err)}") from err
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def parse_url(url: str) -> URL:
    """Parse ``url`` (or a bare file path); ``DatabaseError`` if it is not a supported URL."""
    try:
        parsed = make_url(_as_url(url))
    except exc.ArgumentError as err:
        raise DatabaseError(
            f"invalid database URL {url!r}: expected sqlite:///PATH, a file path, "
            "or postgresql://USER@HOST/DB"
        ) from err
    if parsed.drivername.split("+")[0] == "postgres":  # the common short spelling
        parsed = parsed.set(drivername=parsed.drivername.replace("postgres", "postgresql", 1))
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseError(
            f"unsupported database URL {describe_url(url)!r}: ArchDisco supports sqlite:///PATH "
            "and postgresql://USER@HOST/DB"
        )
    return parsed


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level; transactions are begun explicitly by _sqlite_on_begin,
    # so DDL is transactional too and BEGIN IMMEDIATE can be used for writers.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # first: WAL switch may wait
        _set_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _set_wal(cursor: Any) -> None:
    """Switch to WAL, retrying while another connection holds a lock: SQLite answers a
    journal-mode change on a fresh file with SQLITE_BUSY without calling the busy handler
    (seen when several workers open a blank database at once)."""
    import sqlite3
    import time

    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def open_database(url: str) -> Database:
    """Open (creating if needed) and migrate the database at ``url``.

    Raises ``DatabaseError`` with a one-line message when the URL is invalid, the server or
    file cannot be reached, or the database was written by a newer ArchDisco.
    """
    engine = make_engine(url)
    try:
        migrate(engine)
    except DatabaseError:
        engine.dispose()
        raise
    except (exc.SQLAlchemyError, OSError) as err:
        engine.dispose()
        shown = describe_url(url)
        raise DatabaseError(f"cannot open database {shown}: {one_line_error(err)}") from err
    return Database(url, engine)


def _script_directory() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR))


def _current_heads(conn: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    return set(MigrationContext.configure(conn).get_current_heads())


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest shipped schema revision."""
    script = _script_directory()
    heads = set(script.get_heads())
    with engine.connect() as conn:  # fast path: already current, no write lock taken
        current = _current_heads(conn)
        conn.rollback()
    _refuse_unknown(script, current, engine)
    if current == heads:
        return
    bind = engine
    if engine.dialect.name == "sqlite":
        bind = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    with bind.connect() as conn, conn.begin():
        # Hold the write lock (SQLite) / an advisory lock (PostgreSQL) and look again, so two
        # processes opening a blank database at once migrate it exactly once.
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        current = _current_heads(conn)
        _refuse_unknown(script, current, engine)
        if current == heads:
            return
        _upgrade(conn)


def _refuse_unknown(script: Any, current: set[str], engine: Engine) -> None:
    from alembic.util import CommandError

    for revision in sorted(current):
        try:
            known = script.get_revision(revision) is not None
        except CommandError:
            known = False
        if not known:
            newest = ", ".join(sorted(script.get_heads()))
            raise DatabaseError(
                f"database {describe_url(str(engine.url))} has schema revision {revision!r}, "
                f"newer than this ArchDisco knows (up to {newest}); upgrade archdisco or use "
                "another --db"
            )


def alembic_config(url: str | None = None) -> Any:
    """An Alembic ``Config`` for the shipped migrations (no ini file), for development:
    ``command.revision(alembic_config("sqlite:///dev.db"), autogenerate=True, message=...)``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", _as_url(url).replace("%", "%%"))
    return config


def _upgrade(conn: Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "head")


def schema_revision(db: Database) -> set[str]:
    """The schema revision(s) the database is at."""
    with db.engine.connect() as conn:
        return _current_heads(conn)


def one_line_error(err: BaseException) -> str:
    """The first line of a database error's message (the driver's own text when wrapped)."""
    if isinstance(err, exc.DBAPIError) and err.orig is not None:
        message = str(err.orig)
    else:
        message = str(err)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
