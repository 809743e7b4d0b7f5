"""`kill -9` of a running campaign, then `disco run` again: the campaign completes with no
candidate evaluated twice and none lost (DESIGN.md section 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from knowledge_base import repository as repo
from knowledge_base.db import open_database
from tests.discovery.conftest import ROOT, disco, small_config


def finished_count(db_path) -> int:
    if not db_path.exists():
        return 0
    db = open_database(f"sqlite:///{db_path}")
    try:
        with db.read_session() as s:
            counts = repo.count_by_status(s, "killme") if repo.get_campaign(s, "killme") else {}
    finally:
        db.close()
    return counts.get("evaluated", 0) + counts.get("failed", 0)


def test_sigkill_mid_campaign_then_resume(tmp_path):
    cfg = small_config(tmp_path / "c.toml", "killme", 10)
    db_path = tmp_path / "disco.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "discovery.cli.main", "run", str(cfg), "--db", str(db_path)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while finished_count(db_path) < 3:
            assert proc.poll() is None, "campaign ended before it could be killed"
            assert time.monotonic() < deadline, "campaign made no progress"
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = finished_count(db_path)
    assert 3 <= killed_at < 10

    disco("run", str(cfg), "--db", str(db_path), cwd=tmp_path, check=True)

    db = open_database(f"sqlite:///{db_path}")
    try:
        with db.read_session() as s:
            counts = repo.count_by_status(s, "killme")
            assert counts.get("evaluated", 0) + counts.get("failed", 0) == 10
            assert not counts.get("running") and not counts.get("queued")
            assert repo.get_campaign(s, "killme").status == "finished"
            assert "resumed" in [e.kind for e in repo.events(s, "killme")]
            for c in repo.candidates(s, "killme", ("evaluated", "failed")):
                rows = repo.evaluations_for(s, c.id)
                # one completed evaluation per candidate: no stage stored twice
                dup = [k for k, n in Counter(e.stage for e in rows).items() if n > 1]
                assert not dup, (c.name, dup)
                assert len({e.attempt for e in rows}) == 1
    finally:
        db.close()
