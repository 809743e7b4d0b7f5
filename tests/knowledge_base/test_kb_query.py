"""`disco query` backend: reads work, every writing form is refused with one line, and the
database file is byte-identical afterwards even when the classifier is bypassed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from knowledge_base import query as query_module
from knowledge_base import repository as repo
from knowledge_base.db import DatabaseError, open_database
from knowledge_base.query import QueryError, ReadOnlyQueryError, check_readonly, run_readonly_query

WRITES = [
    "INSERT INTO campaign (id) VALUES ('x')",
    "insert or replace into event (kind) values ('x')",
    "REPLACE INTO campaign (id) VALUES ('x')",
    "UPDATE candidate SET status = 'queued'",
    "DELETE FROM candidate",
    "DROP TABLE candidate",
    "CREATE TABLE t (x)",
    "create index ix_t on candidate(name)",
    "ALTER TABLE candidate ADD COLUMN y",
    "ATTACH DATABASE '/tmp/other.db' AS other",
    "DETACH DATABASE other",
    "VACUUM",
    "REINDEX",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA user_version = 7",
    "pragma main.user_version=7",
    "PRAGMA journal_mode(DELETE)",
    "PRAGMA optimize",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "SELECT 1; DELETE FROM candidate",
    "SELECT 1; SELECT 2",
    "WITH gone AS (DELETE FROM candidate RETURNING id) SELECT * FROM gone",
    "SELECT * INTO backup FROM candidate",
    "SELECT * FROM candidate FOR UPDATE",
    "/* comment */ DELETE FROM candidate",
    "-- just a comment\nUPDATE candidate SET name = 'x'",
    "BEGIN",
    "COMMIT",
    "ANALYZE",
    "TRUNCATE candidate",
    "SET default_transaction_read_only = off",
    "",
    "   ;  ",
]

READS = [
    ("SELECT status, count(*) FROM candidate GROUP BY status", ["status", "count(*)"]),
    ("select name from candidate where name like '%delete%' order by id;", ["name"]),
    ("SELECT replace(name, 'a', 'b') AS r FROM candidate -- drop table candidate", ["r"]),
    ("WITH t AS (SELECT id FROM candidate) SELECT count(*) AS n FROM t", ["n"]),
    ("select 'update; delete' as s", ["s"]),
    ("VALUES (1, 2)", None),
    ("EXPLAIN QUERY PLAN SELECT * FROM candidate WHERE campaign_id = 'c'", None),
    ("PRAGMA table_info(candidate)", None),
    ("PRAGMA journal_mode", ["journal_mode"]),
    ('SELECT "trigger" FROM knowledge', ["trigger"]),
]


def _files(path: Path) -> dict[str, str]:
    """sha256 of the database file and of its WAL when that holds anything (a read-only
    connection may leave an empty WAL file behind; no frames means nothing was written)."""
    out = {}
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists() and p.stat().st_size:
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    path = tmp_path / "q.db"
    with open_database(str(path)) as db, db.session() as s:
        repo.create_campaign(s, "c", "token-mixer", {}, "h")
        for i, status in enumerate(["evaluated", "evaluated", "failed", "queued"]):
            repo.add_candidate(s, "c", name=f"cand-delete-{i}", code="x", code_hash=str(i),
                               status=status)
    return path


def test_reads_return_columns_and_rows(populated: Path) -> None:
    url = f"sqlite:///{populated}"
    before = _files(populated)
    for sql, columns in READS:
        got_columns, rows = run_readonly_query(url, sql)
        if columns is not None:
            assert got_columns == columns, sql
        assert isinstance(rows, list)
    cols, rows = run_readonly_query(url, "SELECT status, count(*) FROM candidate GROUP BY status ORDER BY 1")
    assert rows == [("evaluated", 2), ("failed", 1), ("queued", 1)]
    assert run_readonly_query(url, "SELECT id FROM candidate ORDER BY id", max_rows=2)[1] == [(1,), (2,)]
    assert _files(populated) == before


@pytest.mark.parametrize("sql", WRITES)
def test_writing_statements_are_refused(populated: Path, sql: str) -> None:
    before = _files(populated)
    with pytest.raises(ReadOnlyQueryError) as info:
        run_readonly_query(f"sqlite:///{populated}", sql)
    assert "\n" not in str(info.value) and str(info.value)
    assert _files(populated) == before


def test_connection_refuses_writes_even_without_the_classifier(
    populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_module, "check_readonly", lambda sql: None)
    url = f"sqlite:///{populated}"
    before = _files(populated)
    for sql in WRITES:
        if not sql.strip(" ;") or sql.upper().startswith(("BEGIN", "COMMIT", "SET", "TRUNCATE")):
            continue  # not SQLite statements, or harmless transaction control
        with pytest.raises(QueryError):
            run_readonly_query(url, sql)
    assert _files(populated) == before
    assert run_readonly_query(url, "SELECT count(*) FROM candidate")[1] == [(4,)]
    assert not (populated.parent / "other.db").exists()


def test_load_extension_is_refused(populated: Path) -> None:
    with pytest.raises(ReadOnlyQueryError):
        run_readonly_query(f"sqlite:///{populated}", "SELECT load_extension('/tmp/evil.so')")


def test_missing_file_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "absent.db"
    with pytest.raises(QueryError, match="no database at"):
        run_readonly_query(str(target), "SELECT 1")
    assert not target.exists()


def test_query_errors_are_one_line_database_errors(populated: Path) -> None:
    with pytest.raises(QueryError) as info:
        run_readonly_query(f"sqlite:///{populated}", "SELECT * FROM no_such_table")
    assert isinstance(info.value, DatabaseError)  # callers catching DatabaseError see it
    assert "no such table" in str(info.value) and "\n" not in str(info.value)


def test_classifier_ignores_keywords_inside_literals_and_names() -> None:
    check_readonly("SELECT 'DROP TABLE x; DELETE' AS a, \"update\" FROM t /* insert */")
    check_readonly("SELECT $$ delete $$ AS a")
    check_readonly("select e'it\\'s; drop' as a")
    check_readonly("SELECT [create] FROM t")
    with pytest.raises(ReadOnlyQueryError, match="2 statements"):
        check_readonly("SELECT ';'; SELECT 1")


@pytest.mark.postgres
def test_postgres_read_only(pg_server, monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_server.migrated_url()
    with open_database(url) as db, db.session() as s:
        repo.create_campaign(s, "c", "token-mixer", {}, "h")
        repo.add_candidate(s, "c", name="a%b", code="x", code_hash="1", status="queued")
    cols, rows = run_readonly_query(url, "SELECT name FROM candidate WHERE name LIKE 'a%'")
    assert (cols, rows) == (["name"], [("a%b",)])
    for sql in ("DELETE FROM candidate", "WITH d AS (DELETE FROM candidate RETURNING 1) SELECT 1",
                "SELECT * INTO t2 FROM candidate"):
        with pytest.raises(ReadOnlyQueryError):
            run_readonly_query(url, sql)
    # bypass the classifier: the READ ONLY transaction still refuses
    monkeypatch.setattr(query_module, "check_readonly", lambda sql: None)
    for sql in ("DELETE FROM candidate", "CREATE TABLE t2 (x int)",
                "UPDATE candidate SET name = 'z'", "SELECT nextval(pg_get_serial_sequence('candidate', 'id'))"):
        with pytest.raises(ReadOnlyQueryError):
            run_readonly_query(url, sql)
    with pytest.raises(QueryError):
        run_readonly_query(url, "SET TRANSACTION READ WRITE")  # too late after the first query
    monkeypatch.undo()
    assert run_readonly_query(url, "SELECT name FROM candidate")[1] == [("a%b",)]
