"""The warm pool: children are prepared ahead, used once, replaced, and cleaned up."""

from __future__ import annotations

import time

from evaluator.types import StageSpec
from sandbox import SandboxPool, evaluate, set_default_pool
from sandbox.api import EvalRequest, SandboxLimits
from sandbox.launcher import IsolationConfig
from sandbox.reaper import find_strays
from tests.sandbox.fake_task import TRIVIAL

FAKE = "tests.sandbox.fake_task:FakeTask"
REQUEST = EvalRequest(task=FAKE, code=TRIVIAL, stages=[StageSpec(name="forward", timeout_s=10),
                                                        StageSpec(name="threads", timeout_s=10)])


def test_pool_serves_each_evaluation_from_a_fresh_warm_child() -> None:
    pool = SandboxPool(1, isolation_config=IsolationConfig(preload=("torch",)))
    previous = set_default_pool(pool)
    try:
        assert pool.wait_warm(120)
        start = time.monotonic()
        first = evaluate(REQUEST, SandboxLimits())
        warm_wall = time.monotonic() - start
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
    # torch was imported before the request arrived, so the request costs far less than
    # an import of torch (about a second on the reference machine).
    assert warm_wall < 1.0, warm_wall


def test_closing_the_pool_kills_its_idle_children() -> None:
    pool = SandboxPool(2)
    assert pool.wait_warm(120)
    children = list(pool._ready)
    pool.close()
    assert pool.ready_count == 0
    for child in children:
        assert not child.alive()
        assert find_strays(uid=child.uid, marker=f"ARCHDISCO_SANDBOX_RUN={child.marker}") == []
