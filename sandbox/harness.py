"""The evaluation harness: load one candidate and run its stages, turning everything that can
go wrong into a typed ``StageResult``.

It runs inside the sandbox child (``sandbox.runner``), after isolation is in place, and can
also run in-process (the overhead benchmark's baseline). It never lets a candidate exception
escape: ``StageFailure`` keeps its kind, allocator failures become ``oom``, an exception during
the module's execution ``import``, any other exception (``SystemExit`` included) ``runtime``.
Only a failure of the platform itself (the task cannot be built) raises ``HarnessError``.

The functions it measures with (clock, the policy check, the integrity snapshot) are bound
when this module is imported, before any candidate code exists in the process.
"""

from __future__ import annotations

import gc
import importlib
import random
import sys
import time
import traceback
import types
from collections.abc import Callable

from evaluator.registry import get_task
from evaluator.types import (
    FailureKind, Program, StageFailure, StageResult, StageSpec, Task, is_allocation_failure,
)
from sandbox.api import EvalRequest
from sandbox.integrity import CANDIDATE_FILENAME, CANDIDATE_MODULE, ModuleSnapshot
from sandbox.policy import ALLOWED_MODULES, check, imported_modules
from sandbox.protocol import StageResultEvent, StageStartEvent

_CLOCK = time.perf_counter
_CHECK = check
_TRACEBACK_CHARS = 3000
Emit = Callable[[object], None]


class HarnessError(RuntimeError):
    """The platform failed (not the candidate): reported as an ``error`` event -> infra."""


def is_oom(exc: BaseException) -> bool:
    """Allocator failures (see ``evaluator.types.is_allocation_failure``)."""
    return is_allocation_failure(exc)


def describe(exc: BaseException) -> tuple[str, str]:
    """(one-line message naming the candidate line if any, traceback tail)."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = "".join(lines)[-_TRACEBACK_CHARS:]
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == CANDIDATE_FILENAME:
            where = f" (candidate line {frame.lineno}, in {frame.name})"
            break
    text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}", tail


def _release(exc: BaseException) -> None:
    """Drop frames (and the tensors they hold) so the harness has memory to report with."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    gc.collect()


class Harness:
    """Runs one EvalRequest; ``emit`` receives StageStartEvent / StageResultEvent objects."""

    def __init__(self, emit: Emit, *, static_policy: bool = True,
                 snapshot: ModuleSnapshot | None = None, torch_threads: int | None = None):
        self._emit = emit
        self._static_policy = static_policy
        self._snapshot = snapshot if snapshot is not None else ModuleSnapshot()
        self._torch_threads = torch_threads

    def run(self, request: EvalRequest) -> list[StageResult]:
        try:
            task = get_task(request.task, request.task_options)
        except Exception as exc:  # the task cannot be built: the platform, not the candidate
            raise HarnessError(f"cannot build task {request.task!r}: {describe(exc)[0]}") from exc
        results: list[StageResult] = []
        self._emit(StageStartEvent(stage="load"))
        load, module = self._load(request, task)
        results.append(load)
        self._emit(StageResultEvent(result=load))
        if module is None:
            return results
        program = Program(code=request.code, module=module, dtype=request.target.dtype,
                          seed=request.seed)
        plan = getattr(task, "plan", None)
        if callable(plan):
            plan(list(request.stages), request.target)
        for stage in request.stages:
            self._emit(StageStartEvent(stage=stage.name))
            result = self._run_stage(task, program, stage, request)
            results.append(result)
            self._emit(StageResultEvent(result=result))
            if not result.ok and not (request.continue_on_constraint and stage.constraint):
                break
        return results

    # ------------------------------------------------------------------ load
    def _load(self, request: EvalRequest, task: Task) -> tuple[StageResult, object | None]:
        target = request.target.name
        start = _CLOCK()

        def fail(kind: FailureKind, message: str, log: str = "") -> tuple[StageResult, None]:
            return StageResult.failure("load", kind, message, target=target,
                                       wall_s=_CLOCK() - start, log_tail=log), None

        if self._static_policy:
            violation = _CHECK(request.code, task)
            if violation is not None:
                return fail(violation.kind, str(violation))
        try:
            code = compile(request.code, CANDIDATE_FILENAME, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None) or 1
            return fail(FailureKind.SYNTAX, f"line {line}: {exc}")
        # Import what the candidate imports (allowed modules only) first, so the snapshot
        # covers them before candidate code can touch them.
        for name in imported_modules(request.code):
            if name.split(".")[0] in ALLOWED_MODULES:
                try:
                    importlib.import_module(name)
                except Exception:  # the candidate's own import will report it
                    pass
        self._snapshot.extend()
        torch = sys.modules.get("torch")
        if torch is not None and self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        module = types.ModuleType(CANDIDATE_MODULE)
        module.__file__ = CANDIDATE_FILENAME
        sys.modules[CANDIDATE_MODULE] = module  # dataclasses and typing look modules up
        self._seed(request.seed)
        try:
            exec(code, module.__dict__)  # noqa: S102 - this is the sandbox's job
        except BaseException as exc:  # noqa: BLE001 - candidates may raise SystemExit
            kind = FailureKind.OOM if is_oom(exc) else FailureKind.IMPORT
            message, tail = describe(exc)
            _release(exc)
            return fail(kind, f"the module raised while being imported: {message}", tail)
        changed = self._snapshot.changes()
        if changed:
            return fail(FailureKind.POLICY, _rewired(changed))
        try:
            problem = task.check_interface(module)
        except BaseException as exc:  # noqa: BLE001 - the check touches candidate objects
            message, tail = describe(exc)
            _release(exc)
            return fail(FailureKind.INTERFACE, f"interface check raised: {message}", tail)
        if problem:
            return fail(FailureKind.INTERFACE, problem)
        return StageResult(stage="load", target=target, ok=True, wall_s=_CLOCK() - start), module

    # ------------------------------------------------------------------ stages
    def _run_stage(self, task: Task, program: Program, stage: StageSpec,
                   request: EvalRequest) -> StageResult:
        target = request.target
        if stage.device == "cuda" and target.device != "cuda":
            return StageResult(stage=stage.name, target=target.name, rung=stage.rung, ok=True,
                               message="skipped: the stage needs a GPU and the target has none",
                               artifacts={"skipped": True})
        self._seed(request.seed)
        start = _CLOCK()
        try:
            result = task.run_stage(program, stage, target)
        except StageFailure as exc:
            result = StageResult.failure(stage.name, exc.kind, exc.message, target=target.name,
                                         rung=stage.rung, metrics=exc.metrics)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ...
            kind = FailureKind.OOM if is_oom(exc) else FailureKind.RUNTIME
            message, tail = describe(exc)
            _release(exc)
            result = StageResult.failure(stage.name, kind, message, target=target.name,
                                         rung=stage.rung, log_tail=tail)
        wall = _CLOCK() - start
        if not isinstance(result, StageResult):
            result = StageResult.failure(stage.name, FailureKind.RUNTIME,
                                         f"the task returned {type(result).__name__}, "
                                         "not a StageResult", target=target.name, rung=stage.rung)
        changed = self._snapshot.changes()
        if changed:
            result = StageResult.failure(stage.name, FailureKind.POLICY, _rewired(changed),
                                         target=target.name, rung=stage.rung)
        return result.model_copy(update={"wall_s": result.wall_s or wall})

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.manual_seed(seed)


def _rewired(changed: list[str]) -> str:
    return ("the candidate replaced library functions the harness measures with: "
            + ", ".join(changed) + "; define your own functions instead")
