"""`disco eval FILE --task NAME`: evaluate one candidate file by hand, through the same
static policy, sandbox and stages a campaign uses. Exit 0 if every stage passed, 1 if the
candidate failed, 2 on usage errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from discovery.cli.common import JsonOption, console, print_json
from discovery.errors import UsageError, UserError
from discovery.tasks import build_task
from evaluator.types import StageResult, StageSpec, Task, TargetSpec


def select_stages(task: Task, spec: str) -> list[StageSpec]:
    """`rung0`/`rungN` -> that rung's stages; `all` -> every rung; `a,b` -> named stages."""
    spec = spec.strip()
    if spec == "all":
        out: list[StageSpec] = []
        for r in range(task.rungs()):
            out.extend(task.stages(r))
        return out
    if spec.startswith("rung") and spec[4:].isdigit():
        rung = int(spec[4:])
        if rung >= task.rungs():
            raise UsageError(f"--stages {spec}: task {task.name} has rungs 0..{task.rungs() - 1}")
        return task.stages(rung)
    by_name: dict[str, StageSpec] = {}
    for r in range(task.rungs()):
        for s in task.stages(r):
            by_name.setdefault(s.name, s)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        raise UsageError(
            f"--stages {spec!r}: unknown stage(s) {', '.join(unknown) or '(none given)'}; "
            f"use rung0..rung{task.rungs() - 1}, all, or a comma list of: {', '.join(by_name)}"
        )
    return [by_name[w] for w in wanted]


def _parse_options(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {pair!r}: expected KEY=VALUE (VALUE is JSON or a string)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def result_dict(r: StageResult) -> dict[str, object]:
    return {
        "stage": r.stage, "target": r.target, "rung": r.rung, "ok": r.ok,
        "failure_kind": r.failure_kind.value if r.failure_kind else None,
        "message": r.message, "metrics": r.metrics, "wall_s": round(r.wall_s, 3),
    }


def eval_command(
    file: Annotated[Path, typer.Argument(help="Candidate module (a .py file).")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task name (see `disco tasks`).")],
    stages: Annotated[str, typer.Option("--stages", help="rung0 | rung1 | all | a,b,c")] = "rung0",
    option: Annotated[list[str], typer.Option("--option", "-o", help="Task option KEY=VALUE (repeatable).")] = [],  # noqa: B006
    device: Annotated[str, typer.Option("--device", help="cpu or cuda")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16")] = "float32",
    timeout_scale: Annotated[float, typer.Option("--timeout-scale", help="Multiply stage timeouts.")] = 1.0,
    json_out: JsonOption = False,
) -> None:
    """Evaluate one candidate file with the task's stages, in the sandbox."""
    import sandbox
    from sandbox.api import EvalRequest, SandboxLimits

    if not file.exists():
        raise UserError(f"candidate file not found: {file}")
    if not file.is_file():
        raise UserError(f"candidate path is not a file: {file}")
    try:
        code = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{file}: not a UTF-8 text file") from None
    if device not in ("cpu", "cuda") or dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"--device {device!r} / --dtype {dtype!r}: expected cpu|cuda and float32|bfloat16|float16")
    options = _parse_options(option)
    the_task = build_task(task, options)
    chosen = select_stages(the_task, stages)
    chosen = [s.model_copy(update={"timeout_s": s.timeout_s * timeout_scale}) for s in chosen]
    target = TargetSpec(name=device, device=device, dtype=dtype,  # type: ignore[arg-type]
                        resources={"GPU": 1.0} if device == "cuda" else {"CPU": 1.0})
    violation = sandbox.check(code, the_task)
    if violation is not None:
        results = [StageResult.failure("load", violation.kind, violation.message, target=target.name)]
        log_tail = ""
    else:
        outcome = sandbox.evaluate(
            EvalRequest(task=the_task.name, task_options=options, code=code, stages=chosen, target=target),
            SandboxLimits(),
        )
        results, log_tail = outcome.results, outcome.log_tail
    passed = bool(results) and all(r.ok for r in results)
    if json_out:
        print_json({"file": str(file), "task": the_task.name, "ok": passed,
                    "stages": [result_dict(r) for r in results], "log_tail": log_tail})
    else:
        _print_table(file, results, passed)
    raise typer.Exit(0 if passed else 1)


def _print_table(file: Path, results: list[StageResult], passed: bool) -> None:
    from rich.table import Table

    table = Table(title=f"{file}", title_justify="left")
    for col in ("stage", "ok", "failure", "wall s", "metrics / message"):
        table.add_column(col, overflow="fold")
    for r in results:
        detail = r.message if not r.ok else ", ".join(
            f"{k}={v:.4g}" for k, v in list(r.metrics.items())[:8]
        )
        table.add_row(r.stage, "yes" if r.ok else "[red]no[/]",
                      r.failure_kind.value if r.failure_kind else "", f"{r.wall_s:.2f}", detail)
    c = console()
    c.print(table)
    c.print("[green]PASSED[/]" if passed else "[red]FAILED[/]")
