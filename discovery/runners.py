"""Runners: where sandboxed evaluations execute (DESIGN.md sections 4 and 10).

``InlineRunner`` runs evaluations on threads of the driver process (each still in its own
sandbox child); ``RayRunner`` runs them as Ray tasks, locally (Ray started in-process) or on a
cluster (``ray_address``). Either way the task *returns* its result and only the driver writes
to the database. A lost worker or node becomes an ``infra`` outcome, which the loop retries.

This is the only module that imports ray.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from evaluator.types import TargetSpec
from sandbox.api import EvalOutcome, EvalRequest, SandboxLimits
from sandbox.pool import DEFAULT_PRELOAD


@dataclass(frozen=True)
class EvalJob:
    candidate_id: int
    attempt: int
    rung: int
    request: EvalRequest
    limits: SandboxLimits


@dataclass(frozen=True)
class JobOutcome:
    job: EvalJob
    outcome: EvalOutcome | None  # None when the platform failed (see infra_error)
    infra_error: str | None = None
    wall_s: float = 0.0


class Runner(Protocol):
    def submit(self, job: EvalJob) -> None: ...
    def wait(self, timeout: float) -> list[JobOutcome]: ...
    @property
    def in_flight(self) -> int: ...
    def close(self) -> None: ...


# Set (through the Ray runtime environment) to keep one pre-started, warmed-up sandbox child
# in every Ray worker: "1" for every evaluation, "auto" for evaluations on `cuda` targets
# (``[sandbox] warm_pool``, ``warm_pool_setting``). The next evaluation then skips the
# interpreter start, the imports and the task's device set-up (``Task.preload``); each child
# still serves exactly one evaluation.
WARM_POOL_ENV = "DISCO_SANDBOX_WARM_POOL"


def warm_pool_setting(warm_pool: bool | None) -> str | None:
    """``[sandbox] warm_pool`` as the value of ``WARM_POOL_ENV`` (None: no pool)."""
    return {True: "1", None: "auto"}.get(warm_pool)


def wants_warm_pool(setting: str | None, device: str) -> bool:
    """Whether evaluations on a ``device`` target get a warm pool under ``setting``."""
    return setting == "1" or (setting == "auto" and device == "cuda")


def task_preload(task: Any, target: TargetSpec) -> tuple[str, ...]:
    """What a warm child loads for ``task`` on ``target`` (``Task.preload``, else the pool's
    default)."""
    preload = getattr(task, "preload", None)
    return tuple(preload(target)) if callable(preload) else DEFAULT_PRELOAD


def evaluate_job(request_json: str, limits_json: str) -> str:
    """Run one evaluation in the sandbox; JSON in, JSON out (the shape Ray ships)."""
    import sandbox  # imported lazily: Ray workers import this module by reference

    request = EvalRequest.model_validate_json(request_json)
    if wants_warm_pool(os.environ.get(WARM_POOL_ENV), request.target.device):
        from evaluator.registry import get_task

        preload = task_preload(get_task(request.task, request.task_options), request.target)
        pool = sandbox.get_default_pool()
        if pool is None or pool.config.preload != preload:
            sandbox.configure_pool(1, preload)
    outcome = sandbox.evaluate(request, SandboxLimits.model_validate_json(limits_json))
    return outcome.model_dump_json()


class InlineRunner:
    """Evaluations on a thread pool of the driver process (tests, single machine, no Ray)."""

    def __init__(self, max_in_flight: int = 1) -> None:
        self._pool = cf.ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="eval")
        self._futures: dict[cf.Future[str], tuple[EvalJob, float]] = {}
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def submit(self, job: EvalJob) -> None:
        fut = self._pool.submit(
            evaluate_job, job.request.model_dump_json(), job.limits.model_dump_json()
        )
        self._futures[fut] = (job, time.monotonic())

    def wait(self, timeout: float) -> list[JobOutcome]:
        if not self._futures:
            return []
        done, _ = cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            job, t0 = self._futures.pop(fut)
            wall = time.monotonic() - t0
            try:
                out.append(JobOutcome(job, EvalOutcome.model_validate_json(fut.result()), wall_s=wall))
            except Exception as err:  # the platform failed, not the candidate
                out.append(JobOutcome(job, None, infra_error=_describe(err), wall_s=wall))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _describe(err: BaseException) -> str:
    tail = "".join(traceback.format_exception_only(type(err), err)).strip()
    return tail[-2000:]


class RayRunner:
    """Evaluations as Ray tasks; each target's resources decide where a task may run.

    ``evaluate`` is the function each task runs (JSON in, JSON out); it defaults to
    ``evaluate_job`` and is injectable so tests can make a worker die mid-evaluation.
    """

    def __init__(
        self, address: str | None = None, max_in_flight: int = 2, num_cpus: int | None = None,
        runtime_env: dict[str, Any] | None = None,
        evaluate: Callable[[str, str], str] = evaluate_job,
    ) -> None:
        import ray

        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address:
                kwargs["address"] = address
            else:
                # A local cluster sized to the evaluations we will run at once.
                kwargs["num_cpus"] = num_cpus or max(max_in_flight, 1)
                kwargs["num_gpus"] = local_gpu_count()
            if runtime_env:
                kwargs["runtime_env"] = runtime_env
            ray.init(**kwargs)
            self._owns_ray = True
        # max_retries=0: Ray must not re-run a task whose worker died; the loop decides
        # (records an ``infra`` row, then retries a bounded number of times).
        self._remote = ray.remote(max_retries=0)(evaluate)
        self._refs: dict[Any, tuple[EvalJob, float]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._refs)

    def submit(self, job: EvalJob) -> None:
        res = dict(job.request.target.resources)
        cpus = res.pop("CPU", 1.0)
        gpus = res.pop("GPU", 0.0)
        ref = self._remote.options(num_cpus=cpus, num_gpus=gpus, resources=res or None).remote(
            job.request.model_dump_json(), job.limits.model_dump_json()
        )
        self._refs[ref] = (job, time.monotonic())

    def wait(self, timeout: float) -> list[JobOutcome]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and len(refs) > 1:  # also collect everything else that is already done
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            job, t0 = self._refs.pop(ref)
            wall = time.monotonic() - t0
            try:
                out.append(JobOutcome(job, EvalOutcome.model_validate_json(self._ray.get(ref)), wall_s=wall))
            except Exception as err:  # worker died, node lost, object lost: infra
                out.append(JobOutcome(job, None, infra_error=_describe(err), wall_s=wall))
        return out

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass
        self._refs.clear()
        if self._owns_ray:
            self._ray.shutdown()


def local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def ray_env_defaults() -> None:
    """Loopback-friendly defaults: Ray 2.60 enables token auth; a local in-process cluster
    needs none, and a driver joining a cluster inherits RAY_AUTH_MODE from the environment."""
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
