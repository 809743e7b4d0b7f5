"""Repository functions for ingested papers and design principles, with full-text retrieval.

``add_knowledge`` deduplicates on a hash of the normalised content, so ingesting the same pack
twice adds nothing. ``search_knowledge`` ranks entries against free text: SQLite's FTS5 with
bm25 (column-weighted: title > trigger, principle > hint, body), PostgreSQL's ``ts_rank``
over the same weighted fields. Entries with no task apply to every task and are returned
alongside the requested task's own entries. Re-exported by ``knowledge_base.repository``.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from knowledge_base import fulltext
from knowledge_base.models import Knowledge

KNOWLEDGE_KINDS = frozenset({"principle", "paper"})
_SPACE = re.compile(r"\s+")


def _norm(value: str | None) -> str:
    return _SPACE.sub(" ", value or "").strip().lower()


def knowledge_content_hash(
    kind: str,
    title: str,
    trigger: str = "",
    principle: str = "",
    hint: str = "",
    body: str = "",
    task: str | None = None,
) -> str:
    """sha256 over the normalised content (case and whitespace do not count; source does
    not either: the same principle cited twice is one entry)."""
    parts = (kind, task or "", title, trigger, principle, hint, body)
    return hashlib.sha256("\x1f".join(_norm(p) for p in parts).encode()).hexdigest()


def add_knowledge(
    session: Session,
    *,
    kind: str,
    title: str,
    source: str = "",
    trigger: str = "",
    principle: str = "",
    hint: str = "",
    body: str = "",
    task: str | None = None,
) -> tuple[Knowledge, bool]:
    """Insert an entry unless the same content exists; returns ``(entry, created)``."""
    if kind not in KNOWLEDGE_KINDS:
        expected = ", ".join(sorted(KNOWLEDGE_KINDS))
        raise ValueError(f"knowledge kind {kind!r} is not one of {expected}")
    if not title.strip():
        raise ValueError("a knowledge entry needs a non-empty title")
    digest = knowledge_content_hash(kind, title, trigger, principle, hint, body, task)
    existing = session.scalars(select(Knowledge).where(Knowledge.content_hash == digest)).first()
    if existing is not None:
        return existing, False
    entry = Knowledge(
        kind=kind, task=task, title=title.strip(), source=source, trigger=trigger,
        principle=principle, hint=hint, body=body, content_hash=digest,
    )
    session.add(entry)
    session.flush()
    return entry, True


def count_knowledge(session: Session, task: str | None = None, kind: str | None = None) -> int:
    """Entries usable for ``task`` (its own plus task-less ones), or all when no task."""
    stmt = select(func.count(Knowledge.id))
    if task is not None:
        stmt = stmt.where((Knowledge.task == task) | Knowledge.task.is_(None))
    if kind is not None:
        stmt = stmt.where(Knowledge.kind == kind)
    return int(session.scalar(stmt) or 0)


def search_knowledge(
    session: Session,
    query: str,
    limit: int = 5,
    task: str | None = None,
    *,
    kind: str | None = None,
) -> list[Knowledge]:
    """Entries matching any word of ``query``, best first (at most ``limit``).

    ``query`` is plain text (a user's search or a prompt context); it is never interpreted as
    query syntax. With ``task``, only that task's entries and task-less ones are searched.
    """
    terms = fulltext.query_terms(query)
    if not terms or limit <= 0:
        return []
    params: dict[str, object] = {"limit": int(limit)}
    filters = ""
    if task is not None:
        filters += " AND (k.task = :task OR k.task IS NULL)"
        params["task"] = task
    if kind is not None:
        filters += " AND k.kind = :kind"
        params["kind"] = kind
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        fts = fulltext.FTS_TABLE
        weights = ", ".join(str(w) for w in fulltext.FTS5_WEIGHTS)
        params["match"] = fulltext.fts5_match_expression(terms)
        sql = (
            f"SELECT k.id FROM {fts} JOIN knowledge AS k ON k.id = {fts}.rowid "
            f"WHERE {fts} MATCH :match{filters} "
            f"ORDER BY bm25({fts}, {weights}), k.id LIMIT :limit"
        )
    elif dialect == "postgresql":
        tsquery = " || ".join(
            f"plainto_tsquery('{fulltext.PG_CONFIG}', :t{i})" for i in range(len(terms))
        )
        params.update({f"t{i}": term for i, term in enumerate(terms)})
        sql = (
            f"SELECT k.id FROM knowledge AS k, (SELECT {tsquery} AS tsq) AS q "
            f"WHERE ({fulltext.PG_TSVECTOR_SQL}) @@ q.tsq{filters} "
            f"ORDER BY ts_rank({fulltext.PG_TSVECTOR_SQL}, q.tsq) DESC, k.id LIMIT :limit"
        )
    else:  # pragma: no cover - open_database refuses other backends
        raise ValueError(f"full-text search is not available on {dialect}")
    ids = [row[0] for row in session.execute(text(sql), params)]
    if not ids:
        return []
    found = {k.id: k for k in session.scalars(select(Knowledge).where(Knowledge.id.in_(ids)))}
    return [found[i] for i in ids if i in found]
