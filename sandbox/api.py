"""The sandbox's public contract: what the driver (or a Ray task) sends, what comes back.

Both types cross process boundaries (driver -> Ray worker -> sandbox child and back), so they
are pydantic models with ``extra="forbid"``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluator.types import StageResult, StageSpec, TargetSpec


class SandboxLimits(BaseModel):
    """Resource limits for one evaluation child. ``None`` means "the sandbox default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Whole-evaluation wall clock; a stage's own ``timeout_s`` also applies.
    wall_timeout_s: float | None = None
    memory_bytes: int | None = None  # address-space / memory limit; default: a fraction of RAM
    cpu_seconds: int | None = None
    max_processes: int = 64
    max_file_bytes: int = 256 * 1024 * 1024
    max_open_files: int = 256
    max_output_bytes: int = 64 * 1024  # captured stdout+stderr kept (tail)
    torch_threads: int = 1  # intra-op threads inside the child (one evaluation per core)
    # Wall clock for the implicit ``load`` stage (import + interface check); added by the
    # sandbox hardening work (issue 3), additive.
    load_timeout_s: float = 60.0


class EvalRequest(BaseModel):
    """Evaluate ``code`` for ``task`` on ``target``: run ``stages`` in order, stop at first failure."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    task_options: dict[str, Any] = Field(default_factory=dict)
    code: str
    stages: list[StageSpec]
    target: TargetSpec = Field(default_factory=TargetSpec)
    # Reference seeds continue past failed constraint stages (complexity) so they can be
    # shown as references; ordinary candidates stop at the first failure.
    continue_on_constraint: bool = False
    seed: int = 0


class EvalOutcome(BaseModel):
    """Everything one evaluation produced. ``results`` has one entry per stage that ran,
    the first entry being the implicit ``load`` stage (import + interface check)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    results: list[StageResult]
    log_tail: str = ""
    wall_s: float = 0.0
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def first_failure(self) -> StageResult | None:
        return next((r for r in self.results if not r.ok), None)

