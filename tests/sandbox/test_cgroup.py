"""Each sandbox child in a memory cgroup of its own (``sandbox.cgroup``): the kernel's OOM
kills are counted for that child alone, the process tree's peak memory is reported, and the
cgroup is gone after the evaluation. Skipped where the host lets the driver make none."""

from __future__ import annotations

import os

import pytest

from evaluator.types import FailureKind, StageSpec
from sandbox import launcher
from sandbox.api import EvalRequest, SandboxLimits
from sandbox.cgroup import PREFIX, MemoryCgroup
from sandbox.launcher import IsolationConfig, run_evaluation
from tests.sandbox.fake_task import TRIVIAL

FAKE = "tests.sandbox.fake_task:FakeTask"

# touches ``x`` blocks of 64 MiB, so they count as resident memory
HOG = '''
class Model:
    def __init__(self):
        self.blocks = []

    def forward(self, x):
        for _ in range(x):
            self.blocks.append(b"\\x01" * (64 << 20))
        return float(len(self.blocks))
'''


def _probe() -> MemoryCgroup | None:
    group = MemoryCgroup.create()
    if group is not None:
        group.remove()
    return group


pytestmark = pytest.mark.skipif(_probe() is None, reason="no memory cgroup can be made here")


def _ours() -> list[str]:
    group = MemoryCgroup.create()
    assert group is not None
    try:
        return sorted(p.name for p in group.path.parent.iterdir()
                      if p.name.startswith(f"{PREFIX}{os.getpid()}-") and p != group.path)
    finally:
        group.remove()


def evaluate(code: str, names: tuple[str, ...], options: dict | None = None,
             config: IsolationConfig | None = None):
    specs = [StageSpec(name=n, timeout_s=30, options=(options or {}).get(n, {})) for n in names]
    request = EvalRequest(task=FAKE, code=code, stages=specs)
    return run_evaluation(request, SandboxLimits(load_timeout_s=20), isolation_config=config)


def test_the_child_reports_its_peak_memory_and_leaves_no_cgroup_behind() -> None:
    outcome = evaluate(HOG, ("build", "forward"), {"forward": {"x": 4}})
    assert outcome.ok, outcome.first_failure
    memory = outcome.results[0].artifacts["memory_cgroup"]
    assert memory["oom_kills"] == 0 and memory["limit_bytes"] is None
    assert memory["peak_bytes"] >= 4 * (64 << 20)  # the candidate's 256 MiB, at least
    assert _ours() == []


def test_an_oom_kill_in_the_childs_cgroup_is_oom_with_the_limit_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A hard limit (the test switch) below what the candidate touches, far below its
    rlimit: the kernel kills it inside its cgroup, and the cgroup's count says so (the
    machine-wide count is held still here)."""
    monkeypatch.setattr(launcher, "oom_kills", lambda: 7)
    config = IsolationConfig(cgroup_limit_bytes=768 << 20)
    outcome = evaluate(HOG, ("build", "forward"), {"forward": {"x": 24}}, config)
    failure = outcome.first_failure
    assert failure.stage == "forward" and failure.failure_kind is FailureKind.OOM, failure.message
    assert "reached their 0.75 GiB limit" in failure.message and outcome.exit_code == -9
    assert _ours() == []


def test_a_sigkill_is_not_oom_because_another_process_was_oom_killed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine-wide count rising (another process's OOM kill) no longer reads as this
    child's: its own cgroup counted none."""
    counts = iter((3, 4))
    monkeypatch.setattr(launcher, "oom_kills", lambda: next(counts, 4))
    outcome = evaluate(TRIVIAL, ("build", "sigkill", "forward"))
    failure = outcome.first_failure
    assert failure.failure_kind is FailureKind.KILLED and outcome.exit_code == -9, failure.message


def test_without_the_cgroup_the_machine_wide_count_decides() -> None:
    outcome = evaluate(TRIVIAL, ("build", "forward"), config=IsolationConfig(memory_cgroup=False))
    assert outcome.ok and "memory_cgroup" not in outcome.results[0].artifacts


def test_a_limit_below_what_the_group_already_holds_is_refused() -> None:
    group = MemoryCgroup.create()
    assert group is not None
    try:
        assert group.attach(os.getpid())  # this test process: far more than 1 KiB
        assert group.set_limit(1024) is False
    finally:
        parent = group.path.parent
        (parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
        assert group.remove()
