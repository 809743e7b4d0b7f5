"""Read-only SQL over the knowledge base, for ``disco query``.

A statement must pass two independent guards, so the database is unchanged even if one of them
has a gap:

1. A classifier (``check_readonly``) that lexes the text (comments, strings, quoted names and
   PostgreSQL dollar quotes are skipped, never mistaken for keywords) and accepts exactly one
   statement starting with SELECT, WITH, VALUES, EXPLAIN, SHOW or a reading PRAGMA, with no
   writing keyword anywhere (INSERT, UPDATE, DELETE, DROP, CREATE, ALTER, ATTACH, SELECT ...
   INTO, ...).
2. The connection itself cannot write. SQLite: the file is opened with ``mode=ro``,
   ``PRAGMA query_only=ON`` is set and an authorizer callback denies every action except
   reads, selects, functions (bar ``load_extension``) and reading pragmas. PostgreSQL: the
   statement runs in a READ ONLY transaction that is rolled back.

Errors are ``QueryError`` (a ``DatabaseError``; ``ReadOnlyQueryError`` for refusals) with a
one-line message.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, exc
from sqlalchemy.engine import URL

from knowledge_base.db import DatabaseError, one_line_error, parse_url

READ_STARTS = frozenset({"select", "with", "values", "explain", "show", "pragma"})
# Words that make a statement write wherever they appear (a data-modifying CTE, SELECT ...
# INTO, FOR UPDATE); statements that merely start with a writing verb fail READ_STARTS first.
WRITE_WORDS = frozenset({
    "insert", "update", "delete", "replace", "upsert", "merge", "into", "drop", "create",
    "alter", "attach", "detach", "vacuum", "reindex", "truncate", "grant", "revoke", "copy",
})
# PRAGMAs that only read. With an argument only the introspection ones are allowed (for the
# others an argument means "set").
READ_PRAGMAS = frozenset({
    "application_id", "collation_list", "compile_options", "data_version", "database_list",
    "encoding", "foreign_key_check", "foreign_key_list", "foreign_keys", "freelist_count",
    "function_list", "index_info", "index_list", "index_xinfo", "integrity_check",
    "journal_mode", "module_list", "page_count", "page_size", "pragma_list", "quick_check",
    "schema_version", "table_info", "table_list", "table_xinfo", "user_version",
    "busy_timeout", "synchronous", "query_only", "auto_vacuum", "cache_size",
})
ARG_PRAGMAS = frozenset({
    "foreign_key_check", "foreign_key_list", "index_info", "index_list", "index_xinfo",
    "integrity_check", "quick_check", "table_info", "table_list", "table_xinfo",
})


class QueryError(DatabaseError):
    """A query could not be run; the message is one line for the user."""


class ReadOnlyQueryError(QueryError):
    """The statement would (or might) write, so it was refused."""


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*.*?(?:\*/|\Z))
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z))
  | (?P<string>'(?:[^']|'')*(?:'|\Z))
  | (?P<dquote>"(?:[^"]|"")*(?:"|\Z))
  | (?P<backtick>`(?:[^`]|``)*(?:`|\Z))
  | (?P<bracket>\[[^\]]*(?:\]|\Z))
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$.*?(?:\$(?P=tag)?\$|\Z))
  | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(sql: str) -> list[tuple[str, str]]:
    """``(kind, text)`` for words and punctuation; comments, strings and quoted names skipped
    (a quoted name is kept as kind ``name`` so the statement shape survives)."""
    out: list[tuple[str, str]] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "tag":  # the inner group of a dollar quote
            kind = "dollar"
        if kind in ("space", "line_comment", "block_comment"):
            continue
        if kind in ("string", "estring", "dollar", "number"):
            out.append(("literal", ""))
        elif kind in ("dquote", "backtick", "bracket"):
            out.append(("name", ""))
        elif kind == "word":
            out.append(("word", match.group().lower()))
        else:
            out.append(("punct", match.group()))
    return out


def check_readonly(sql: str) -> None:
    """Raise ``ReadOnlyQueryError`` unless ``sql`` is one statement that only reads."""
    tokens = _tokens(sql)
    statements: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token == ("punct", ";"):
            statements.append([])
        else:
            statements[-1].append(token)
    statements = [s for s in statements if s]
    if not statements:
        raise ReadOnlyQueryError("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise ReadOnlyQueryError(
            f"refused: {len(statements)} statements given; disco query runs exactly one"
        )
    stmt = statements[0]
    first_kind, first = stmt[0]
    if first_kind != "word" or first not in READ_STARTS:
        shown = first.upper() if first_kind == "word" else stmt[0][1] or "a quoted name"
        raise ReadOnlyQueryError(
            f"refused: disco query only reads, and {shown} is not a reading statement "
            "(use SELECT, WITH, VALUES, EXPLAIN or a reading PRAGMA)"
        )
    if first == "pragma":
        _check_pragma(stmt)
    for i, (kind, word) in enumerate(stmt):
        if kind != "word" or word not in WRITE_WORDS:
            continue
        if word == "replace" and i + 1 < len(stmt) and stmt[i + 1] == ("punct", "("):
            continue  # the replace() string function
        raise ReadOnlyQueryError(
            f"refused: disco query only reads, and the statement contains {word.upper()}"
        )


def _check_pragma(stmt: list[tuple[str, str]]) -> None:
    words = stmt[1:]
    if len(words) >= 2 and words[1] == ("punct", "."):  # PRAGMA schema.name
        words = words[2:]
    if not words or words[0][0] != "word":
        raise ReadOnlyQueryError("refused: PRAGMA needs a name, e.g. PRAGMA table_info(candidate)")
    name = words[0][1]
    rest = words[1:]
    if any(tok == ("punct", "=") for tok in rest):
        raise ReadOnlyQueryError(f"refused: PRAGMA {name} = ... changes the database settings")
    if name not in READ_PRAGMAS:
        raise ReadOnlyQueryError(f"refused: PRAGMA {name} is not a reading pragma")
    if rest and name not in ARG_PRAGMAS:
        raise ReadOnlyQueryError(f"refused: PRAGMA {name}(...) with an argument sets a value")


def run_readonly_query(
    url: str, sql: str, *, max_rows: int | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only statement; returns column names and rows (at most ``max_rows``)."""
    check_readonly(sql)
    sql = _strip_terminators(sql)
    try:
        parsed = parse_url(url)
    except DatabaseError as err:
        raise QueryError(str(err)) from err
    if parsed.get_backend_name() == "sqlite":
        return _run_sqlite(parsed.database or "", sql, max_rows)
    return _run_postgres(parsed, sql, max_rows)


def _strip_terminators(sql: str) -> str:
    """Drop trailing semicolons (drivers run one statement and would see an empty second)."""
    stripped = sql.rstrip()
    while stripped.endswith(";"):
        stripped = stripped[:-1].rstrip()
    return stripped


# --- SQLite ----------------------------------------------------------------------------------

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
_ALLOWED_ACTIONS.add(getattr(sqlite3, "SQLITE_RECURSIVE", 33))


def _authorizer(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return sqlite3.SQLITE_DENY
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in READ_PRAGMAS and (arg2 is None or name in ARG_PRAGMAS):
            return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _run_sqlite(
    database: str, sql: str, max_rows: int | None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    if database in ("", ":memory:"):
        raise QueryError("disco query needs a database file, not an in-memory database")
    path = Path(database).expanduser().resolve()
    if not path.is_file():
        raise QueryError(f"no database at {path}: run a campaign first or pass --db")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as err:
        raise QueryError(f"cannot open {path} read-only: {err}") from err
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorizer)
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
        return columns, [tuple(r) for r in rows]
    except (sqlite3.Warning, sqlite3.DatabaseError) as err:
        message = one_line_error(err)
        if any(s in message for s in ("not authorized", "readonly", "read-only", "one statement")):
            raise ReadOnlyQueryError(f"refused: disco query only reads ({message})") from err
        raise QueryError(f"query failed: {message}") from err
    finally:
        conn.rollback()
        conn.close()


# --- PostgreSQL ------------------------------------------------------------------------------


def _run_postgres(
    url: URL, sql: str, max_rows: int | None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_engine(url)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as err:
        raise QueryError(f"cannot use {shown}: {one_line_error(err)}") from err
    try:
        try:
            raw = engine.raw_connection()
        except exc.SQLAlchemyError as err:
            raise QueryError(f"cannot connect to {shown}: {one_line_error(err)}") from err
        try:
            conn = raw.dbapi_connection
            assert conn is not None
            conn.rollback()
            cursor = conn.cursor()
            # The driver opens a transaction on the first statement; make it READ ONLY, then
            # run a query, after which SET TRANSACTION READ WRITE is refused whatever the
            # user's statement tries.
            cursor.execute("SET TRANSACTION READ ONLY")
            cursor.execute("SELECT 1")
            cursor.execute(sql)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchall() if max_rows is None else cursor.fetchmany(max_rows)
            return columns, [tuple(r) for r in rows]
        except Exception as err:  # psycopg errors; keep the message to one line
            message = one_line_error(err)
            if "read-only" in message or "read only" in message:
                raise ReadOnlyQueryError(f"refused: disco query only reads ({message})") from err
            raise QueryError(f"query failed: {message}") from err
        finally:
            try:
                raw.dbapi_connection.rollback()  # type: ignore[union-attr]
            finally:
                raw.invalidate()
    finally:
        engine.dispose()
