"""Opening the knowledge base: URL resolution, SQLite settings, errors, transactions, and
concurrent / killed writer processes."""

from __future__ import annotations

import datetime as dt
import enum
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from knowledge_base import repository as repo
from knowledge_base.db import DEFAULT_URL, DatabaseError, open_database, resolve_url, schema_revision
from knowledge_base.models import Campaign
from knowledge_base.values import as_utc, json_safe

from .conftest import ROOT


def test_resolve_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCO_DB", raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///./disco.db"
    monkeypatch.setenv("DISCO_DB", "postgresql://u@h/db")
    assert resolve_url(None) == "postgresql://u@h/db"
    assert resolve_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"  # CLI wins over env
    monkeypatch.setenv("DISCO_DB", "  ")
    assert resolve_url(None) == DEFAULT_URL  # blank env is unset


def test_resolve_url_bare_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISCO_DB", raising=False)
    assert resolve_url("runs/x.db") == "sqlite:///runs/x.db"
    assert resolve_url("/abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_url("~/x.db") == "sqlite:///" + os.path.expanduser("~/x.db")
    monkeypatch.setenv("DISCO_DB", "env/y.db")
    assert resolve_url(None) == "sqlite:///env/y.db"


def test_open_creates_parent_dirs_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "kb.db"
    with open_database(str(path)) as db:  # a bare path is accepted too
        assert path.is_file()
        assert schema_revision(db) == {"0001"}
        with db.read_session() as s:
            assert repo.list_campaigns(s) == []
    with open_database(f"sqlite:///{path}") as db:  # reopening is a no-op migration
        assert schema_revision(db) == {"0001"}


def test_sqlite_pragmas_on_every_connection(sqlite_db) -> None:
    # two connections checked out at once: both must carry the settings
    with sqlite_db.engine.connect() as c1, sqlite_db.engine.connect() as c2:
        for conn in (c1, c2):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_foreign_keys_cascade(sqlite_db) -> None:
    with sqlite_db.session() as s:
        repo.create_campaign(s, "c1", "token-mixer", {}, "h")
        repo.add_candidate(s, "c1", name="a", code="x=1", code_hash="h1")
    with sqlite_db.session() as s:
        s.delete(s.get(Campaign, "c1"))
    with sqlite_db.read_session() as s:
        assert s.execute(text("SELECT count(*) FROM candidate")).scalar() == 0


def test_session_rolls_back_on_error(sqlite_db) -> None:
    with pytest.raises(RuntimeError):
        with sqlite_db.session() as s:
            repo.create_campaign(s, "doomed", "token-mixer", {}, "h")
            repo.add_event(s, "doomed", "created")
            raise RuntimeError("crash mid-step")
    with sqlite_db.session() as s:
        repo.create_campaign(s, "kept", "token-mixer", {}, "h")
    with sqlite_db.read_session() as s:
        assert [c.id for c in repo.list_campaigns(s)] == ["kept"]
        assert repo.events(s, "doomed") == []


def test_read_session_does_not_persist(sqlite_db) -> None:
    with sqlite_db.read_session() as s:
        repo.create_campaign(s, "ghost", "token-mixer", {}, "h")
    with sqlite_db.read_session() as s:
        assert repo.get_campaign(s, "ghost") is None


def test_in_memory_sqlite_works() -> None:
    with open_database("sqlite://") as db:
        with db.session() as s:
            repo.create_campaign(s, "m", "token-mixer", {}, "h")
        with db.read_session() as s:
            assert repo.get_campaign(s, "m") is not None


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://u@h/db", "unsupported database URL"),
        ("sqlite+nodriver:///x.db", "invalid database URL"),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/db", "cannot open database"),
    ],
)
def test_bad_urls_give_one_line_errors(url: str, fragment: str) -> None:
    with pytest.raises(DatabaseError) as info:
        open_database(url)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert "secret" not in message  # passwords are never echoed


def test_unopenable_sqlite_path(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(DatabaseError, match="cannot open database"):
        open_database(f"sqlite:///{tmp_path / 'adir'}")  # a directory, not a file


def test_not_a_database_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError) as info:
        open_database(str(junk))
    assert "\n" not in str(info.value)


def test_newer_schema_is_refused(sqlite_url: str) -> None:
    open_database(sqlite_url).close()
    db = open_database(sqlite_url)
    with db.session() as s:
        s.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    db.close()
    with pytest.raises(DatabaseError) as info:
        open_database(sqlite_url)
    message = str(info.value)
    assert "9999_future" in message and "newer" in message and "\n" not in message


# --- several processes ----------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from knowledge_base import repository as repo
    from knowledge_base.db import open_database
    url, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = open_database(url)
    with db.session() as s:
        if repo.get_campaign(s, "shared") is None:
            repo.create_campaign(s, "shared", "token-mixer", {}, "h")
    for i in range(n):
        # read-then-write in one transaction: the pattern that fails under a deferred BEGIN
        with db.session() as s:
            seen = repo.count_by_status(s, "shared").get("queued", 0)
            c = repo.add_candidate(s, "shared", name=f"{tag}-{i}", code="x", code_hash=f"{tag}{i}",
                                   status="queued")
            repo.add_event(s, "shared", "added", data={"seen": seen})
        print(c.id, flush=True)
    """
)


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_processes_write_concurrently(sqlite_url: str) -> None:
    n = 40
    procs = [_spawn([sqlite_url, tag, str(n)]) for tag in ("a", "b")]  # both open a blank file
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert len(out.split()) == n
    with open_database(sqlite_url) as db, db.read_session() as s:
        assert repo.count_by_status(s, "shared") == {"queued": 2 * n}
        assert len(repo.events(s, "shared")) == 2 * n
        assert schema_revision(db) == {"0001"}


def test_kill_9_loses_no_committed_write(sqlite_url: str) -> None:
    proc = _spawn([sqlite_url, "k", "100000"])
    committed: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while len(committed) < 25 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(committed) == 25, proc.stderr.read() if proc.stderr else ""
    with open_database(sqlite_url) as db:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        with db.read_session() as s:
            ids = {c.id for c in repo.candidates(s, "shared")}
        assert set(committed) <= ids
        # a transaction is all-or-nothing: every stored candidate has its event
        with db.read_session() as s:
            assert len(repo.events(s, "shared")) == len(ids)


def test_concurrent_first_opens_migrate_once(db_url: str) -> None:
    # several workers open the same blank database at once: the migration lock serialises them
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_database(db_url).close()
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with open_database(db_url) as db:
        assert schema_revision(db) == {"0001"}
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_json_values_and_timestamps_are_portable() -> None:
    assert json_safe({"a": float("nan"), "b": (1, float("-inf")), 3: Kind.X}) == {
        "a": None, "b": [1, None], "3": "x"}
    with pytest.raises(TypeError, match="JSON column"):
        json_safe({"f": object()})
    naive = dt.datetime(2025, 1, 2, 3, 4, 5)
    assert as_utc(naive) == naive.replace(tzinfo=dt.timezone.utc)
    plus2 = dt.datetime(2025, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert as_utc(plus2) == naive.replace(tzinfo=dt.timezone.utc)


class Kind(str, enum.Enum):
    X = "x"


def test_uncreatable_parent_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatabaseError, match="cannot create the folder"):
        open_database(str(blocker / "sub" / "kb.db"))
