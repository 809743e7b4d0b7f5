"""Each sandbox child in a memory cgroup of its own (``sandbox.cgroup``): the kernel's OOM
kills are counted for that child alone, the process tree's peak memory is reported, and the
cgroup is gone after the evaluation. The end-to-end tests are skipped where the host lets the
driver make none; the parsing and the cgroup v2 files are tested on stand-ins everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluator.types import FailureKind, StageSpec
from sandbox import launcher
from sandbox.api import EvalRequest, SandboxLimits
from sandbox.cgroup import PREFIX, MemoryCgroup, memory_cgroup_dirs
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


needs_cgroup = pytest.mark.skipif(_probe() is None, reason="no memory cgroup can be made here")


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


@needs_cgroup
def test_the_child_reports_its_peak_memory_and_leaves_no_cgroup_behind() -> None:
    outcome = evaluate(HOG, ("build", "forward"), {"forward": {"x": 4}})
    assert outcome.ok, outcome.first_failure
    memory = outcome.results[0].artifacts["memory_cgroup"]
    assert memory["oom_kills"] == 0 and memory["limit_bytes"] is None
    assert memory["peak_bytes"] >= 4 * (64 << 20)  # the candidate's 256 MiB, at least
    assert _ours() == []


@needs_cgroup
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


@needs_cgroup
def test_a_sigkill_is_not_oom_because_another_process_was_oom_killed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine-wide count rising (another process's OOM kill) no longer reads as this
    child's: its own cgroup counted none."""
    counts = iter((3, 4))
    monkeypatch.setattr(launcher, "oom_kills", lambda: next(counts, 4))
    outcome = evaluate(TRIVIAL, ("build", "sigkill", "forward"))
    failure = outcome.first_failure
    assert failure.failure_kind is FailureKind.KILLED and outcome.exit_code == -9, failure.message


@needs_cgroup
def test_without_the_cgroup_the_machine_wide_count_decides() -> None:
    outcome = evaluate(TRIVIAL, ("build", "forward"), config=IsolationConfig(memory_cgroup=False))
    assert outcome.ok and "memory_cgroup" not in outcome.results[0].artifacts


@needs_cgroup
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


HYBRID_MOUNTS = """\
30 25 0:26 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
35 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
36 25 0:32 / /sys/fs/cgroup/pids rw,relatime shared:15 - cgroup cgroup rw,pids
"""
HYBRID_OWN = "5:pids:/user.slice\n4:memory:/jobs/a\n0::/jobs/a\n"


def test_the_v1_memory_hierarchy_comes_first_on_a_hybrid_host() -> None:
    assert memory_cgroup_dirs(HYBRID_MOUNTS, HYBRID_OWN) == [
        (Path("/sys/fs/cgroup/memory/jobs/a"), 1), (Path("/sys/fs/cgroup/unified/jobs/a"), 2)]


def test_a_v2_only_host_and_a_cgroup_namespace() -> None:
    mounts = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    assert memory_cgroup_dirs(mounts, "0::/jobs/b\n") == [(Path("/sys/fs/cgroup/jobs/b"), 2)]
    # inside a cgroup namespace the mount's root is our own cgroup, the path above it hidden
    inside = "30 25 0:26 /jobs/b /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert memory_cgroup_dirs(inside, "0::/\n") == [(Path("/sys/fs/cgroup"), 2)]
    assert memory_cgroup_dirs(inside, "0::/jobs/b/c\n") == [(Path("/sys/fs/cgroup/c"), 2)]
    # no memory controller in the v1 hierarchies, no v2 line: nothing
    assert memory_cgroup_dirs(HYBRID_MOUNTS.replace("rw,memory", "rw,cpu"), "4:memory:/x\n") == []


def test_cgroup_v2_files_are_read_and_written(tmp_path: Path) -> None:
    group = MemoryCgroup(tmp_path, 2)
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\n")
    (tmp_path / "memory.peak").write_text("123456\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert group.oom_kills() == 1 and group.peak_bytes() == 123456 and group.usage_bytes() == 1000
    assert group.set_limit(999) is False and not (tmp_path / "memory.max").exists()
    assert group.set_limit(4096) is True and (tmp_path / "memory.max").read_text() == "4096\n"


def test_v2_without_the_memory_controller_for_children_makes_no_group(tmp_path: Path) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("cpu pids\n")
    assert MemoryCgroup.create([(tmp_path, 2)]) is None
    assert [p.name for p in tmp_path.iterdir()] == ["cgroup.subtree_control"]
    # a directory that takes the group but has no OOM counter (no cgroup there) is given up
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids\n")
    assert MemoryCgroup.create([(tmp_path, 2)]) is None
    assert [p.name for p in tmp_path.iterdir()] == ["cgroup.subtree_control"]


def test_a_dead_drivers_empty_group_is_swept(tmp_path: Path) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    dead = 2 ** 22 + 12345  # above the largest pid_max Linux allows: no such process
    (tmp_path / f"{PREFIX}{dead}-0").mkdir()
    (tmp_path / f"{PREFIX}{os.getpid()}-99").mkdir()  # ours: kept
    MemoryCgroup.create([(tmp_path, 2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{PREFIX}{os.getpid()}-99", "cgroup.subtree_control"]


@needs_cgroup
def test_a_driver_killed_mid_evaluation_leaves_a_group_the_next_driver_sweeps() -> None:
    """``kill -9`` of the driver: its child dies with it (the monitor watches its parent),
    and the empty group it leaves is removed by the next ``create``."""
    root = Path(__file__).resolve().parents[2]
    script = ("import sys, time\n"
              f"sys.path.insert(0, {str(root)!r})\n"
              "from sandbox.launcher import Child\n"
              "child = Child().spawn()\n"
              "child.wait_ready()\n"
              "print(child._cgroup.path, flush=True)\n"
              "time.sleep(120)\n")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        group = Path(driver.stdout.readline().strip())
        assert group.name.startswith(f"{PREFIX}{driver.pid}-")
        assert (group / "cgroup.procs").read_text().split()  # the child runs inside
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while (group / "cgroup.procs").read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group.is_dir()  # nobody removed it: its driver is gone
    fresh = MemoryCgroup.create()
    assert fresh is not None
    fresh.remove()
    assert not group.exists()
