"""A toy task and proposer for testing the campaign loop without torch or a sandbox:
a candidate module sets ``VALUE = <float>``; fitness rewards larger values; values
above ``LIMIT`` violate a constraint stage; ``CRASH = True`` fails at runtime."""

from __future__ import annotations

import random
import types
from collections.abc import Mapping

from agents.types import Proposal, ProposalContext
from evaluator.types import (
    FailureKind, Objective, Program, Seed, StageFailure, StageResult, StageSpec, TargetSpec,
)
from sandbox.api import EvalOutcome

LIMIT = 50.0


class ToyTask:
    name = "tests.discovery.toy:ToyTask"
    description = "toy: maximise VALUE"
    reference_seed = "one"

    def __init__(self, **options: object) -> None:
        if set(options) - {"limit"}:
            raise ValueError(f"unknown option(s) {sorted(set(options) - {'limit'})}")
        self.limit = float(options.get("limit", LIMIT))  # type: ignore[arg-type]

    def interface(self) -> str:
        return "VALUE = <float>"

    def seeds(self) -> list[Seed]:
        return [
            Seed("one", "VALUE = 1.0\n", "baseline", genome={"v": 1.0}, reference=True),
            Seed("two", "VALUE = 2.0\n", "better", genome={"v": 2.0}),
            Seed("huge", "VALUE = 100.0\n", "violates the constraint", genome={"v": 100.0}),
        ]

    def rungs(self) -> int:
        return 2

    def stages(self, rung: int) -> list[StageSpec]:
        if rung == 1:  # a "more expensive" rung whose ranking agrees with rung 0
            return [StageSpec(name="score", rung=1)]
        return [StageSpec(name="bound", constraint=True), StageSpec(name="score")]

    def check_interface(self, module) -> str | None:
        return None if hasattr(module, "VALUE") else "VALUE missing"

    def run_stage(self, program: Program, stage: StageSpec, target: TargetSpec) -> StageResult:
        value = float(program.module.VALUE)
        if stage.name == "score" and getattr(program.module, "CRASH", False):
            raise StageFailure(FailureKind.RUNTIME, "crashed on purpose")
        if stage.name == "bound" and value > self.limit:
            raise StageFailure(FailureKind.COMPLEXITY, f"VALUE {value} > {self.limit}")
        scale = 2.0 if stage.rung == 1 else 1.0
        return StageResult(stage=stage.name, target=target.name, rung=stage.rung, ok=True,
                           metrics={"value": value * scale})

    def objectives(self, metrics: Mapping[str, float]) -> list[Objective]:
        return [Objective("value", "max", metrics["value"])] if "value" in metrics else []


def run_inline(request) -> EvalOutcome:
    """What the sandbox harness does, in-process (the loop tests do not test isolation)."""
    from evaluator.registry import get_task

    task = get_task(request.task, request.task_options)
    module = types.ModuleType("candidate")
    exec(compile(request.code, "candidate.py", "exec"), module.__dict__)  # test-only
    program = Program(code=request.code, module=module)
    results = [StageResult(stage="load", ok=True)]
    for stage in request.stages:
        try:
            r = task.run_stage(program, stage, request.target)
        except StageFailure as err:
            r = StageResult.failure(stage.name, err.kind, err.message, target=request.target.name)
        results.append(r)
        if not r.ok and not (stage.constraint and request.continue_on_constraint):
            break
    return EvalOutcome(results=results)


class ToyProposer:
    """Mutates VALUE by a random step; proposes a crash every ``crash_every`` calls."""

    name = "toy"

    def __init__(self, crash_every: int = 0) -> None:
        self.calls = 0
        self.crash_every = crash_every

    async def propose(self, ctx: ProposalContext) -> Proposal:
        self.calls += 1
        rng = random.Random(ctx.seed)
        base = ctx.parents[0].genome["v"] if ctx.parents and ctx.parents[0].genome else 1.0
        v = round(base + rng.uniform(-1, 3), 3)
        crash = self.crash_every and self.calls % self.crash_every == 0
        code = f"VALUE = {v}\n" + ("CRASH = True\n" if crash else "")
        return Proposal(name=f"v{v}", motivation="step", code=code, genome={"v": v},
                        parent_ids=tuple(p.candidate_id for p in ctx.parents), origin=ctx.operation)


class InProcessRunner:
    """A Runner that evaluates with ``run_inline``; can simulate lost workers (infra)."""

    def __init__(self, infra_failures: int = 0) -> None:
        self._done: list = []
        self.infra_failures = infra_failures
        self.submitted: list[int] = []

    @property
    def in_flight(self) -> int:
        return len(self._done)

    def submit(self, job) -> None:
        from discovery.runners import JobOutcome

        self.submitted.append(job.candidate_id)
        if self.infra_failures > 0:
            self.infra_failures -= 1
            self._done.append(JobOutcome(job, None, infra_error="worker died (simulated)"))
        else:
            self._done.append(JobOutcome(job, run_inline(job.request), wall_s=0.01))

    def wait(self, timeout: float) -> list:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        pass
