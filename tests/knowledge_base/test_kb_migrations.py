"""Migrations from a blank database produce exactly the models' schema, on both backends."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from knowledge_base import fulltext
from knowledge_base.db import (
    MIGRATIONS_DIR,
    alembic_config,
    make_engine,
    open_database,
    schema_revision,
)
from knowledge_base.models import Base


def _diff(db_url: str) -> list:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"include_name": fulltext.include_name, "compare_type": True}
            )
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_blank_database_migrates_to_exactly_the_models(db_url: str) -> None:
    open_database(db_url).close()
    assert _diff(db_url) == []
    engine = make_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_schema_comparison_detects_drift(sqlite_url: str) -> None:
    # the comparison above must be able to fail: drop an index and add a column by hand
    open_database(sqlite_url).close()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX ix_candidate_campaign_hash")
        conn.execute("ALTER TABLE candidate ADD COLUMN extra INTEGER")
    kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in _diff(sqlite_url)}
    assert {"add_index", "remove_column"} <= kinds


def test_sqlite_fulltext_objects_created(sqlite_db) -> None:
    with sqlite_db.engine.connect() as conn:
        names = {
            (row[0], row[1])
            for row in conn.exec_driver_sql("SELECT type, name FROM sqlite_master")
        }
    assert ("table", "knowledge_fts") in names
    for trigger in ("knowledge_fts_ai", "knowledge_fts_ad", "knowledge_fts_au"):
        assert ("trigger", trigger) in names


def test_downgrade_then_upgrade_roundtrip(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    config = alembic_config()
    with db.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        conn.commit()
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    db.close()
    db = open_database(sqlite_url)  # reopening re-applies the migration
    assert schema_revision(db) == {"0001"}
    db.close()
    assert _diff(sqlite_url) == []


def test_migration_keeps_frozen_copy_of_fulltext_definitions() -> None:
    path = MIGRATIONS_DIR / "versions" / "0001_initial.py"
    spec = importlib.util.spec_from_file_location("_mig0001", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the search query must use the indexed expression verbatim, or PostgreSQL ignores the index
    assert module._PG_TSVECTOR_SQL == fulltext.PG_TSVECTOR_SQL
    assert module._FTS_COLUMNS == fulltext.FTS_COLUMNS


def test_migrations_are_package_data() -> None:
    files = {p.relative_to(MIGRATIONS_DIR).as_posix() for p in MIGRATIONS_DIR.rglob("*.py")}
    assert {"env.py", "versions/0001_initial.py"} <= files
    assert not (Path(MIGRATIONS_DIR).parent / "alembic.ini").exists()  # none needed at runtime


@pytest.mark.postgres
def test_postgres_uses_gin_index_for_search(pg_server) -> None:
    url = pg_server.migrated_url()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_knowledge_fts'"
            ).scalar()
            assert found is not None and "gin" in found.lower()
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(
                r[0] for r in conn.exec_driver_sql(
                    f"EXPLAIN SELECT id FROM knowledge WHERE ({fulltext.PG_TSVECTOR_SQL}) "
                    "@@ plainto_tsquery('english', 'delta')"
                )
            )
            assert "ix_knowledge_fts" in plan
    finally:
        engine.dispose()


def test_alembic_command_line_path_without_ini(tmp_path: Path, capsys) -> None:
    # env.py without a passed connection builds its own engine from the configured URL
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    command.upgrade(alembic_config(url), "head")
    assert _diff(url) == []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
    # offline mode renders the SQL instead of running it
    command.upgrade(alembic_config(f"sqlite:///{tmp_path / 'never.db'}"), "head", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE candidate" in sql and "CREATE VIRTUAL TABLE knowledge_fts" in sql
    assert not (tmp_path / "never.db").exists()
