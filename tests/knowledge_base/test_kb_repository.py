"""Every repository function, on SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from knowledge_base import repository as repo
from knowledge_base.db import Database


class Kind(str, enum.Enum):
    RUNTIME = "runtime"
    INFRA = "infra"


@dataclass(frozen=True)
class FakeStageResult:
    """Shaped like evaluator.types.StageResult (the repository only reads attributes)."""

    stage: str
    ok: bool
    target: str = "cpu"
    rung: int = 0
    failure_kind: Kind | None = None
    message: str = ""
    log_tail: str = ""
    wall_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


def _campaign(db: Database, cid: str = "c1") -> None:
    with db.session() as s:
        repo.create_campaign(s, cid, "token-mixer", {"name": cid, "budget": {"n": 3}}, "cfg-hash")


def _cand(s, cid: str = "c1", name: str = "x", **kw: Any):
    kw.setdefault("code", f"# {name}\n")
    kw.setdefault("code_hash", f"hash-{name}")
    return repo.add_candidate(s, cid, name=name, **kw)


def test_campaign_lifecycle(db: Database) -> None:
    _campaign(db, "c1")
    _campaign(db, "c2")
    with db.session() as s:
        camp = repo.get_campaign(s, "c1")
        assert camp is not None and camp.status == "running" and camp.stop_reason is None
        assert camp.config == {"name": "c1", "budget": {"n": 3}}
        repo.set_campaign_status(s, "c1", "stopped", "budget: max_llm_dollars reached")
        seed = _cand(s, name="seed", is_seed=True)
        repo.set_reference_candidate(s, "c1", seed.id)
    with db.read_session() as s:
        camp = repo.get_campaign(s, "c1")
        assert (camp.status, camp.stop_reason) == ("stopped", "budget: max_llm_dollars reached")
        assert camp.reference_candidate_id == seed.id
        assert repo.get_candidate(s, seed.id).is_reference
        assert {c.id for c in repo.list_campaigns(s)} == {"c1", "c2"}
        assert repo.get_campaign(s, "nope") is None
    with db.session() as s, pytest.raises(ValueError, match="campaign status"):
        repo.set_campaign_status(s, "c1", "paused")
    with db.session() as s, pytest.raises(repo.NotFoundError):
        repo.set_campaign_status(s, "nope", "finished")


def test_duplicate_campaign_id_is_an_integrity_error(db: Database) -> None:
    _campaign(db)
    with pytest.raises(IntegrityError):
        _campaign(db)


def test_candidates_lineage_and_lookup(db: Database) -> None:
    _campaign(db)
    with db.session() as s:
        a = _cand(s, name="a", origin="seed", is_seed=True, status="evaluated")
        b = _cand(s, name="b", status="evaluated")
        insp = _cand(s, name="insp", status="evaluated")
        child = _cand(s, name="child", parent_ids=[a.id, b.id], edge_kind="crossover",
                      inspiration_ids=[insp.id, a.id], genome={"decay": "fixed"},
                      motivation="mix a and b", status="queued")
        fix = _cand(s, name="fix", parent_ids=[child.id], edge_kind="debug", debug_round=1)
    with db.read_session() as s:
        got = repo.get_candidate(s, child.id)
        assert (got.name, got.genome, got.motivation, got.status) == (
            "child", {"decay": "fixed"}, "mix a and b", "queued")
        assert [p.id for p in repo.parents_of(s, child.id)] == [a.id, b.id, insp.id]
        assert [p.id for p in repo.parents_of(s, child.id, ("parent", "crossover"))] == [a.id, b.id]
        assert [p.id for p in repo.parents_of(s, child.id, "inspiration")] == [insp.id]
        assert [c.id for c in repo.children_of(s, a.id)] == [child.id]
        assert [c.id for c in repo.children_of(s, child.id, "debug")] == [fix.id]
        assert repo.children_of(s, child.id, "crossover") == []
        edges = [(e.parent_id, e.child_id, e.kind) for e in repo.lineage_edges(s, "c1")]
        assert (insp.id, child.id, "inspiration") in edges and len(edges) == 4
        assert repo.get_candidate(s, fix.id).debug_round == 1
        assert repo.get_candidate(s, 10_000) is None
        assert repo.find_candidate_by_hash(s, "c1", "hash-b").id == b.id
        assert repo.find_candidate_by_hash(s, "c1", "missing") is None
        assert repo.find_candidate_by_hash(s, "other", "hash-b") is None
        assert [c.name for c in repo.candidates(s, "c1")] == ["a", "b", "insp", "child", "fix"]
        assert [c.name for c in repo.candidates(s, "c1", "queued")] == ["child"]
        assert [c.name for c in repo.candidates(s, "c1", ("queued", "proposed"))] == ["child", "fix"]
        assert [c.name for c in repo.candidates(s, "c1", limit=2, newest_first=True)] == ["fix", "child"]
        assert repo.count_by_status(s, "c1") == {"evaluated": 3, "queued": 1, "proposed": 1}
    with db.session() as s, pytest.raises(ValueError, match="candidate status"):
        repo.candidates(s, "c1", "bogus")
    with db.session() as s, pytest.raises(ValueError, match="lineage kind"):
        _cand(s, name="bad", parent_ids=[a.id], edge_kind="adopted")


def test_find_by_hash_returns_earliest(db: Database) -> None:
    _campaign(db)
    with db.session() as s:
        first = _cand(s, name="first", code_hash="same")
        _cand(s, name="second", code_hash="same", status="duplicate")
    with db.read_session() as s:
        assert repo.find_candidate_by_hash(s, "c1", "same").id == first.id


def test_status_failure_fitness_updates(db: Database) -> None:
    _campaign(db)
    with db.session() as s:
        c = _cand(s, name="c")
        repo.set_candidate_status(s, c.id, "queued")
        assert repo.begin_attempt(s, c.id) == 1
        assert repo.get_candidate(s, c.id).status == "running"
        assert repo.begin_attempt(s, c.id) == 2
        repo.set_candidate_failure(s, c.id, Kind.RUNTIME, "recall", "boom")
        d = _cand(s, name="d")
        repo.set_candidate_fitness(s, d.id, 0.73, {"recall": 0.9, "tok_s": float("nan")},
                                   feasible=True, rung=1)
    with db.read_session() as s:
        c = repo.get_candidate(s, c.id)
        assert (c.status, c.failure_kind, c.failure_stage, c.failure_message, c.attempts) == (
            "failed", "runtime", "recall", "boom", 2)
        d = repo.get_candidate(s, d.id)
        assert (d.status, d.fitness, d.feasible, d.rung) == ("evaluated", 0.73, True, 1)
        assert d.objectives == {"recall": 0.9, "tok_s": None}  # NaN is stored as null
    with db.session() as s:
        repo.set_candidate_failure(s, d.id, "policy", None, "forbidden import", status="rejected")
    with db.read_session() as s:
        assert repo.get_candidate(s, d.id).status == "rejected"
        assert repo.get_candidate(s, d.id).failure_kind == "policy"
    with db.session() as s, pytest.raises(repo.NotFoundError):
        repo.set_candidate_status(s, 999_999, "queued")


def test_leaderboard_orders_by_fitness_and_filters(db: Database) -> None:
    _campaign(db)
    _campaign(db, "c2")
    with db.session() as s:
        rows = {
            "low": (0.2, True), "high": (0.9, True), "mid": (0.5, None), "tie": (0.5, True),
            "quadratic": (0.95, False),
        }
        ids = {}
        for name, (fit, feasible) in rows.items():
            c = _cand(s, name=name)
            repo.set_candidate_fitness(s, c.id, fit, {"f": fit}, feasible=feasible)
            ids[name] = c.id
        pending = _cand(s, name="nofit")
        repo.set_candidate_fitness(s, pending.id, None, None)  # evaluated, fitness unknown
        failed = _cand(s, name="failed", status="failed")
        failed.fitness = 5.0  # a failed candidate never ranks, whatever its number
        other = _cand(s, "c2", name="other")
        repo.set_candidate_fitness(s, other.id, 10.0, {})
    with db.read_session() as s:
        assert [c.name for c in repo.leaderboard(s, "c1", 10)] == ["high", "mid", "tie", "low"]
        assert [c.name for c in repo.leaderboard(s, "c1", 2)] == ["high", "mid"]
        assert [c.name for c in repo.leaderboard(s, "c1", 10, include_infeasible=True)] == [
            "quadratic", "high", "mid", "tie", "low"]
    with db.session() as s:  # promoted to rung 1: ranks above every rung-0 candidate
        repo.get_candidate(s, ids["low"]).rung = 1
    with db.read_session() as s:
        assert [c.name for c in repo.leaderboard(s, "c1", 3)] == ["low", "high", "mid"]


def test_evaluations_from_objects_and_mappings(db: Database) -> None:
    _campaign(db)
    with db.session() as s:
        c = _cand(s, name="c", status="queued")
        attempt = repo.begin_attempt(s, c.id)
        repo.add_evaluations(s, c.id, [
            FakeStageResult("conformance", True, wall_s=0.5, metrics={"params": 1234}),
            FakeStageResult("causality", False, failure_kind=Kind.RUNTIME, message="leak",
                            log_tail="Traceback...", artifacts={"t": [1, 2]}),
        ], attempt=attempt)
        repo.add_evaluations(s, c.id, [
            {"stage": "conformance", "ok": False, "failure_kind": "infra", "rung": 0},
        ], attempt=attempt + 1)
        # default attempt: the candidate's current attempt count
        repo.begin_attempt(s, c.id)
        repo.add_evaluations(s, c.id, [{"stage": "profile", "ok": True, "rung": 1,
                                        "metrics": {"tok_s": float("inf")}}])
    with db.read_session() as s:
        rows = repo.evaluations_for(s, c.id)
        assert [(r.stage, r.attempt, r.ok, r.failure_kind) for r in rows] == [
            ("conformance", 1, True, None), ("causality", 1, False, "runtime"),
            ("conformance", 2, False, "infra"), ("profile", 2, True, None)]
        assert rows[0].metrics == {"params": 1234.0} and rows[0].wall_s == 0.5
        assert rows[1].artifacts == {"t": [1, 2]} and rows[1].log_tail == "Traceback..."
        assert rows[1].campaign_id == "c1" and rows[0].target == "cpu"
        assert rows[3].metrics == {"tok_s": None}
        assert [r.stage for r in repo.evaluations_for(s, c.id, rung=1)] == ["profile"]
        assert len(repo.evaluations_for(s, c.id, attempt=1)) == 2
        assert len(repo.campaign_evaluations(s, "c1")) == 4
    with pytest.raises(IntegrityError):  # same stage x target x rung x attempt twice
        with db.session() as s:
            repo.add_evaluations(s, c.id, [{"stage": "causality", "ok": True}], attempt=1)
    with db.session() as s, pytest.raises(ValueError, match="'stage'"):
        repo.add_evaluations(s, c.id, [{"ok": True}])


def test_requeue_interrupted(db: Database) -> None:
    _campaign(db)
    _campaign(db, "c2")
    with db.session() as s:
        r1 = _cand(s, name="r1", status="running")
        r2 = _cand(s, name="r2", status="running")
        _cand(s, name="done", status="evaluated")
        _cand(s, "c2", name="elsewhere", status="running")
    with db.session() as s:
        requeued = repo.requeue_interrupted(s, "c1")
        assert sorted(c.id for c in requeued) == [r1.id, r2.id]
        assert all(c.status == "queued" for c in requeued)
    with db.read_session() as s:
        assert repo.count_by_status(s, "c1") == {"queued": 2, "evaluated": 1}
        assert repo.count_by_status(s, "c2") == {"running": 1}
    with db.session() as s:
        assert repo.requeue_interrupted(s, "c1") == []


def test_events(db: Database) -> None:
    _campaign(db)
    with db.session() as s:
        first = repo.add_event(s, "c1", "created", "campaign created", {"seeds": 4})
        repo.add_event(s, "c1", "evaluated", "cand 1", {"fitness": float("nan")})
        repo.add_event(s, "c1", "evaluated", "cand 2")
    with db.read_session() as s:
        all_events = repo.events(s, "c1")
        assert [e.kind for e in all_events] == ["created", "evaluated", "evaluated"]
        assert all_events[0].data == {"seeds": 4} and all_events[1].data == {"fitness": None}
        assert all_events[0].ts is not None
        assert [e.message for e in repo.events(s, "c1", kind="evaluated")] == ["cand 1", "cand 2"]
        assert [e.message for e in repo.events(s, "c1", after_id=first.id)] == ["cand 1", "cand 2"]
        assert [e.message for e in repo.events(s, "c1", limit=1, newest_first=True)] == ["cand 2"]


def test_ledger(db: Database) -> None:
    _campaign(db)
    _campaign(db, "c2")
    with db.session() as s:
        c = _cand(s, name="c")
        repo.add_ledger_entry(s, "c1", "evaluation", 1, candidate_id=c.id)
        repo.add_ledger_entry(s, "c1", "evaluation", 1)
        repo.add_ledger_entry(s, "c1", "llm_dollars", 0.0125, note="researcher")
        repo.add_ledger_entry(s, "c1", "llm_dollars", 0.0075)
        repo.add_ledger_entry(s, "c2", "llm_dollars", 3.0)
    with db.read_session() as s:
        assert repo.ledger_sum(s, "c1", "evaluation") == 2.0
        assert math.isclose(repo.ledger_sum(s, "c1", "llm_dollars"), 0.02)
        assert repo.ledger_sum(s, "c1", "gpu_seconds") == 0.0
        totals = repo.ledger_totals(s, "c1")
        assert set(totals) == {"evaluation", "llm_dollars"} and totals["evaluation"] == 2.0
    with db.session() as s, pytest.raises(ValueError, match="ledger kind"):
        repo.add_ledger_entry(s, "c1", "coffee", 1.0)


def test_llm_calls_and_totals(db: Database) -> None:
    _campaign(db)
    _campaign(db, "c2")
    with db.session() as s:
        c = _cand(s, name="c")
        msgs = [{"role": "user", "content": "propose"}]
        repo.add_llm_call(s, role="researcher", template_name="researcher.j2", template_hash="t1",
                          model="openai/gpt-4o", messages=msgs, response="Name: x", tokens_in=100,
                          tokens_out=50, dollars=0.01, latency_s=1.5, campaign_id="c1",
                          candidate_id=c.id, sample_id=2)
        repo.add_llm_call(s, role="debugger", template_name="debugger.j2", template_hash="t2",
                          model="openai/gpt-4o", messages=msgs, tokens_in=10, tokens_out=5,
                          dollars=0.002, cache_hit=True, campaign_id="c1")
        repo.add_llm_call(s, role="researcher", template_name="researcher.j2", template_hash="t1",
                          model="m", messages=msgs, error="RateLimitError", campaign_id="c2")
    with db.read_session() as s:
        calls = repo.llm_calls(s, "c1")
        assert [c.role for c in calls] == ["researcher", "debugger"]
        assert calls[0].messages == msgs and calls[0].sample_id == 2 and calls[0].response == "Name: x"
        assert [c.role for c in repo.llm_calls(s, "c1", role="debugger")] == ["debugger"]
        assert len(repo.llm_calls(s)) == 3
        t = repo.llm_totals(s, "c1")
        assert (t.calls, t.tokens_in, t.tokens_out, t.tokens, t.cache_hits, t.errors) == (
            2, 110, 55, 165, 1, 0)
        assert math.isclose(t.dollars, 0.012)
        everything = repo.llm_totals(s)
        assert (everything.calls, everything.errors) == (3, 1)
        empty = repo.llm_totals(s, "nope")
        assert (empty.calls, empty.dollars) == (0, 0.0)
    with db.session() as s:  # deleting a candidate keeps its LLM calls (SET NULL)
        s.delete(repo.get_candidate(s, c.id))
    with db.read_session() as s:
        assert repo.llm_calls(s, "c1")[0].candidate_id is None


def test_insights(db: Database) -> None:
    _campaign(db)
    with db.session() as s:
        c = _cand(s, name="c")
        repo.add_insight(s, "c1", "gating helped recall", candidate_id=c.id, model="m")
        repo.add_insight(s, "c1", "campaign-level note")
    with db.read_session() as s:
        assert [i.text for i in repo.insights(s, "c1")] == ["campaign-level note", "gating helped recall"]
        assert [i.text for i in repo.insights(s, "c1", candidate_id=c.id)] == ["gating helped recall"]
        assert len(repo.insights(s, "c1", limit=1)) == 1


def test_knowledge_dedup_and_count(db: Database) -> None:
    with db.session() as s:
        entry, created = repo.add_knowledge(
            s, kind="principle", title="Delta rule", principle="Overwrite instead of accumulate",
            source="Schlag et al. 2021", task="token-mixer")
        assert created
        again, created_again = repo.add_knowledge(
            s, kind="principle", title="  delta   RULE ", principle="overwrite instead of accumulate",
            source="another citation", task="token-mixer")
        assert not created_again and again.id == entry.id
        _, created_other_task = repo.add_knowledge(
            s, kind="principle", title="Delta rule", principle="Overwrite instead of accumulate",
            task="inference-pipeline")
        assert created_other_task
        repo.add_knowledge(s, kind="paper", title="General paper", body="text")
    with db.read_session() as s:
        assert repo.count_knowledge(s) == 3
        assert repo.count_knowledge(s, task="token-mixer") == 2  # its own + task-less
        assert repo.count_knowledge(s, kind="paper") == 1
    with db.session() as s, pytest.raises(ValueError, match="knowledge kind"):
        repo.add_knowledge(s, kind="tweet", title="x")
