"""Repository functions: every read and write the platform makes on the knowledge base.

Each function takes a ``Session`` and never commits: the caller (a CLI command, the campaign
loop) owns the transaction, so one step's writes land together or not at all. Functions flush
when the caller needs generated ids. This module covers campaigns, candidates, lineage and
evaluations; ``knowledge_base.logbook`` (events, budget ledger, LLM calls, insights) and
``knowledge_base.knowledge`` (papers and principles, full-text search) are re-exported here so
``from knowledge_base import repository as repo`` reaches everything.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from knowledge_base.knowledge import (  # noqa: F401  (re-exported)
    KNOWLEDGE_KINDS,
    add_knowledge,
    count_knowledge,
    knowledge_content_hash,
    search_knowledge,
)
from knowledge_base.logbook import (  # noqa: F401  (re-exported)
    LLMTotals,
    add_event,
    add_insight,
    add_ledger_entry,
    add_llm_call,
    events,
    insights,
    ledger_sum,
    ledger_totals,
    link_llm_calls,
    llm_call_note,
    llm_calls,
    llm_totals,
)
from knowledge_base.models import Campaign, Candidate, Evaluation, LineageEdge
from knowledge_base.values import json_safe

CAMPAIGN_STATUSES = frozenset({"running", "finished", "stopped"})
CANDIDATE_STATUSES = frozenset(
    {"proposed", "rejected", "duplicate", "queued", "running", "evaluated", "failed"}
)
EDGE_KINDS = frozenset({"parent", "crossover", "debug", "inspiration"})


class NotFoundError(LookupError):
    """A row the caller named does not exist."""


def _check(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


# --- campaigns -------------------------------------------------------------------------------


def create_campaign(
    session: Session,
    campaign_id: str,
    task: str,
    config: Mapping[str, Any],
    config_hash: str,
    *,
    status: str = "running",
) -> Campaign:
    campaign = Campaign(
        id=campaign_id, task=task, config=json_safe(dict(config)), config_hash=config_hash,
        status=_check(status, CAMPAIGN_STATUSES, "campaign status"),
    )
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, campaign_id: str) -> Campaign | None:
    return session.get(Campaign, campaign_id)


def require_campaign(session: Session, campaign_id: str) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFoundError(f"no campaign {campaign_id!r}")
    return campaign


def list_campaigns(session: Session) -> list[Campaign]:
    """All campaigns, newest first."""
    stmt = select(Campaign).order_by(Campaign.created_at.desc(), Campaign.id)
    return list(session.scalars(stmt))


def set_campaign_status(
    session: Session, campaign_id: str, status: str, stop_reason: str | None = None
) -> Campaign:
    campaign = require_campaign(session, campaign_id)
    campaign.status = _check(status, CAMPAIGN_STATUSES, "campaign status")
    campaign.stop_reason = stop_reason
    session.flush()
    return campaign


def set_reference_candidate(session: Session, campaign_id: str, candidate_id: int) -> None:
    campaign = require_campaign(session, campaign_id)
    candidate = require_candidate(session, candidate_id)
    campaign.reference_candidate_id = candidate.id
    candidate.is_reference = True
    session.flush()


# --- candidates ------------------------------------------------------------------------------


def add_candidate(
    session: Session,
    campaign_id: str,
    *,
    name: str,
    code: str,
    code_hash: str,
    motivation: str = "",
    genome: Mapping[str, Any] | None = None,
    origin: str = "mutation",
    status: str = "proposed",
    parent_ids: Sequence[int] = (),
    edge_kind: str = "parent",
    inspiration_ids: Sequence[int] = (),
    is_seed: bool = False,
    is_reference: bool = False,
    debug_round: int = 0,
) -> Candidate:
    """Insert a candidate and its lineage edges (``edge_kind`` from each parent, plus
    ``inspiration`` edges from candidates shown to the proposer but not modified)."""
    candidate = Candidate(
        campaign_id=campaign_id, name=name[:200], code=code, code_hash=code_hash,
        motivation=motivation, genome=json_safe(dict(genome)) if genome is not None else None,
        origin=origin[:200], status=_check(status, CANDIDATE_STATUSES, "candidate status"),
        is_seed=is_seed, is_reference=is_reference, debug_round=debug_round,
    )
    session.add(candidate)
    session.flush()
    for parent_id in dict.fromkeys(parent_ids):
        add_lineage_edge(session, parent_id, candidate.id, edge_kind)
    for parent_id in dict.fromkeys(inspiration_ids):
        if parent_id not in parent_ids:
            add_lineage_edge(session, parent_id, candidate.id, "inspiration")
    session.flush()
    return candidate


def add_lineage_edge(session: Session, parent_id: int, child_id: int, kind: str) -> LineageEdge:
    edge = LineageEdge(
        parent_id=parent_id, child_id=child_id, kind=_check(kind, EDGE_KINDS, "lineage kind")
    )
    session.add(edge)
    return edge


def get_candidate(session: Session, candidate_id: int) -> Candidate | None:
    return session.get(Candidate, candidate_id)


def require_candidate(session: Session, candidate_id: int) -> Candidate:
    candidate = session.get(Candidate, candidate_id)
    if candidate is None:
        raise NotFoundError(f"no candidate {candidate_id}")
    return candidate


def find_candidate_by_hash(session: Session, campaign_id: str, code_hash: str) -> Candidate | None:
    """The earliest candidate of the campaign with this normalized code hash."""
    stmt = (
        select(Candidate)
        .where(Candidate.campaign_id == campaign_id, Candidate.code_hash == code_hash)
        .order_by(Candidate.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


def candidates(
    session: Session,
    campaign_id: str,
    status: str | Iterable[str] | None = None,
    *,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[Candidate]:
    """The campaign's candidates, optionally only those with ``status`` (one or several)."""
    stmt = select(Candidate).where(Candidate.campaign_id == campaign_id)
    if status is not None:
        wanted = [status] if isinstance(status, str) else list(status)
        for value in wanted:
            _check(value, CANDIDATE_STATUSES, "candidate status")
        stmt = stmt.where(Candidate.status.in_(wanted))
    stmt = stmt.order_by(Candidate.id.desc() if newest_first else Candidate.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def set_candidate_status(session: Session, candidate_id: int, status: str) -> Candidate:
    candidate = require_candidate(session, candidate_id)
    candidate.status = _check(status, CANDIDATE_STATUSES, "candidate status")
    session.flush()
    return candidate


def begin_attempt(session: Session, candidate_id: int) -> int:
    """Mark the candidate ``running`` and count one more evaluation attempt; returns its
    number, to pass to ``add_evaluations``."""
    candidate = require_candidate(session, candidate_id)
    candidate.attempts += 1
    candidate.status = "running"
    session.flush()
    return candidate.attempts


def set_candidate_failure(
    session: Session,
    candidate_id: int,
    kind: str | enum.Enum,
    stage: str | None,
    message: str,
    *,
    status: str = "failed",
) -> Candidate:
    """Record why a candidate failed (``status`` may also be ``rejected``/``duplicate``)."""
    candidate = require_candidate(session, candidate_id)
    candidate.status = _check(status, CANDIDATE_STATUSES, "candidate status")
    candidate.failure_kind = _kind(kind)
    candidate.failure_stage = stage
    candidate.failure_message = message
    session.flush()
    return candidate


def set_candidate_fitness(
    session: Session,
    candidate_id: int,
    fitness: float | None,
    objectives: Mapping[str, Any] | None = None,
    *,
    feasible: bool | None = None,
    rung: int | None = None,
    status: str | None = "evaluated",
) -> Candidate:
    """Store the scalar fitness and raw objectives (and optionally feasibility, the highest
    rung reached and a new status)."""
    candidate = require_candidate(session, candidate_id)
    candidate.fitness = None if fitness is None else float(fitness)
    if objectives is not None:
        candidate.objectives = json_safe(dict(objectives))
    if feasible is not None:
        candidate.feasible = feasible
    if rung is not None:
        candidate.rung = rung
    if status is not None:
        candidate.status = _check(status, CANDIDATE_STATUSES, "candidate status")
    session.flush()
    return candidate


def count_by_status(session: Session, campaign_id: str) -> dict[str, int]:
    """``{status: count}`` for the statuses present in the campaign."""
    stmt = (
        select(Candidate.status, func.count())
        .where(Candidate.campaign_id == campaign_id)
        .group_by(Candidate.status)
    )
    return {status: int(n) for status, n in session.execute(stmt)}


def leaderboard(
    session: Session, campaign_id: str, n: int = 10, *, include_infeasible: bool = False
) -> list[Candidate]:
    """The ``n`` best evaluated candidates: those that reached a higher rung of the fidelity
    ladder first (their fitness was measured with the larger budget, against the reference at
    that rung, so it is not comparable with rung-0 fitness), then by fitness (ties: earliest
    first), as successive halving ranks its survivors.

    Infeasible candidates (failed a constraint, e.g. a quadratic reference seed) are left out
    unless ``include_infeasible``; candidates whose feasibility is unknown are kept.
    """
    stmt = select(Candidate).where(
        Candidate.campaign_id == campaign_id,
        Candidate.status == "evaluated",
        Candidate.fitness.is_not(None),
    )
    if not include_infeasible:
        stmt = stmt.where(Candidate.feasible.is_not(False))
    stmt = stmt.order_by(Candidate.rung.desc(), Candidate.fitness.desc(), Candidate.id).limit(n)
    return list(session.scalars(stmt))


def requeue_interrupted(session: Session, campaign_id: str) -> list[Candidate]:
    """Put candidates left ``running`` (the driver died mid-evaluation) back to ``queued``."""
    stuck = candidates(session, campaign_id, "running")
    if stuck:
        session.execute(
            update(Candidate)
            .where(Candidate.id.in_([c.id for c in stuck]))
            .values(status="queued")
            .execution_options(synchronize_session="fetch")
        )
        session.flush()
    return stuck


# --- lineage ---------------------------------------------------------------------------------


def _kinds_filter(kinds: str | Iterable[str] | None) -> list[str] | None:
    if kinds is None:
        return None
    wanted = [kinds] if isinstance(kinds, str) else list(kinds)
    for kind in wanted:
        _check(kind, EDGE_KINDS, "lineage kind")
    return wanted


def parents_of(
    session: Session, candidate_id: int, kinds: str | Iterable[str] | None = None
) -> list[Candidate]:
    """Candidates with an edge into ``candidate_id`` (all kinds unless ``kinds`` given)."""
    edges = select(LineageEdge.parent_id).where(LineageEdge.child_id == candidate_id)
    wanted = _kinds_filter(kinds)
    if wanted is not None:
        edges = edges.where(LineageEdge.kind.in_(wanted))
    # IN (subquery), not JOIN + DISTINCT: PostgreSQL cannot DISTINCT over json columns.
    stmt = select(Candidate).where(Candidate.id.in_(edges)).order_by(Candidate.id)
    return list(session.scalars(stmt))


def children_of(
    session: Session, candidate_id: int, kinds: str | Iterable[str] | None = None
) -> list[Candidate]:
    edges = select(LineageEdge.child_id).where(LineageEdge.parent_id == candidate_id)
    wanted = _kinds_filter(kinds)
    if wanted is not None:
        edges = edges.where(LineageEdge.kind.in_(wanted))
    stmt = select(Candidate).where(Candidate.id.in_(edges)).order_by(Candidate.id)
    return list(session.scalars(stmt))


def lineage_edges(session: Session, campaign_id: str) -> list[LineageEdge]:
    """Every edge whose child belongs to the campaign, in insertion order."""
    child = aliased(Candidate)
    stmt = (
        select(LineageEdge)
        .join(child, LineageEdge.child_id == child.id)
        .where(child.campaign_id == campaign_id)
        .order_by(LineageEdge.id)
    )
    return list(session.scalars(stmt))


# --- evaluations -----------------------------------------------------------------------------

_RESULT_FIELDS = (
    "stage", "target", "rung", "ok", "failure_kind", "message", "log_tail", "wall_s",
    "metrics", "artifacts",
)
_RESULT_DEFAULTS: dict[str, Any] = {
    "target": "cpu", "rung": 0, "failure_kind": None, "message": "", "log_tail": "",
    "wall_s": 0.0, "metrics": {}, "artifacts": {},
}


def _kind(kind: str | enum.Enum | None) -> str | None:
    if kind is None:
        return None
    return str(kind.value) if isinstance(kind, enum.Enum) else str(kind)


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


def _result_values(result: Any) -> dict[str, Any]:
    """Field values of a StageResult-like object or a mapping of plain values."""
    values: dict[str, Any] = {}
    for name in _RESULT_FIELDS:
        if isinstance(result, Mapping):
            present, value = name in result, result.get(name)
        else:
            present, value = hasattr(result, name), getattr(result, name, None)
        if not present:
            if name not in _RESULT_DEFAULTS:
                raise ValueError(f"stage result {result!r} has no {name!r}")
            value = _RESULT_DEFAULTS[name]
        values[name] = value
    return values


def add_evaluations(
    session: Session, candidate_id: int, results: Iterable[Any], *, attempt: int | None = None
) -> list[Evaluation]:
    """Store stage results (StageResult-like objects or mappings) of one attempt.

    ``attempt`` defaults to the candidate's current attempt count (see ``begin_attempt``), or
    1 when no attempt was begun. Storing the same stage x target x rung twice for one attempt
    violates a unique constraint.
    """
    candidate = require_candidate(session, candidate_id)
    if attempt is None:
        attempt = max(candidate.attempts, 1)
    rows = []
    for result in results:
        v = _result_values(result)
        row = Evaluation(
            candidate_id=candidate.id, campaign_id=candidate.campaign_id,
            stage=str(v["stage"]), target=str(v["target"]), rung=int(v["rung"]),
            attempt=attempt, ok=bool(v["ok"]), failure_kind=_kind(v["failure_kind"]),
            message=str(v["message"] or ""), log_tail=str(v["log_tail"] or ""),
            wall_s=float(v["wall_s"] or 0.0),
            metrics=json_safe({str(k): _num(x) for k, x in dict(v["metrics"] or {}).items()}),
            artifacts=json_safe(dict(v["artifacts"] or {})),
        )
        session.add(row)
        rows.append(row)
    session.flush()
    return rows


def evaluations_for(
    session: Session, candidate_id: int, *, rung: int | None = None, attempt: int | None = None
) -> list[Evaluation]:
    """The candidate's evaluation rows in the order they were stored."""
    stmt = select(Evaluation).where(Evaluation.candidate_id == candidate_id)
    if rung is not None:
        stmt = stmt.where(Evaluation.rung == rung)
    if attempt is not None:
        stmt = stmt.where(Evaluation.attempt == attempt)
    return list(session.scalars(stmt.order_by(Evaluation.id)))


def campaign_evaluations(session: Session, campaign_id: str) -> list[Evaluation]:
    stmt = select(Evaluation).where(Evaluation.campaign_id == campaign_id).order_by(Evaluation.id)
    return list(session.scalars(stmt))
