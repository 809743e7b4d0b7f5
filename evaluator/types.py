"""Core evaluation types shared by every room: failure kinds, targets, stages, stage results.

This module is the bottom of the import graph (it imports nothing from the project), so the
sandbox, the agents, the knowledge base writers and the campaign loop can all speak the same
typed language. Types that cross a process boundary (sandbox child -> driver, Ray task ->
driver) are pydantic models with ``extra="forbid"``; the rest are frozen dataclasses.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class FailureKind(str, enum.Enum):
    """The one closed set of ways a candidate can fail (DESIGN.md section 3).

    Only ``INFRA`` is retried automatically; every other kind is data fed back to agents.
    """

    SYNTAX = "syntax"  # the code does not parse
    POLICY = "policy"  # the static policy rejected it (forbidden import / call / attribute)
    INTERFACE = "interface"  # required class / function / signature missing
    CONFORMANCE = "conformance"  # wrong shapes, no gradient, batch mixing, too many params
    IMPORT = "import"  # raised while the module was being imported
    RUNTIME = "runtime"  # raised while a stage ran
    NAN = "nan"  # produced non-finite values
    TIMEOUT = "timeout"  # wall clock or CPU time limit hit (recognised from the exit cause)
    OOM = "oom"  # memory limit hit (recognised from the exit cause / allocator error type)
    KILLED = "killed"  # the child died from a signal it was not sent for timeout / memory
    CAUSALITY = "causality"  # output at t depends on inputs after t, or on the total length
    COMPLEXITY = "complexity"  # cost grows faster in T than the campaign allows
    BUDGET = "budget"  # a resource budget of the task (e.g. parameter count) was exceeded
    VALIDATOR = "validator"  # an agent reply could not be turned into a candidate
    INFRA = "infra"  # the platform failed (worker lost, node died): retried

    @property
    def retryable(self) -> bool:
        return self is FailureKind.INFRA


Device = Literal["cpu", "cuda"]
Precision = Literal["float32", "bfloat16", "float16"]


class TargetSpec(BaseModel):
    """Where a stage runs: a named hardware target mapped to Ray resources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "cpu"
    device: Device = "cpu"
    dtype: Precision = "float32"
    # Ray resources one evaluation on this target needs, e.g. {"CPU": 1} or {"GPU": 1}.
    resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    # Sandbox memory limit for one evaluation; None = the sandbox default (half of RAM at most).
    memory_limit_gb: float | None = None


class StageSpec(BaseModel):
    """One evaluation stage at one fidelity rung, as the task declares it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    rung: int = 0
    timeout_s: float = 60.0
    # "any": runs on whatever device the target has; "cpu": always on CPU (e.g. meta-device
    # FLOP counting); "cuda": skipped with a note when the target has no GPU.
    device: Literal["any", "cpu", "cuda"] = "any"
    # A constraint stage (e.g. complexity) marks a candidate infeasible. Reference seeds keep
    # going past a failed constraint so they can be shown as references; others stop.
    constraint: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


class StageResult(BaseModel):
    """What one stage measured. Produced in the sandbox child, stored by the driver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    target: str = "cpu"
    rung: int = 0
    ok: bool
    metrics: dict[str, float] = Field(default_factory=dict)
    failure_kind: FailureKind | None = None
    message: str = ""
    log_tail: str = ""
    wall_s: float = 0.0
    artifacts: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def failure(
        cls, stage: str, kind: FailureKind, message: str, *, target: str = "cpu", rung: int = 0,
        wall_s: float = 0.0, log_tail: str = "", metrics: Mapping[str, float] | None = None,
    ) -> StageResult:
        return cls(
            stage=stage, target=target, rung=rung, ok=False, failure_kind=kind,
            message=message[:4000], wall_s=wall_s, log_tail=log_tail, metrics=dict(metrics or {}),
        )


@dataclass(frozen=True)
class Seed:
    """A baseline program that starts a campaign.

    ``genome`` locates the seed in the offline proposer's templated design space (None when
    the seed has no template counterpart). ``reference`` marks the seed fitness is measured
    against when the campaign names none.
    """

    name: str
    code: str
    motivation: str
    genome: Mapping[str, Any] | None = None
    reference: bool = False


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Literal["max", "min"]
    value: float


@dataclass(frozen=True)
class Program:
    """A candidate as the stage code sees it inside the sandbox child: source + loaded module."""

    code: str
    module: Any  # the imported candidate module (types.ModuleType)
    dtype: Precision = "float32"
    seed: int = 0
    extras: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """What is being designed and how it is judged (DESIGN.md section 4).

    ``run_stage`` runs inside the sandbox child; everything else runs in the driver.
    Optionally a task defines ``plan(stages, target)``: the child calls it once, before the
    first stage, with the stages it is about to run (in order), so that a stage can prepare
    work for a later one in the same process (token-mixer: the MQAR stage compiles the LM
    stage's shapes while it trains). Optionally it defines ``preload(target) -> tuple[str,
    ...]``: what a warm sandbox child imports (``module``) or imports and calls
    (``module:function``) after isolation and before its request, moving one-time process
    set-up (imports, device initialisation) off the evaluation's critical path (default:
    torch alone).
    """

    name: str
    description: str

    def interface(self) -> str: ...  # the contract, shown to agents verbatim
    def seeds(self) -> list[Seed]: ...
    def rungs(self) -> int: ...  # number of fidelity rungs the task defines
    def stages(self, rung: int) -> list[StageSpec]: ...  # cheap -> expensive
    def check_interface(self, module: Any) -> str | None: ...  # None if ok, else a message
    def run_stage(self, program: Program, stage: StageSpec, target: TargetSpec) -> StageResult: ...
    def objectives(self, metrics: Mapping[str, float]) -> list[Objective]: ...


class StageFailure(Exception):
    """Raised by stage code to fail a stage with a specific kind (e.g. NAN, CAUSALITY).

    The sandbox harness turns it into a failed ``StageResult``; any other exception raised by
    stage code becomes ``RUNTIME`` (or ``OOM`` for allocator failures).
    """

    def __init__(self, kind: FailureKind, message: str, metrics: Mapping[str, float] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.metrics = dict(metrics or {})


# Messages of the RuntimeError torch's allocators raise when an allocation is refused (the
# address-space rlimit on CPU, device memory on CUDA): the exception *type* is RuntimeError,
# so the allocator's fixed wording is the only signal it was memory.
_ALLOCATOR_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory",
                       "out of memory")


def is_allocation_failure(exc: BaseException) -> bool:
    """MemoryError, torch.OutOfMemoryError, or torch's allocator RuntimeError (kind ``oom``)."""
    import sys

    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc)[:500] for m in _ALLOCATOR_MESSAGES)
