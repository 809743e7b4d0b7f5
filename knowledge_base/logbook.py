"""Repository functions for the campaign's logs: events, the budget ledger, LLM calls, insights.

Like every repository function these take a ``Session`` and never commit. Re-exported by
``knowledge_base.repository``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from knowledge_base.models import BudgetEntry, Event, Insight, LLMCall
from knowledge_base.values import json_safe

LEDGER_KINDS = frozenset({"evaluation", "llm_dollars", "gpu_seconds", "wall_seconds"})


# --- events ----------------------------------------------------------------------------------


def add_event(
    session: Session,
    campaign_id: str,
    kind: str,
    message: str = "",
    data: Mapping[str, Any] | None = None,
) -> Event:
    event = Event(campaign_id=campaign_id, kind=kind[:32], message=message,
                  data=json_safe(dict(data or {})))
    session.add(event)
    session.flush()
    return event


def events(
    session: Session,
    campaign_id: str,
    *,
    kind: str | None = None,
    after_id: int | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[Event]:
    """The campaign's events in order (``after_id`` to tail the log incrementally)."""
    stmt = select(Event).where(Event.campaign_id == campaign_id)
    if kind is not None:
        stmt = stmt.where(Event.kind == kind)
    if after_id is not None:
        stmt = stmt.where(Event.id > after_id)
    stmt = stmt.order_by(Event.id.desc() if newest_first else Event.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


# --- budget ledger ---------------------------------------------------------------------------


def add_ledger_entry(
    session: Session,
    campaign_id: str,
    kind: str,
    amount: float,
    *,
    candidate_id: int | None = None,
    note: str = "",
) -> BudgetEntry:
    if kind not in LEDGER_KINDS:
        raise ValueError(f"ledger kind {kind!r} is not one of {', '.join(sorted(LEDGER_KINDS))}")
    entry = BudgetEntry(campaign_id=campaign_id, kind=kind, amount=float(amount),
                        candidate_id=candidate_id, note=note)
    session.add(entry)
    session.flush()
    return entry


def ledger_sum(session: Session, campaign_id: str, kind: str) -> float:
    """Total spent of one kind (0.0 when nothing was recorded)."""
    stmt = select(func.coalesce(func.sum(BudgetEntry.amount), 0.0)).where(
        BudgetEntry.campaign_id == campaign_id, BudgetEntry.kind == kind
    )
    return float(session.scalar(stmt) or 0.0)


def ledger_totals(session: Session, campaign_id: str) -> dict[str, float]:
    """``{kind: total}`` for every kind with at least one entry."""
    stmt = (
        select(BudgetEntry.kind, func.sum(BudgetEntry.amount))
        .where(BudgetEntry.campaign_id == campaign_id)
        .group_by(BudgetEntry.kind)
    )
    return {kind: float(total or 0.0) for kind, total in session.execute(stmt)}


# --- LLM calls -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMTotals:
    calls: int
    tokens_in: int
    tokens_out: int
    dollars: float
    cache_hits: int
    errors: int

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


def add_llm_call(
    session: Session,
    *,
    role: str,
    template_name: str,
    template_hash: str,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    response: str | None = None,
    tokens_in: int = 0,
    tokens_out: int = 0,
    dollars: float = 0.0,
    latency_s: float = 0.0,
    cache_hit: bool = False,
    error: str | None = None,
    campaign_id: str | None = None,
    candidate_id: int | None = None,
    sample_id: int = 0,
) -> LLMCall:
    call = LLMCall(
        campaign_id=campaign_id, candidate_id=candidate_id, role=role,
        template_name=template_name, template_hash=template_hash, model=model,
        sample_id=sample_id, messages=json_safe([dict(m) for m in messages]), response=response,
        tokens_in=int(tokens_in), tokens_out=int(tokens_out), dollars=float(dollars),
        latency_s=float(latency_s), cache_hit=cache_hit, error=error,
    )
    session.add(call)
    session.flush()
    return call


def llm_call_note(call_id: int) -> str:
    """The note of the ``llm_dollars`` ledger entry of one logged call."""
    return f"llm_call #{call_id}"


def link_llm_calls(session: Session, call_ids: Sequence[int], candidate_id: int) -> int:
    """Set ``candidate_id`` on logged calls made before the candidate existed (a researcher's
    calls produce the candidate), and on their ``llm_dollars`` ledger entries (found by
    ``llm_call_note``); rows already linked keep theirs. Returns the calls changed."""
    if not call_ids:
        return 0
    result = session.execute(
        update(LLMCall)
        .where(LLMCall.id.in_(list(call_ids)), LLMCall.candidate_id.is_(None))
        .values(candidate_id=candidate_id)
    )
    session.execute(
        update(BudgetEntry)
        .where(BudgetEntry.kind == "llm_dollars", BudgetEntry.candidate_id.is_(None),
               BudgetEntry.note.in_([llm_call_note(i) for i in call_ids]))
        .values(candidate_id=candidate_id)
    )
    return int(result.rowcount or 0)


def llm_calls(
    session: Session,
    campaign_id: str | None = None,
    *,
    role: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[LLMCall]:
    """Logged calls, all campaigns unless ``campaign_id`` is given."""
    stmt = select(LLMCall)
    if campaign_id is not None:
        stmt = stmt.where(LLMCall.campaign_id == campaign_id)
    if role is not None:
        stmt = stmt.where(LLMCall.role == role)
    stmt = stmt.order_by(LLMCall.id.desc() if newest_first else LLMCall.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def llm_totals(session: Session, campaign_id: str | None = None) -> LLMTotals:
    """Call count, tokens, dollars, cache hits and errors (all campaigns unless given)."""
    stmt = select(
        func.count(LLMCall.id),
        func.coalesce(func.sum(LLMCall.tokens_in), 0),
        func.coalesce(func.sum(LLMCall.tokens_out), 0),
        func.coalesce(func.sum(LLMCall.dollars), 0.0),
        func.count(LLMCall.id).filter(LLMCall.cache_hit.is_(True)),
        func.count(LLMCall.id).filter(LLMCall.error.is_not(None)),
    )
    if campaign_id is not None:
        stmt = stmt.where(LLMCall.campaign_id == campaign_id)
    calls, tin, tout, dollars, hits, errors = session.execute(stmt).one()
    return LLMTotals(int(calls), int(tin), int(tout), float(dollars), int(hits), int(errors))


# --- insights --------------------------------------------------------------------------------


def add_insight(
    session: Session,
    campaign_id: str,
    text: str,
    *,
    candidate_id: int | None = None,
    model: str | None = None,
) -> Insight:
    insight = Insight(campaign_id=campaign_id, candidate_id=candidate_id, text=text, model=model)
    session.add(insight)
    session.flush()
    return insight


def insights(
    session: Session,
    campaign_id: str,
    *,
    candidate_id: int | None = None,
    limit: int | None = None,
) -> list[Insight]:
    """The campaign's insights, newest first (prompts show the most recent ones)."""
    stmt = select(Insight).where(Insight.campaign_id == campaign_id)
    if candidate_id is not None:
        stmt = stmt.where(Insight.candidate_id == candidate_id)
    stmt = stmt.order_by(Insight.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))
