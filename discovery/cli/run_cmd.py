"""`disco run CONFIG`: start or resume a campaign, show progress, end with the leaderboard."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from discovery.cli.common import DbOption, JsonOption, print_json
from discovery.cli.inspect_cmd import leaderboard_rows, print_leaderboard
from discovery.config import load_config
from discovery.errors import UsageError
from discovery.session import build_campaign, open_db


def run_command(
    config: Annotated[Path, typer.Argument(help="Campaign config (TOML); see `disco init`.")],
    db: DbOption = None,
    max_evaluations: Annotated[int | None, typer.Option("--max-evaluations", "-n", help="Override [budget].max_evaluations.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Join an existing Ray cluster (e.g. 10.0.0.1:6379 or auto).")] = None,
    runner: Annotated[str | None, typer.Option("--runner", help="ray | inline (override [runner].kind).")] = None,
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", help="Override [runner].max_in_flight.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="litellm model for every LLM role; switches to the LLM researcher.")] = None,
    api_base: Annotated[str | None, typer.Option("--api-base", help="OpenAI-compatible base URL for --model.")] = None,
    top: Annotated[int, typer.Option("--top", help="Leaderboard rows printed at the end.")] = 10,
    json_out: JsonOption = False,
) -> None:
    """Run (or resume) a discovery campaign until its budget is spent."""
    cfg = load_config(config)
    updates: dict[str, object] = {}
    if max_evaluations is not None:
        if max_evaluations < 1:
            raise UsageError("--max-evaluations must be >= 1")
        updates["budget"] = cfg.budget.model_copy(update={"max_evaluations": max_evaluations})
    runner_updates: dict[str, object] = {}
    if runner is not None:
        if runner not in ("ray", "inline"):
            raise UsageError(f"--runner {runner!r}: expected ray or inline")
        runner_updates["kind"] = runner
    if ray_address is not None:
        runner_updates["ray_address"] = ray_address
        runner_updates.setdefault("kind", "ray")
    if max_in_flight is not None:
        if max_in_flight < 1:
            raise UsageError("--max-in-flight must be >= 1")
        runner_updates["max_in_flight"] = max_in_flight
    if runner_updates:
        updates["runner"] = cfg.runner.model_copy(update=runner_updates)
    if api_base is not None and model is None:
        raise UsageError("--api-base needs --model")
    if model is not None:
        from discovery.llm_setup import override_model

        cfg = override_model(cfg, model, api_base)
    if updates:
        cfg = cfg.model_copy(update=updates)
    if cfg.proposer.kind == "llm":  # missing credentials fail before any database work
        from discovery.llm_setup import check_llm_config

        check_llm_config(cfg)
    database = open_db(db, cfg.database)
    try:
        campaign = build_campaign(cfg, database, json_progress=json_out)
        try:
            summary = asyncio.run(campaign.loop.run())
        finally:
            campaign.close()
        rows = leaderboard_rows(database, cfg.name, top)
    finally:
        database.close()
    if json_out:
        print_json({"campaign": cfg.name, "stop_reason": summary.stop_reason,
                    "counts": summary.counts, "wall_s": round(summary.wall_s, 1),
                    "leaderboard": rows})
    else:
        print_leaderboard(cfg.name, rows)
