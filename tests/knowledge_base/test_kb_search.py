"""Full-text retrieval over knowledge: ranking, task filter, index sync, hostile query text."""

from __future__ import annotations

import pytest

from knowledge_base import repository as repo
from knowledge_base.db import Database
from knowledge_base.fulltext import fts5_match_expression, query_terms
from knowledge_base.models import Knowledge

ENTRIES = [
    # (title, trigger, principle, hint, body, task)
    ("Delta rule memory", "recall degrades as the state fills",
     "Write with the delta rule: erase the old value of a key before adding the new one",
     "keep keys L2-normalised", "", "token-mixer"),
    ("Short convolution before the feature map", "weak local token mixing",
     "A depthwise causal convolution of width 4 sharpens local patterns",
     "apply to q and k", "", "token-mixer"),
    ("Data-dependent gating", "uniform forgetting", "Let each token decide how much state decays",
     "sigmoid gate per head", "Gated linear attention uses a gate; the delta rule can be gated.",
     "token-mixer"),
    ("Self-consistency voting", "noisy answers", "Sample several answers and vote", "", "",
     "inference-pipeline"),
    ("Normalise the output", "", "RMS-normalise the mixer output for stable training", "", "", None),
]


@pytest.fixture
def kb(db: Database) -> Database:
    with db.session() as s:
        for title, trigger, principle, hint, body, task in ENTRIES:
            repo.add_knowledge(s, kind="principle", title=title, trigger=trigger,
                               principle=principle, hint=hint, body=body, task=task,
                               source="paper, 2024")
    return db


def _titles(db: Database, query: str, limit: int = 5, task: str | None = None) -> list[str]:
    with db.read_session() as s:
        return [k.title for k in repo.search_knowledge(s, query, limit, task)]


def test_title_match_outranks_body_match(kb: Database) -> None:
    got = _titles(kb, "delta rule")
    assert got[0] == "Delta rule memory"
    assert "Data-dependent gating" in got  # matched in its body only, so ranked lower
    assert got.index("Data-dependent gating") > 0


def test_more_matching_terms_rank_higher(kb: Database) -> None:
    got = _titles(kb, "causal convolution feature map for local mixing")
    assert got[0] == "Short convolution before the feature map"


def test_stemming_and_case(kb: Database) -> None:
    assert _titles(kb, "VOTES")[:1] == ["Self-consistency voting"]
    assert _titles(kb, "decays")[:1] == ["Data-dependent gating"]


def test_task_filter_keeps_taskless_entries(kb: Database) -> None:
    got = _titles(kb, "vote normalise output delta", 10, task="token-mixer")
    assert "Self-consistency voting" not in got
    assert {"Normalise the output", "Delta rule memory"} <= set(got)
    assert _titles(kb, "vote", task="inference-pipeline") == ["Self-consistency voting"]


def test_limit_and_no_match(kb: Database) -> None:
    assert len(_titles(kb, "the delta rule gate convolution vote output", 2)) == 2
    assert _titles(kb, "transformerxl") == []
    assert _titles(kb, "") == []
    assert _titles(kb, "   ...  !!! ") == []


HOSTILE = ['delta" OR "x', "delta AND NOT gate", "NEAR(delta rule)", "title:delta", "delta*",
           "'; DROP TABLE knowledge; --", "(((", '"', "^delta", "delta -rule", "a:b:c", "$$x$$",
           ":limit", "%(task)s", "\\x00"]


def test_query_syntax_in_user_text_is_inert(kb: Database) -> None:
    for hostile in HOSTILE:
        got = _titles(kb, hostile)  # must not raise
        if "delta" in hostile.lower():  # operators are plain words: "delta" still matches
            assert "Delta rule memory" in got, hostile
    with kb.read_session() as s:
        assert repo.count_knowledge(s) == len(ENTRIES)


def test_index_follows_updates_and_deletes(kb: Database) -> None:
    with kb.session() as s:
        entry = repo.search_knowledge(s, "voting")[0]
        entry.title = "Majority ballot"
        entry.principle = "Sample several answers and take the majority"
    assert _titles(kb, "voting") == []
    assert _titles(kb, "ballot") == ["Majority ballot"]
    with kb.session() as s:
        s.delete(s.get(Knowledge, repo.search_knowledge(s, "ballot")[0].id))
    assert _titles(kb, "ballot") == []
    assert _titles(kb, "majority") == []


def test_query_terms_and_fts_expression() -> None:
    assert query_terms("Delta-rule, delta_RULE; gate gate") == ["delta", "rule", "gate"]
    assert len(query_terms(" ".join(f"w{i}" for i in range(500)))) == 64
    assert fts5_match_expression(["a", 'b"c']) == '"a" OR "b""c"'
