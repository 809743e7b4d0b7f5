"""Host fixtures the hostile programs aim at, and the checks that they were not harmed."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from evaluator.types import StageSpec
from sandbox import evaluate
from sandbox.api import EvalOutcome, EvalRequest, SandboxLimits
from sandbox.launcher import PROJECT_ROOT, Child, IsolationConfig
from sandbox.reaper import find_strays
from tests.adversarial.programs import Hostile

FAKE_TASK = "tests.sandbox.fake_task:FakeTask"


def _shadow_line() -> str:
    try:
        return Path("/etc/shadow").read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""


SHADOW_LINE = _shadow_line()


@dataclass
class Host:
    """Everything a hostile program may try to touch, and how to check it afterwards."""

    scratch: Path
    db: Path
    db_digest: str
    listener: socket.socket
    victim: subprocess.Popen
    secret_name: str
    secret: str

    def values(self) -> dict[str, str]:
        return {"scratch": str(self.scratch), "db": str(self.db),
                "port": str(self.listener.getsockname()[1]), "victim": str(self.victim.pid),
                "driver": str(os.getpid()), "secret_name": self.secret_name}

    def code(self, program: Hostile) -> str:
        return string.Template(program.code).substitute(self.values())

    def assert_unharmed(self, outcome: EvalOutcome, *, uid: int | None, marker: str | None) -> None:
        planted = sorted(p.name for p in self.scratch.iterdir() if p.name.startswith("pwned"))
        assert planted == [], f"files created outside the working directory: {planted}"
        self.listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn, _ = self.listener.accept()
            conn.close()
        assert self.victim.poll() is None, "the sandbox killed a process of the driver's user"
        dump = outcome.model_dump_json()
        assert self.secret not in dump, "a secret reached the outcome"
        assert hashlib.sha256(self.db.read_bytes()).hexdigest() == self.db_digest, "database changed"
        with sqlite3.connect(self.db) as con:
            assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
            assert con.execute("select count(*) from candidate").fetchone()[0] == 2
        assert "CAMPAIGN-ROW-MARKER" not in dump, "database contents reached the outcome"
        if SHADOW_LINE:
            assert SHADOW_LINE not in dump, "/etc/shadow reached the outcome"
        strays = find_strays(uid=uid if uid else None, marker=marker)
        assert strays == [], f"processes survived the evaluation: {strays}"


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch):
    base = Path(PROJECT_ROOT) / ".pytest_cache" / "sandbox-scratch"
    base.mkdir(parents=True, exist_ok=True)
    scratch = base / secrets.token_hex(6)
    scratch.mkdir()
    scratch.chmod(0o777)  # so only the sandbox, not file permissions, stops writes
    secret_name = "DISCO_TEST_OPENAI_API_KEY"
    secret = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(secret_name, secret)
    (scratch / ".env").write_text(f"OPENAI_API_KEY={secret}\n")
    (scratch / ".env").chmod(0o666)
    db = scratch / "campaign.db"
    with sqlite3.connect(db) as con:
        con.execute("create table candidate(name text, status text)")
        con.execute("insert into candidate values ('seed', 'CAMPAIGN-ROW-MARKER')")
        con.execute("insert into candidate values ('child', 'evaluated')")
    db.chmod(0o666)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", secret])
    yield Host(scratch, db, hashlib.sha256(db.read_bytes()).hexdigest(), listener, victim,
               secret_name, secret)
    victim.kill()
    victim.wait()
    listener.close()
    shutil.rmtree(scratch, ignore_errors=True)


def request_for(program: Hostile, code: str) -> EvalRequest:
    stages = [StageSpec(name=name, timeout_s=program.stage_timeout_s) for name in program.stages]
    return EvalRequest(task=FAKE_TASK, code=code, stages=stages)


def limits_for(program: Hostile) -> SandboxLimits:
    return SandboxLimits(load_timeout_s=20.0, **program.limits)


def run_with_policy(program: Hostile, host: Host) -> EvalOutcome:
    """The full sandbox, as the campaign uses it."""
    return evaluate(request_for(program, host.code(program)), limits_for(program))


def run_bypassing_policy(program: Hostile, host: Host,
                         config: IsolationConfig | None = None) -> tuple[EvalOutcome, Child]:
    """The OS layer alone: the static policy is switched off (driver-side test switch)."""
    limits = limits_for(program)
    child = Child(config, torch_threads=limits.torch_threads).spawn()
    outcome = child.evaluate(request_for(program, host.code(program)), limits,
                             static_policy=False)
    return outcome, child


def isolation_uid(outcome: EvalOutcome) -> int | None:
    iso = outcome.results[0].artifacts.get("isolation") if outcome.results else None
    return iso["uid"] if iso else None


def settle(program: Hostile) -> None:
    """Give delayed hostile actions (the setsid grandchild) time to fire if they survived."""
    if "grandchild" in program.name:
        time.sleep(1.3)
