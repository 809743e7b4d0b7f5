"""Initial knowledge base schema: every table of models.py plus full-text search on knowledge.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Constraint names follow models.NAMING_CONVENTION literally, so the schema this migration builds
compares equal to the models (tests/knowledge_base/test_migrations.py checks it). Full-text
search is dialect-specific: an FTS5 external-content table with sync triggers on SQLite, a GIN
index over a weighted tsvector expression on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of knowledge_base.fulltext's definitions as of this revision.
_FTS_COLUMNS = ("title", "trigger", "principle", "hint", "body")
_PG_TSVECTOR_SQL = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(\"trigger\", '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(principle, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(hint, '')), 'C') || "
    "setweight(to_tsvector('english', coalesce(body, '')), 'D')"
)


def _ts(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _fk(column: str, table: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "campaign",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("reference_candidate_id", sa.Integer(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_campaign"),
    )
    op.create_table(
        "candidate",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("motivation", sa.Text(), nullable=False),
        sa.Column("genome", sa.JSON(), nullable=True),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_kind", sa.String(16), nullable=True),
        sa.Column("failure_stage", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("fitness", sa.Float(), nullable=True),
        sa.Column("objectives", sa.JSON(), nullable=True),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("feasible", sa.Boolean(), nullable=True),
        sa.Column("is_seed", sa.Boolean(), nullable=False),
        sa.Column("is_reference", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("debug_round", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _fk("campaign_id", "candidate", "campaign", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_candidate"),
    )
    op.create_index("ix_candidate_campaign_status", "candidate", ["campaign_id", "status"])
    op.create_index("ix_candidate_campaign_hash", "candidate", ["campaign_id", "code_hash"])

    op.create_table(
        "lineage_edge",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("child_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _fk("parent_id", "lineage_edge", "candidate", "CASCADE"),
        _fk("child_id", "lineage_edge", "candidate", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_lineage_edge"),
        sa.UniqueConstraint("parent_id", "child_id", "kind", name="uq_lineage_edge_parent_id"),
    )
    op.create_index("ix_lineage_edge_parent_id", "lineage_edge", ["parent_id"])
    op.create_index("ix_lineage_edge_child_id", "lineage_edge", ["child_id"])

    op.create_table(
        "evaluation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("failure_kind", sa.String(16), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("log_tail", sa.Text(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        _ts("created_at"),
        _fk("candidate_id", "evaluation", "candidate", "CASCADE"),
        _fk("campaign_id", "evaluation", "campaign", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_evaluation"),
        sa.UniqueConstraint(
            "candidate_id", "stage", "target", "rung", "attempt",
            name="uq_evaluation_candidate_id",
        ),
    )
    op.create_index("ix_evaluation_campaign_stage", "evaluation", ["campaign_id", "stage"])

    op.create_table(
        "llm_call",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=True),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("template_name", sa.String(128), nullable=False),
        sa.Column("template_hash", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("dollars", sa.Float(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at"),
        _fk("campaign_id", "llm_call", "campaign", "CASCADE"),
        _fk("candidate_id", "llm_call", "candidate", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_llm_call"),
    )
    op.create_index("ix_llm_call_campaign", "llm_call", ["campaign_id"])

    op.create_table(
        "insight",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        _ts("created_at"),
        _fk("campaign_id", "insight", "campaign", "CASCADE"),
        _fk("candidate_id", "insight", "candidate", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_insight"),
    )
    op.create_index("ix_insight_campaign_id", "insight", ["campaign_id"])
    op.create_index("ix_insight_candidate_id", "insight", ["candidate_id"])

    op.create_table(
        "knowledge",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("task", sa.String(64), nullable=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("principle", sa.Text(), nullable=False),
        sa.Column("hint", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_knowledge"),
        sa.UniqueConstraint("content_hash", name="uq_knowledge_content_hash"),
    )

    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        _fk("campaign_id", "event", "campaign", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_event"),
    )
    op.create_index("ix_event_campaign_ts", "event", ["campaign_id", "ts"])

    op.create_table(
        "budget_ledger",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        _ts("created_at"),
        _fk("campaign_id", "budget_ledger", "campaign", "CASCADE"),
        _fk("candidate_id", "budget_ledger", "candidate", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_budget_ledger"),
    )
    op.create_index("ix_budget_ledger_campaign_kind", "budget_ledger", ["campaign_id", "kind"])

    _create_fulltext()


def _create_fulltext() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        cols = ", ".join(f'"{c}"' for c in _FTS_COLUMNS)
        new = ", ".join(f'new."{c}"' for c in _FTS_COLUMNS)
        old = ", ".join(f'old."{c}"' for c in _FTS_COLUMNS)
        op.execute(
            f"CREATE VIRTUAL TABLE knowledge_fts USING fts5({cols}, content='knowledge', "
            "content_rowid='id', tokenize='porter unicode61')"
        )
        # External-content FTS5: the index stores no text, so a delete must be told the old
        # values; an update is a delete of the old row followed by an insert of the new one.
        insert = f"INSERT INTO knowledge_fts(rowid, {cols}) VALUES (new.id, {new});"
        delete = (
            f"INSERT INTO knowledge_fts(knowledge_fts, rowid, {cols}) "
            f"VALUES ('delete', old.id, {old});"
        )
        op.execute(f"CREATE TRIGGER knowledge_fts_ai AFTER INSERT ON knowledge BEGIN {insert} END")
        op.execute(f"CREATE TRIGGER knowledge_fts_ad AFTER DELETE ON knowledge BEGIN {delete} END")
        op.execute(
            f"CREATE TRIGGER knowledge_fts_au AFTER UPDATE ON knowledge BEGIN {delete} {insert} END"
        )
    elif dialect == "postgresql":
        op.execute(f"CREATE INDEX ix_knowledge_fts ON knowledge USING gin (({_PG_TSVECTOR_SQL}))")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("knowledge_fts_au", "knowledge_fts_ad", "knowledge_fts_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS knowledge_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_knowledge_fts")
    for table in (
        "budget_ledger", "event", "knowledge", "insight", "llm_call", "evaluation",
        "lineage_edge", "candidate", "campaign",
    ):
        op.drop_table(table)
