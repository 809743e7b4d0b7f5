"""RayRunner against a real local Ray cluster (loopback, started in-process): a Ray worker
that dies mid-evaluation becomes an ``infra`` outcome, the loop records it, evaluates the
same candidate again (attempt 2) and the campaign finishes.

Every evaluation goes through the real sandbox (toy task, ~0.5 s each). One Ray cluster is
shared by the module (its start costs ~10 s on 2 cores) and always shut down at the end.
Two ways to lose a worker:
- the task's function SIGKILLs its own worker on the first call (``RayRunner(evaluate=...)``);
- the test SIGKILLs the ``ray::evaluate_job`` worker from outside while its sandbox child
  is running, as an OOM killer or a lost node would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery.config import parse_config
from discovery.loop import CampaignLoop
from discovery.policies import make_policy
from discovery.runners import EvalJob, RayRunner, evaluate_job
from discovery.store import CampaignStore
from evaluator.registry import get_task
from evaluator.types import FailureKind, StageSpec
from knowledge_base import repository as repo
from knowledge_base.db import open_database
from sandbox.api import EvalRequest, SandboxLimits
from tests.discovery.toy import ToyProposer

TOY = "tests.discovery.toy:ToyTask"

pytestmark = [pytest.mark.timeout(150), pytest.mark.usefixtures("ray_owner")]


@pytest.fixture(scope="module")
def ray_owner():
    """A local Ray cluster for the module: the first RayRunner starts (and owns) it; later
    RayRunners in the tests join it. Token auth is off: everything stays on loopback."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("RAY_DISABLE_USAGE_STATS", "1")
        owner = RayRunner(max_in_flight=2, num_cpus=2)
        try:
            yield owner
        finally:
            owner.close()  # owns Ray: shuts the cluster down


def _dies_on_first_call(marker: Path) -> Callable[[str, str], str]:
    """A task function whose worker SIGKILLs itself the first time (``marker`` absent)."""

    def evaluate_or_die(request_json: str, limits_json: str) -> str:
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return evaluate_job(request_json, limits_json)

    return evaluate_or_die


def _toy_job(candidate_id: int = 1, attempt: int = 1) -> EvalJob:
    request = EvalRequest(task=TOY, code="VALUE = 3.0\n",
                          stages=[StageSpec(name="bound", constraint=True), StageSpec(name="score")])
    return EvalJob(candidate_id=candidate_id, attempt=attempt, rung=0, request=request,
                   limits=SandboxLimits())


def _wait_all(runner: RayRunner, deadline_s: float = 60.0) -> list:
    out, t0 = [], time.monotonic()
    while runner.in_flight and time.monotonic() - t0 < deadline_s:
        out.extend(runner.wait(0.5))
    assert not runner.in_flight, "Ray jobs still in flight after the deadline"
    return out


def _make_loop(tmp_path: Path, runner: RayRunner, n: int):
    cfg = parse_config({
        "name": "toy-ray", "task": {"name": TOY},
        "budget": {"max_evaluations": n},
        "runner": {"kind": "ray", "max_in_flight": 2, "infra_retries": 1},
        "policy": {"kind": "evolution", "population": 4, "tournament": 2},
    })
    db = open_database(f"sqlite:///{tmp_path / 'k.db'}")
    task = get_task(TOY)
    loop = CampaignLoop(cfg, CampaignStore(db, cfg, task), task, ToyProposer(),
                        lambda: make_policy(cfg.policy, cfg.seed), runner, SandboxLimits())
    return loop, db


def _assert_infra_retried_and_finished(db, n: int) -> int:
    """One candidate has an ``infra`` row at attempt 1 and a full evaluation at attempt 2;
    the campaign finished with its whole budget spent. Returns that candidate's id."""
    with db.read_session() as s:
        camp = repo.get_campaign(s, "toy-ray")
        assert camp.status == "finished", camp.status
        evs = repo.campaign_evaluations(s, "toy-ray")
        infra = [e for e in evs if e.stage == "infra"]
        assert len(infra) == 1, [(e.candidate_id, e.stage, e.attempt) for e in evs]
        row = infra[0]
        assert row.failure_kind == FailureKind.INFRA.value and row.attempt == 1 and not row.ok
        assert "worker" in row.message.lower(), row.message  # Ray's WorkerCrashedError text
        again = [e for e in evs if e.candidate_id == row.candidate_id and e.attempt == 2]
        assert [e.stage for e in again] == ["load", "bound", "score"]
        cand = repo.get_candidate(s, row.candidate_id)
        assert cand.attempts == 2 and cand.status == "evaluated" and cand.failure_kind is None
        # toy candidates never fail: all n evaluated, nothing left running or queued
        assert repo.count_by_status(s, "toy-ray") == {"evaluated": n}
        # nobody else was evaluated twice
        others = {(e.candidate_id, e.attempt) for e in evs if e.candidate_id != row.candidate_id}
        assert {a for _, a in others} == {1}
        events = [(e.kind, e.data) for e in repo.events(s, "toy-ray") if e.kind == "infra_failure"]
        assert len(events) == 1 and events[0][1]["retry"] is True
    return row.candidate_id


def test_worker_death_is_an_infra_outcome_not_an_exception(tmp_path):
    runner = RayRunner(evaluate=_dies_on_first_call(tmp_path / "died"))
    try:
        runner.submit(_toy_job())
        [lost] = _wait_all(runner)
        assert lost.outcome is None and lost.job.candidate_id == 1
        assert lost.infra_error and "worker" in lost.infra_error.lower(), lost.infra_error
        assert (tmp_path / "died").exists()  # the worker really ran and died
        runner.submit(_toy_job(attempt=2))  # the same job on a fresh worker succeeds
        [ok] = _wait_all(runner)
        assert ok.infra_error is None and ok.outcome is not None and ok.outcome.ok
        assert ok.outcome.results[-1].metrics == {"value": 3.0}
    finally:
        runner.close()


def test_campaign_retries_a_job_whose_worker_died(tmp_path):
    runner = RayRunner(evaluate=_dies_on_first_call(tmp_path / "died"))
    loop, db = _make_loop(tmp_path, runner, n=4)
    try:
        summary = asyncio.run(loop.run())
    finally:
        runner.close()
    assert summary.stop_reason.startswith("max_evaluations"), summary.stop_reason
    _assert_infra_retried_and_finished(db, n=4)
    db.close()


# ---------------------------------------------------------------- killing from outside
def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process visible in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out[int(entry)] = (ppid, cmd)
    return out


def _descendants(procs: dict[int, tuple[int, str]], root: int) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, (pp, _) in procs.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class WorkerKiller(threading.Thread):
    """SIGKILLs the first ``ray::evaluate_job`` worker of *this* test's cluster (a descendant
    of this process: other Ray clusters may run on the machine) that has a sandbox child,
    i.e. that is in the middle of an evaluation."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.killed: int | None = None
        self.subtree: set[int] = set()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            procs = _processes()
            mine = _descendants(procs, me)
            for pid in mine:
                if procs[pid][1].startswith("ray::evaluate_job") and _descendants(procs, pid):
                    self.subtree = _descendants(procs, pid)
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                    return
            time.sleep(0.005)


def test_campaign_survives_a_worker_killed_from_outside(tmp_path):
    runner = RayRunner()  # the production task function: evaluate_job
    loop, db = _make_loop(tmp_path, runner, n=4)
    killer = WorkerKiller()
    killer.start()
    try:
        summary = asyncio.run(loop.run())
    finally:
        killer.stop.set()
        killer.join(5)
        runner.close()
    assert killer.killed is not None, "no evaluation was caught in flight"
    assert summary.stop_reason.startswith("max_evaluations"), summary.stop_reason
    _assert_infra_retried_and_finished(db, n=4)
    db.close()
    # the worker and the sandbox processes it was running are gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in {killer.killed, *killer.subtree}):
        time.sleep(0.1)
    assert killer.subtree, "the killed worker had no sandbox child"
    survivors = {p for p in {killer.killed, *killer.subtree} if _alive(p)}
    assert not survivors, f"processes outlived their killed Ray worker: {survivors}"
