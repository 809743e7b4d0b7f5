"""Full-text search over ``knowledge``: the dialect-specific pieces in one place.

SQLite uses an FTS5 external-content table (``knowledge_fts``) kept in sync with ``knowledge``
by triggers; PostgreSQL uses a GIN index over a weighted ``tsvector`` expression. Both are
created by the migration, not by the models, so this module also tells Alembic's autogenerate
to ignore them (``include_name``) when it compares the database with the models.

User text never reaches the query syntax: it is split into word terms and each term is passed
either as a quoted FTS5 string (SQLite) or as a bound parameter to ``plainto_tsquery``
(PostgreSQL). Terms are OR-ed, so a long retrieval context ranks entries by how much of it they
match (bm25 / ts_rank) instead of requiring every word.
"""

from __future__ import annotations

import re
from typing import Any

FTS_TABLE = "knowledge_fts"
FTS_COLUMNS = ("title", "trigger", "principle", "hint", "body")
# bm25 weights per FTS column (same order as FTS_COLUMNS): a match in the title says more
# about an entry than one in its body.
FTS5_WEIGHTS = (4.0, 2.0, 2.0, 1.0, 1.0)
PG_INDEX = "ix_knowledge_fts"
PG_CONFIG = "english"
# The indexed expression. The search query must use this exact text or the planner cannot use
# the GIN index; the migration holds a frozen copy and a test checks the two agree.
PG_TSVECTOR_SQL = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(\"trigger\", '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(principle, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(hint, '')), 'C') || "
    "setweight(to_tsvector('english', coalesce(body, '')), 'D')"
)
MAX_TERMS = 64  # a whole prompt context can be the query; keep the OR-query bounded

_WORD = re.compile(r"[^\W_]+", re.UNICODE)  # letters and digits; "_" separates, as in FTS5


def query_terms(text: str, max_terms: int = MAX_TERMS) -> list[str]:
    """Distinct lower-cased word terms of ``text`` in first-seen order, at most ``max_terms``."""
    seen: dict[str, None] = {}
    for match in _WORD.finditer(text.lower()):
        term = match.group(0)
        if term and term not in seen:
            seen[term] = None
            if len(seen) >= max_terms:
                break
    return list(seen)


def fts5_match_expression(terms: list[str]) -> str:
    """An FTS5 MATCH string OR-ing ``terms`` as quoted strings (no operator can be injected)."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def include_name(name: str | None, type_: str, parent_names: Any = None) -> bool:
    """Alembic ``include_name`` hook: skip the full-text objects the models do not describe."""
    if name is None:
        return True
    if type_ == "table" and (name == FTS_TABLE or name.startswith(FTS_TABLE + "_")):
        return False
    if type_ == "index" and name == PG_INDEX:
        return False
    return True
