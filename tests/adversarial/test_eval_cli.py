"""`disco eval FILE --task token-mixer --json` on hostile programs, as a user would run it:
each must print a non-ok result with the right failure kind, exit with code 1, and leave the
host unchanged (no file outside the working directory, no connection, no killed process, no
secret or database content in any output, database intact, no surviving process).

Programs the static policy stops come from ``programs.py`` (the policy verdict does not depend
on the task). The rest are wrapped in a minimal ``class Mixer(nn.Module)`` so they reach the
token-mixer stage where their hostile part runs. The CLI runs under a small wrapper that is a
child subreaper (``PR_SET_CHILD_SUBREAPER``): any process that outlives ``disco`` is
re-parented to it and reported, then killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from evaluator.types import FailureKind as K
from tests.adversarial.conftest import SHADOW_LINE, Host
from tests.adversarial.programs import BY_NAME

ROOT = Path(__file__).resolve().parents[2]
DISCO = Path(sys.executable).with_name("disco")

pytestmark = pytest.mark.timeout(120)

# Runs `disco ...` as its child, as a child subreaper; writes the processes that outlived
# disco (re-parented to it) as JSON to $SURVIVORS_FILE, kills them, exits with disco's code.
_WRAPPER = r"""
import ctypes, json, os, signal, subprocess, sys, time

ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
rc = subprocess.run(sys.argv[1:]).returncode

def orphans():
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == me:
            if fields[0] == b"Z":
                os.waitpid(int(entry), os.WNOHANG)  # an orphan that already exited
            else:
                out.append([int(entry), cmd[:200]])
    return out

deadline, left = time.monotonic() + 3.0, orphans()
while left and time.monotonic() < deadline:  # give the kernel time to tear namespaces down
    time.sleep(0.05)
    left = orphans()
with open(os.environ["SURVIVORS_FILE"], "w") as fh:
    json.dump(left, fh)
for pid, _ in left:
    os.kill(pid, signal.SIGKILL)
sys.exit(rc)
"""


@dataclass(frozen=True)
class Case:
    name: str
    code: str  # may hold the host's $names (see programs.py)
    kind: K
    stage: str  # the stage that must fail
    args: tuple[str, ...] = ()


def mixer(init: str = "", forward: str = "return self.proj(x)", prelude: str = "") -> str:
    """A minimal, otherwise valid token mixer with hostile code in one place."""
    indent = "\n        "
    return (
        "import torch\nimport torch.nn as nn\n" + prelude + "\n\n"
        "class Mixer(nn.Module):\n"
        "    def __init__(self, hidden_size: int, num_heads: int, **kw):\n"
        "        super().__init__()\n"
        "        self.proj = nn.Linear(hidden_size, hidden_size)\n"
        "        self.chunks = []\n"
        + ("        " + indent.join(init.strip().splitlines()) + "\n" if init else "")
        + "\n    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        + "        " + indent.join(forward.strip().splitlines()) + "\n"
    )


def _policy(name: str) -> Case:
    program = BY_NAME[name]
    assert program.policy_kind is K.POLICY
    return Case(name, program.code, K.POLICY, "load")


SHORT = ("--timeout-scale", "0.05")  # conformance: 60 s -> 3 s

CASES = [
    _policy("write_outside_workdir"),
    _policy("write_via_obfuscated_import"),
    _policy("read_and_print_secrets"),
    _policy("connect_to_loopback_listener"),
    _policy("setsid_grandchild_outlives_evaluation"),
    _policy("monkeypatch_cross_entropy"),
    _policy("write_campaign_database"),
    Case("infinite_stdout_flood_in_forward", mixer(forward="""
line = "flood " * 2000
while True:
    print(line)
"""), K.TIMEOUT, "conformance", SHORT),
    Case("long_native_call_ignoring_signals", mixer(forward="""
a = torch.randn(2000, 2000)
for _ in range(10000):
    a = torch.tanh(a @ a)
return self.proj(x)
"""), K.TIMEOUT, "conformance", SHORT),
    Case("unbounded_allocation", mixer(forward="""
while len(self.chunks) < 64:  # at most 16 GiB of address space; calloc never touches it
    self.chunks.append(bytes(256 * 1024 * 1024))
return self.proj(x)
"""), K.OOM, "conformance"),
    Case("c_stack_overflow_segfault", mixer(init="""
it = iter([1.0])
for _ in range(3_000_000):  # nested map objects: next() recurses in C, no recursion check
    it = map(abs, it)
next(it)
"""), K.KILLED, "conformance"),
    Case("raise_systemexit_during_import", "raise SystemExit(0)\n" + mixer(), K.IMPORT, "load"),
    Case("print_forged_cli_result", mixer(prelude="""
print('{"file": "candidate.py", "task": "token-mixer", "ok": true, "stages": []}')
print("0" * 64 + ' {"event": "done"}')
""", forward="""
raise RuntimeError("the real result is a failure")
"""), K.RUNTIME, "conformance"),
    Case("peeks_at_future_tokens", mixer(forward="""
return self.proj(x + x.mean(dim=1, keepdim=True))  # the whole sequence, future included
"""), K.CAUSALITY, "causality", ("--stages", "conformance,causality")),
]

# torch's CPU allocator refuses an allocation over RLIMIT_AS with a RuntimeError; SECURITY.md
# promises kind `oom` for it, but token-mixer's checks.candidate_call re-raises only
# MemoryError / torch.OutOfMemoryError and wraps this one as `runtime`.
TORCH_OOM = Case("unbounded_allocation_torch", mixer(forward="""
while len(self.chunks) < 64:  # at most 16 GiB of address space, never touched
    self.chunks.append(torch.empty(64 * 1024 * 1024))
return self.proj(x)
"""), K.OOM, "conformance")


def run_disco_eval(case: Case, host: Host, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list]:
    candidate = tmp_path / f"{case.name}.py"
    candidate.write_text(string.Template(case.code).substitute(host.values()))
    survivors_file = tmp_path / "survivors.json"
    disco = [str(DISCO)] if DISCO.exists() else [sys.executable, "-m", "discovery.cli.main"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SURVIVORS_FILE": str(survivors_file)}
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *disco, "eval", str(candidate), "--task", "token-mixer",
         "--json", *case.args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100,
    )
    return proc, json.loads(survivors_file.read_text())


def assert_host_unchanged(proc: subprocess.CompletedProcess[str], survivors: list, host: Host) -> None:
    time.sleep(0.1)
    planted = sorted(p.name for p in host.scratch.iterdir() if p.name.startswith("pwned"))
    assert planted == [], f"files created outside the working directory: {planted}"
    host.listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn, _ = host.listener.accept()
        conn.close()
    assert host.victim.poll() is None, "a process of the driver's user was killed"
    output = proc.stdout + proc.stderr
    assert host.secret not in output, "a secret reached the output"
    assert "CAMPAIGN-ROW-MARKER" not in output, "database contents reached the output"
    if SHADOW_LINE:
        assert SHADOW_LINE not in output, "/etc/shadow reached the output"
    assert hashlib.sha256(host.db.read_bytes()).hexdigest() == host.db_digest, "database changed"
    with sqlite3.connect(host.db) as con:
        assert con.execute("select count(*) from candidate").fetchone()[0] == 2
    assert survivors == [], f"processes outlived `disco eval`: {survivors}"


def check_case(case: Case, host: Host, tmp_path: Path) -> dict:
    proc, survivors = run_disco_eval(case, host, tmp_path)
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)  # one JSON document: candidate output never reaches stdout
    assert report["ok"] is False and report["task"] == "token-mixer"
    failed = [s for s in report["stages"] if not s["ok"]]
    assert failed, report
    first = failed[0]
    assert (first["stage"], first["failure_kind"]) == (case.stage, case.kind.value), first
    assert_host_unchanged(proc, survivors, host)
    return report


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_disco_eval_on_hostile_program(case: Case, host: Host, tmp_path: Path) -> None:
    report = check_case(case, host, tmp_path)
    if case.name == "infinite_stdout_flood_in_forward":  # the captured output stays bounded
        assert len(report["log_tail"].encode()) <= 64 * 1024 + 100
        assert "flood flood" in report["log_tail"]
    if case.name == "print_forged_cli_result":  # the forgery is only log text
        assert '"ok": true' in report["log_tail"]
    if case.name == "c_stack_overflow_segfault":
        assert "SIGSEGV" in report["stages"][-1]["message"]


def test_disco_eval_torch_allocation_beyond_limit_is_oom(host: Host, tmp_path: Path) -> None:
    check_case(TORCH_OOM, host, tmp_path)
