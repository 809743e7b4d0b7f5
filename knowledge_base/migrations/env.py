"""Alembic environment for the knowledge base.

At runtime ``knowledge_base.db`` passes an open connection (already inside a transaction
holding the write lock) in ``config.attributes["connection"]``. For development use from the
Alembic command line, the URL comes from ``-x url=...`` or the ``sqlalchemy.url`` option and
the engine is built by ``knowledge_base.db.make_engine`` so the SQLite settings apply.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from knowledge_base.fulltext import include_name
from knowledge_base.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_name=include_name,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("alembic: pass the database with -x url=sqlite:///PATH")
    return url


def _run_with(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # Our SQLite connections begin transactions explicitly, so DDL is transactional there too.
    _configure(connection=connection, transactional_ddl=True, render_as_batch=sqlite)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    from knowledge_base.db import make_engine

    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run_with(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
