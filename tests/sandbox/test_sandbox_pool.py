"""The warm pool: children are prepared ahead, used once, replaced, and cleaned up."""

from __future__ import annotations

import pytest

from evaluator.types import StageSpec
from sandbox import SandboxPool, evaluate, set_default_pool
from sandbox.api import EvalRequest, SandboxLimits
from sandbox.launcher import IsolationConfig
from sandbox.reaper import find_strays
from tests.sandbox.fake_task import TRIVIAL

FAKE = "tests.sandbox.fake_task:FakeTask"
REQUEST = EvalRequest(task=FAKE, code=TRIVIAL, stages=[StageSpec(name="forward", timeout_s=10),
                                                        StageSpec(name="threads", timeout_s=10),
                                                        StageSpec(name="warmed", timeout_s=10)])


def test_pool_serves_each_evaluation_from_a_fresh_warm_child() -> None:
    pool = SandboxPool(1, isolation_config=IsolationConfig(
        preload=("torch", "tests.sandbox.fake_task:warm")))
    previous = set_default_pool(pool)
    try:
        assert pool.wait_warm(120)
        first = evaluate(REQUEST, SandboxLimits())
        assert pool.wait_warm(120)  # refilled in the background
        second = evaluate(REQUEST, SandboxLimits(torch_threads=2))
    finally:
        set_default_pool(previous)
        pool.close()
    assert first.ok and second.ok
    # the thread count is set per request, after the child was warmed up with 1 thread
    assert first.results[2].metrics["torch_threads"] == 1.0
    assert second.results[2].metrics["torch_threads"] == 2.0
    uid_1 = first.results[0].artifacts["isolation"]["uid"]
    uid_2 = second.results[0].artifacts["isolation"]["uid"]
    assert uid_1 != uid_2, "a pooled child was reused"
    # the preload (torch, then a warm-up function) ran in the child before the request came;
    # what that saves per evaluation is measured in benchmarks/sandbox_overhead.py
    assert first.results[3].metrics["warmed"] == 1.0


def test_closing_the_pool_kills_its_idle_children() -> None:
    pool = SandboxPool(2)
    assert pool.wait_warm(120)
    children = list(pool._ready)
    pool.close()
    assert pool.ready_count == 0
    for child in children:
        assert not child.alive()
        assert find_strays(uid=child.uid, marker=f"ARCHDISCO_SANDBOX_RUN={child.marker}") == []


def _metric(outcome, stage: str, name: str) -> float:  # type: ignore[no-untyped-def]
    assert outcome.ok, outcome.first_failure
    return next(r for r in outcome.results if r.stage == stage).metrics[name]


def test_a_preload_function_runs_in_the_child_before_the_request() -> None:
    request = REQUEST.model_copy(update={"stages": [StageSpec(name="warmed", timeout_s=10)]})
    with SandboxPool(1, preload=("torch", "tests.sandbox.fake_task:warm")) as pool:
        assert pool.wait_warm(120)
        warmed = pool.evaluate(request, SandboxLimits())
    with SandboxPool(1) as pool:  # torch alone
        plain = pool.evaluate(request, SandboxLimits())
    assert _metric(warmed, "warmed", "warmed") == 1.0
    assert _metric(plain, "warmed", "warmed") == 0.0


def test_children_see_their_gpus_and_a_stale_warm_child_is_not_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    request = REQUEST.model_copy(update={"stages": [StageSpec(name="gpus", timeout_s=10)]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert _metric(evaluate(request, SandboxLimits()), "gpus", "gpus") == 3.0  # a cold child
    with SandboxPool(1) as pool:
        assert pool.wait_warm(120)
        stale = pool._ready[0]
        # a scheduler (Ray) gives the next task another GPU: the child warmed for GPU 3 is
        # discarded, and a fresh one started under the new assignment serves the request
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
        outcome = pool.evaluate(request, SandboxLimits())
        assert not stale.alive()
    assert _metric(outcome, "gpus", "gpus") == 5.0
