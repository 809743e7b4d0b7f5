"""Which evaluations get a warm sandbox child (``[sandbox] warm_pool``), and that the child
is prepared with the task's own preload (``Task.preload``) before the request arrives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sandbox
from discovery.config import SandboxConfig
from discovery.runners import (
    WARM_POOL_ENV, evaluate_job, task_preload, wants_warm_pool, warm_pool_setting,
)
from evaluator.token_mixer import TokenMixerTask
from evaluator.types import StageSpec, TargetSpec
from sandbox.api import EvalOutcome, EvalRequest, SandboxLimits
from tests.sandbox.fake_task import TRIVIAL

CPU = TargetSpec(name="cpu", device="cpu")
GPU = TargetSpec(name="gpu", device="cuda", resources={"GPU": 1.0})


def test_the_default_warms_children_for_gpu_targets_only() -> None:
    assert SandboxConfig().warm_pool is None
    auto = warm_pool_setting(None)
    assert wants_warm_pool(auto, "cuda") and not wants_warm_pool(auto, "cpu")
    assert wants_warm_pool(warm_pool_setting(True), "cpu")
    assert warm_pool_setting(False) is None and not wants_warm_pool(None, "cuda")


def test_the_token_mixer_warms_cuda_children_with_its_gpu_set_up() -> None:
    task = TokenMixerTask()
    assert task_preload(task, CPU) == ("torch",)
    assert task_preload(task, GPU) == ("torch", "evaluator.token_mixer.warmup:cuda_float32")
    bf16 = GPU.model_copy(update={"dtype": "bfloat16"})  # the warm-up runs at the target's precision
    assert task_preload(task, bf16) == ("torch", "evaluator.token_mixer.warmup:cuda_bfloat16")
    assert task_preload(object(), GPU) == ("torch",)  # a task without preload


@pytest.fixture
def no_default_pool() -> Iterator[None]:
    yield
    sandbox.configure_pool(None)


@pytest.mark.usefixtures("no_default_pool")
@pytest.mark.parametrize(("setting", "target", "warmed"), [
    ("auto", CPU, 0.0), ("auto", GPU, 1.0), ("1", CPU, 1.0), (None, GPU, 0.0),
])
def test_a_worker_serves_from_a_child_warmed_with_the_tasks_preload(
        monkeypatch: pytest.MonkeyPatch, setting: str | None, target: TargetSpec,
        warmed: float) -> None:
    if setting is None:
        monkeypatch.delenv(WARM_POOL_ENV, raising=False)
    else:
        monkeypatch.setenv(WARM_POOL_ENV, setting)
    request = EvalRequest(task="tests.sandbox.fake_task:FakeTask", code=TRIVIAL, target=target,
                          stages=[StageSpec(name="warmed", timeout_s=30)])
    outcome = EvalOutcome.model_validate_json(
        evaluate_job(request.model_dump_json(), SandboxLimits().model_dump_json()))
    assert outcome.ok, outcome.first_failure
    assert outcome.results[-1].metrics["warmed"] == warmed
    pool = sandbox.get_default_pool()
    assert (pool is not None) == bool(warmed)
    if pool is not None:
        assert pool.config.preload == ("torch", "tests.sandbox.fake_task:warm")
