"""`disco init [PATH]` (write a commented example config) and `disco tasks` (list tasks)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from discovery.cli.common import JsonOption, console, print_json
from discovery.errors import UserError


def campaign_template() -> str:
    return files("discovery").joinpath("templates/campaign.toml").read_text(encoding="utf-8")


def init_command(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("campaign.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example campaign config."""
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(campaign_template(), encoding="utf-8")
    console().print(f"wrote {path}; run it with: disco run {path}")


def tasks_command(json_out: JsonOption = False) -> None:
    """List the tasks and their interfaces."""
    from discovery.tasks import build_task
    from evaluator.registry import task_names

    out = []
    for name in task_names():
        task = build_task(name)
        out.append({
            "name": name, "description": task.description, "rungs": task.rungs(),
            "stages": {f"rung{r}": [s.name for s in task.stages(r)] for r in range(task.rungs())},
            "seeds": [sd.name for sd in task.seeds()], "interface": task.interface(),
        })
    if json_out:
        print_json(out)
        return
    c = console()
    for t in out:
        c.print(f"[bold]{t['name']}[/]: {t['description']}")
        for rung, stages in t["stages"].items():
            c.print(f"  {rung}: {' -> '.join(stages)}")
        c.print(f"  seeds: {', '.join(t['seeds'])}")
        c.print(t["interface"])
