"""`disco kb ingest` / `disco kb search`: the built-in principle pack, papers stored as text,
principles distilled by an LLM (over HTTP to a loopback server), full-text search as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from knowledge_base import repository as repo
from knowledge_base.db import open_database
from tests.discovery.conftest import disco
from tests.fake_openai_server import FakeOpenAIServer

PAPERS = [
    {"title": "Hyena Hierarchy: Towards Larger Convolutional Language Models",
     "abstract": "Implicit long convolutions interleaved with multiplicative gating.",
     "body": "We parametrise long convolution filters with a small feed-forward network."},
    {"title": "Retentive Network", "abstract": "Retention with exponential decay.", "body": ""},
]
NOTE = "# Zebra mixers\n\nStripe the channels: alternate a zebrafish-inspired recurrence with attention.\n"


def _json(*args: str, cwd: Path) -> object:
    return json.loads(disco(*args, "--json", cwd=cwd, check=True).stdout)


def test_builtin_pack_papers_and_search(tmp_path: Path) -> None:
    db = str(tmp_path / "kb.db")
    first = _json("kb", "ingest", "--builtin", "--db", db, cwd=tmp_path)
    assert first["added"] >= 30 and first["skipped_duplicates"] == 0
    again = _json("kb", "ingest", "--builtin", "--db", db, cwd=tmp_path)
    assert again == {"added": 0, "skipped_duplicates": first["added"]}  # idempotent

    (tmp_path / "papers.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAPERS))
    (tmp_path / "note.md").write_text(NOTE)
    assert _json("kb", "ingest", str(tmp_path / "papers.jsonl"), "--db", db, cwd=tmp_path)["added"] == 2
    assert _json("kb", "ingest", str(tmp_path / "note.md"), "--db", db, cwd=tmp_path)["added"] == 1

    hits = _json("kb", "search", "delta rule", "-n", "5", "--db", db, cwd=tmp_path)
    assert len(hits) == 5 and all(h["kind"] == "principle" for h in hits)
    assert "delta" in (hits[0]["title"] + hits[0]["principle"] + hits[0]["trigger"]).lower()
    assert all(h["source"] and h["hint"] for h in hits)

    [zebra] = _json("kb", "search", "zebrafish", "--db", db, cwd=tmp_path)
    assert (zebra["kind"], zebra["title"], zebra["source"]) == ("paper", "Zebra mixers", "note.md")
    hyena = _json("kb", "search", "implicit long convolutions", "-n", "1", "--db", db, cwd=tmp_path)
    assert hyena[0]["title"] == PAPERS[0]["title"] and hyena[0]["kind"] == "paper"
    assert _json("kb", "search", "xylophonequartz", "--db", db, cwd=tmp_path) == []


def test_ingest_with_a_model_stores_extracted_principles(tmp_path: Path) -> None:
    db = str(tmp_path / "kb.db")
    (tmp_path / "paper.md").write_text(NOTE)
    reply = json.dumps([
        {"title": "Striped hybrid", "trigger": "recall is weak in a pure recurrence",
         "principle": "interleave recurrent and attention layers", "hint": "one attention layer in four"},
        {"title": "Zebra gating", "trigger": "channels saturate",
         "principle": "gate alternate channel groups", "hint": "sigmoid gate on even groups"},
    ])
    with FakeOpenAIServer([reply]) as server:
        out = _json("kb", "ingest", str(tmp_path / "paper.md"), "--model", "openai/tiny",
                    "--api-base", server.api_base, "--db", db, cwd=tmp_path)
        assert len(server.requests) == 1 and "Zebra mixers" in server.requests[0]["messages"][0]["content"]
    assert out == {"added": 2, "skipped_duplicates": 0}
    database = open_database(f"sqlite:///{db}")
    try:
        with database.read_session() as s:
            [hit] = repo.search_knowledge(s, "interleave attention layers", limit=5)
            assert (hit.kind, hit.title, hit.source) == ("principle", "Striped hybrid", "Zebra mixers")
            [call] = repo.llm_calls(s)
            assert call.role == "extractor" and call.campaign_id is None and call.error is None
            assert call.tokens_in > 0 and call.tokens_out > 0
    finally:
        database.close()
