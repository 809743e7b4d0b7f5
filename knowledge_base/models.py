"""SQLAlchemy 2.0 typed models: the knowledge base schema (DESIGN.md section 7).

Portable across SQLite and PostgreSQL: generic column types only (JSON, Text, Float, ...),
a naming convention for constraints so Alembic migrations are deterministic, timestamps
stored as timezone-aware UTC. Full-text search over ``knowledge`` is dialect-specific and is
created by the migration (SQLite FTS5 table / PostgreSQL tsvector index), not modelled here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Campaign(Base):
    __tablename__ = "campaign"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the config's `name`
    task: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the resolved CampaignConfig
    config_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|finished|stopped
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)
    reference_candidate_id: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class Candidate(Base):
    __tablename__ = "candidate"
    __table_args__ = (
        Index("ix_candidate_campaign_status", "campaign_id", "status"),
        Index("ix_candidate_campaign_hash", "campaign_id", "code_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(64))  # normalized-AST hash
    motivation: Mapped[str] = mapped_column(Text, default="")
    genome: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # seed | llm:<model> | mutation | crossover | debug
    origin: Mapped[str] = mapped_column(String(200), default="mutation")
    # proposed | rejected | duplicate | queued | running | evaluated | failed
    status: Mapped[str] = mapped_column(String(16), default="proposed")
    failure_kind: Mapped[str | None] = mapped_column(String(16), default=None)
    failure_stage: Mapped[str | None] = mapped_column(String(64), default=None)
    failure_message: Mapped[str | None] = mapped_column(Text, default=None)
    fitness: Mapped[float | None] = mapped_column(Float, default=None)
    objectives: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    rung: Mapped[int] = mapped_column(Integer, default=0)  # highest rung evaluated
    feasible: Mapped[bool | None] = mapped_column(Boolean, default=None)  # passed constraints
    is_seed: Mapped[bool] = mapped_column(Boolean, default=False)
    is_reference: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # evaluation attempts (infra retries)
    debug_round: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    evaluations: Mapped[list[Evaluation]] = relationship(
        back_populates="candidate", order_by="Evaluation.id", cascade="all, delete-orphan"
    )


class LineageEdge(Base):
    __tablename__ = "lineage_edge"
    __table_args__ = (UniqueConstraint("parent_id", "child_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("candidate.id", ondelete="CASCADE"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("candidate.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # parent | crossover | debug | inspiration


class Evaluation(Base):
    """One row per stage x target x rung x attempt."""

    __tablename__ = "evaluation"
    __table_args__ = (
        UniqueConstraint("candidate_id", "stage", "target", "rung", "attempt"),
        Index("ix_evaluation_campaign_stage", "campaign_id", "stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidate.id", ondelete="CASCADE"))
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    rung: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    ok: Mapped[bool] = mapped_column(Boolean)
    failure_kind: Mapped[str | None] = mapped_column(String(16), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    log_tail: Mapped[str] = mapped_column(Text, default="")
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    candidate: Mapped[Candidate] = relationship(back_populates="evaluations")


class LLMCall(Base):
    __tablename__ = "llm_call"
    __table_args__ = (Index("ix_llm_call_campaign", "campaign_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str | None] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), default=None
    )
    candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidate.id", ondelete="SET NULL"), default=None
    )
    role: Mapped[str] = mapped_column(String(32))  # researcher|debugger|analyst|summarizer|extractor
    template_name: Mapped[str] = mapped_column(String(128))
    template_hash: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    sample_id: Mapped[int] = mapped_column(Integer, default=0)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    response: Mapped[str | None] = mapped_column(Text, default=None)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    dollars: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Insight(Base):
    __tablename__ = "insight"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidate.id", ondelete="CASCADE"), default=None, index=True
    )
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Knowledge(Base):
    """Ingested papers and extracted design principles; full-text indexed by the migration."""

    __tablename__ = "knowledge"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # principle | paper
    task: Mapped[str | None] = mapped_column(String(64), default=None)
    title: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text, default="")  # citation: paper title and year, or path
    trigger: Mapped[str] = mapped_column(Text, default="")  # when the principle applies
    principle: Mapped[str] = mapped_column(Text, default="")
    hint: Mapped[str] = mapped_column(Text, default="")  # implementation hint
    body: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Event(Base):
    __tablename__ = "event"
    __table_args__ = (Index("ix_event_campaign_ts", "campaign_id", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    ts: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class BudgetEntry(Base):
    """The budget ledger: one row per spend (an evaluation, LLM dollars, GPU seconds)."""

    __tablename__ = "budget_ledger"
    __table_args__ = (Index("ix_budget_ledger_campaign_kind", "campaign_id", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # evaluation | llm_dollars | gpu_seconds | wall_seconds
    amount: Mapped[float] = mapped_column(Float)
    candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidate.id", ondelete="SET NULL"), default=None
    )
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
