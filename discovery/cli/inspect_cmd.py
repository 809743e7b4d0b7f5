"""Read commands: `disco status`, `disco top`, `disco show ID`, `disco llm-calls`.
Each opens the database read-only in spirit (no writes), prints rich tables or `--json`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from discovery.cli.common import CampaignOption, DbOption, JsonOption, console, print_json
from discovery.errors import UserError
from knowledge_base import repository as repo
from knowledge_base.db import Database


def _db(db: str | None) -> Database:
    from discovery.session import open_db

    return open_db(db)


def resolve_campaign(s: Any, campaign: str | None) -> str:
    if campaign is not None:
        if repo.get_campaign(s, campaign) is None:
            known = ", ".join(c.id for c in repo.list_campaigns(s)) or "none yet"
            raise UserError(f"--campaign {campaign!r}: no such campaign (known: {known})")
        return campaign
    campaigns = repo.list_campaigns(s)
    if not campaigns:
        raise UserError("no campaign in this database yet; start one with `disco run CONFIG`")
    return max(campaigns, key=lambda c: (c.updated_at, c.created_at)).id


def _headline_metrics(objectives: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (objectives or {}).items()}


def leaderboard_rows(database: Database, campaign: str, n: int, include_infeasible: bool = True) -> list[dict[str, Any]]:
    with database.read_session() as s:
        rows = repo.leaderboard(s, campaign, n, include_infeasible=include_infeasible)
        return [
            {
                "rank": i + 1, "id": c.id, "name": c.name, "rung": c.rung, "fitness": c.fitness,
                "origin": c.origin,
                "feasible": c.feasible, "reference": c.is_reference, "seed": c.is_seed,
                "objectives": _headline_metrics(c.objectives),
                "parents": [p.id for p in repo.parents_of(s, c.id, ("parent", "crossover", "debug"))],
            }
            for i, c in enumerate(rows)
        ]


def print_leaderboard(campaign: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=f"leaderboard: {campaign}", title_justify="left")
    obj_names: list[str] = []
    for r in rows:
        for k in r["objectives"]:
            if k not in obj_names:
                obj_names.append(k)
    laddered = any(r.get("rung") for r in rows)  # ranked by rung first (repo.leaderboard)
    for col in ("#", "id", "name", *(("rung",) if laddered else ()), "fitness", *obj_names, "origin", "note"):
        table.add_column(col, overflow="fold")
    for r in rows:
        note = []
        if r["reference"]:
            note.append("reference")
        elif r["seed"]:
            note.append("seed")
        if r["feasible"] is False:
            note.append("infeasible (reference only)")
        table.add_row(
            str(r["rank"]), str(r["id"]), r["name"], *((str(r["rung"]),) if laddered else ()),
            f"{r['fitness']:.4f}" if r["fitness"] is not None else "-",
            *[_fmt(r["objectives"].get(k)) for k in obj_names], r["origin"], ", ".join(note),
        )
    console().print(table)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1e4:
        return f"{v:.3e}"
    return f"{v:.4g}"


def top_command(
    n: Annotated[int, typer.Option("-n", "--n", help="Rows to show.")] = 10,
    campaign: CampaignOption = None,
    feasible_only: Annotated[bool, typer.Option("--feasible-only", help="Hide infeasible references.")] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """The best candidates of a campaign by fitness."""
    database = _db(db)
    try:
        with database.read_session() as s:
            cid = resolve_campaign(s, campaign)
        rows = leaderboard_rows(database, cid, n, include_infeasible=not feasible_only)
    finally:
        database.close()
    if json_out:
        print_json({"campaign": cid, "leaderboard": rows})
    else:
        print_leaderboard(cid, rows)


def status_command(
    campaign: CampaignOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Campaign progress: candidates by status, failures by kind, spend, stop reason."""
    database = _db(db)
    try:
        with database.read_session() as s:
            cid = resolve_campaign(s, campaign)
            camp = repo.get_campaign(s, cid)
            counts = repo.count_by_status(s, cid)
            failures: dict[str, int] = {}
            for c in repo.candidates(s, cid, ("failed", "rejected")):
                failures[c.failure_kind or "?"] = failures.get(c.failure_kind or "?", 0) + 1
            ledger = repo.ledger_totals(s, cid)
            llm = repo.llm_totals(s, cid)
            best = repo.leaderboard(s, cid, 1)
            cfg = camp.config or {}
            info = {
                "campaign": cid, "task": camp.task, "status": camp.status, "stop_reason": camp.stop_reason,
                "created_at": camp.created_at.isoformat() if camp.created_at else None,
                "budget": cfg.get("budget", {}),
                "candidates": counts, "failures_by_kind": failures,
                "evaluations": int(ledger.get("evaluation", 0)),
                "eval_wall_seconds": round(ledger.get("wall_seconds", 0.0), 1),
                "gpu_seconds": round(ledger.get("gpu_seconds", 0.0), 1),
                "llm": {"calls": llm.calls, "tokens_in": llm.tokens_in, "tokens_out": llm.tokens_out,
                        "dollars": round(llm.dollars, 6), "cache_hits": llm.cache_hits},
                "best": {"id": best[0].id, "name": best[0].name, "fitness": best[0].fitness} if best else None,
                "rung_correlation": _rung_correlation(s, cid),
            }
    finally:
        database.close()
    if json_out:
        print_json(info)
        return
    c = console()
    c.print(f"[bold]{cid}[/] ({info['task']}): {info['status']}"
            + (f" - {info['stop_reason']}" if info["stop_reason"] else ""))
    c.print("candidates: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if failures:
        c.print("failures by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    c.print(f"evaluations: {info['evaluations']} of {info['budget'].get('max_evaluations', '?')} budgeted; "
            f"sandbox wall time {info['eval_wall_seconds']}s")
    c.print(f"LLM: {llm.calls} calls, {llm.tokens_in} tokens in, {llm.tokens_out} out, ${llm.dollars:.4f}")
    if info["best"]:
        b = info["best"]
        c.print(f"best: #{b['id']} {b['name']} fitness {b['fitness']:.4f}")
    for pair, rho in (info["rung_correlation"] or {}).items():
        c.print(f"rank correlation {pair}: {rho['spearman']:.3f} over {rho['n']} candidates")


def _rung_correlation(s: Any, campaign: str) -> dict[str, dict[str, float]]:
    from discovery.fidelity import rung_correlations

    return rung_correlations(repo.campaign_evaluations(s, campaign))


def show_command(
    candidate_id: Annotated[int, typer.Argument(help="Candidate id (see `disco top`).")],
    db: DbOption = None,
    json_out: JsonOption = False,
    code: Annotated[bool, typer.Option("--code/--no-code", help="Print the source.")] = True,
) -> None:
    """One candidate: code, motivation, lineage, every stage result."""
    database = _db(db)
    try:
        with database.read_session() as s:
            c = repo.get_candidate(s, candidate_id)
            if c is None:
                raise UserError(f"no candidate {candidate_id} in this database; list them with `disco top`")
            info = {
                "id": c.id, "campaign": c.campaign_id, "name": c.name, "status": c.status,
                "origin": c.origin, "fitness": c.fitness, "feasible": c.feasible,
                "failure_kind": c.failure_kind, "failure_stage": c.failure_stage,
                "failure_message": c.failure_message, "motivation": c.motivation,
                "genome": c.genome, "objectives": c.objectives, "attempts": c.attempts,
                "parents": [{"id": p.id, "name": p.name} for p in repo.parents_of(s, c.id)],
                "children": [{"id": p.id, "name": p.name} for p in repo.children_of(s, c.id)],
                "evaluations": [
                    {"stage": e.stage, "target": e.target, "rung": e.rung, "attempt": e.attempt,
                     "ok": e.ok, "failure_kind": e.failure_kind, "message": e.message,
                     "metrics": e.metrics, "wall_s": e.wall_s, "log_tail": e.log_tail}
                    for e in repo.evaluations_for(s, c.id)
                ],
                "insights": [i.text for i in repo.insights(s, c.campaign_id, candidate_id=c.id)],
                "code": c.code,
            }
    finally:
        database.close()
    if json_out:
        print_json(info)
        return
    _print_candidate(info, code)


def _print_candidate(info: dict[str, Any], show_code: bool) -> None:
    from rich.syntax import Syntax
    from rich.table import Table

    c = console()
    fit = f"{info['fitness']:.4f}" if info["fitness"] is not None else "-"
    c.print(f"[bold]#{info['id']} {info['name']}[/] ({info['campaign']}) status {info['status']}, "
            f"origin {info['origin']}, fitness {fit}")
    if info["failure_kind"]:
        c.print(f"[red]failure {info['failure_kind']} at {info['failure_stage']}[/]: {info['failure_message']}")
    c.print(f"motivation: {info['motivation']}")
    if info["parents"]:
        c.print("parents: " + ", ".join(f"#{p['id']} {p['name']}" for p in info["parents"]))
    if info["children"]:
        c.print("children: " + ", ".join(f"#{p['id']} {p['name']}" for p in info["children"]))
    if info["genome"]:
        c.print("genome: " + ", ".join(f"{k}={v}" for k, v in info["genome"].items()))
    table = Table(title="stage results", title_justify="left")
    for col in ("stage", "rung", "try", "ok", "failure", "wall s", "metrics / message"):
        table.add_column(col, overflow="fold")
    for e in info["evaluations"]:
        detail = e["message"] if not e["ok"] else ", ".join(f"{k}={_fmt(v)}" for k, v in e["metrics"].items())
        table.add_row(e["stage"], str(e["rung"]), str(e["attempt"]), "yes" if e["ok"] else "[red]no[/]",
                      e["failure_kind"] or "", f"{e['wall_s']:.2f}", detail)
    c.print(table)
    for text in info["insights"]:
        c.print(f"insight: {text}")
    if show_code:
        c.print(Syntax(info["code"], "python", line_numbers=True))


def llm_calls_command(
    campaign: CampaignOption = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Most recent calls to show.")] = 50,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """LLM calls with tokens, dollars, latency and cache hits."""
    database = _db(db)
    try:
        with database.read_session() as s:
            rows = repo.llm_calls(s, campaign)[-n:]
            totals = repo.llm_totals(s, campaign)
            calls = [
                {"id": r.id, "campaign": r.campaign_id, "candidate": r.candidate_id, "role": r.role,
                 "template": r.template_name, "model": r.model, "tokens_in": r.tokens_in,
                 "tokens_out": r.tokens_out, "dollars": r.dollars, "latency_s": round(r.latency_s, 3),
                 "cache_hit": r.cache_hit, "error": r.error}
                for r in rows
            ]
    finally:
        database.close()
    summary = {"calls": totals.calls, "tokens_in": totals.tokens_in, "tokens_out": totals.tokens_out,
               "dollars": totals.dollars, "cache_hits": totals.cache_hits, "errors": totals.errors}
    if json_out:
        print_json({"totals": summary, "calls": calls})
        return
    from rich.table import Table

    table = Table(title="LLM calls", title_justify="left")
    for col in ("id", "role", "model", "template", "in", "out", "$", "s", "cache", "error"):
        table.add_column(col, overflow="fold")
    for r in calls:
        table.add_row(str(r["id"]), r["role"], r["model"], r["template"], str(r["tokens_in"]),
                      str(r["tokens_out"]), f"{r['dollars']:.5f}", f"{r['latency_s']:.2f}",
                      "yes" if r["cache_hit"] else "", (r["error"] or "")[:60])
    c = console()
    c.print(table)
    c.print(f"total: {summary['calls']} calls, {summary['tokens_in']} in, {summary['tokens_out']} out, "
            f"${summary['dollars']:.5f}")
