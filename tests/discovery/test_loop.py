"""The campaign loop against a toy task: budgets, statuses, constraints, duplicates,
infra retries and resume, with rows in the database as the observable outcome."""

from __future__ import annotations

import asyncio

import pytest

from discovery.config import parse_config
from discovery.loop import CampaignLoop
from discovery.policies import make_policy
from discovery.store import CampaignStore
from evaluator.registry import get_task
from knowledge_base import repository as repo
from knowledge_base.db import open_database
from sandbox.api import SandboxLimits
from tests.discovery.toy import InProcessRunner, ToyProposer

TOY = "tests.discovery.toy:ToyTask"


def make(tmp_path, proposer=None, runner=None, fidelity=None, **budget):
    cfg = parse_config({
        "fidelity": fidelity or {},
        "name": "toy", "task": {"name": TOY},
        "budget": {"max_evaluations": budget.get("n", 12)},
        "runner": {"kind": "inline", "max_in_flight": 2, "infra_retries": 1},
        "policy": {"kind": "evolution", "population": 4, "tournament": 2},
    })
    db = open_database(f"sqlite:///{tmp_path / 'k.db'}")
    task = get_task(TOY)
    store = CampaignStore(db, cfg, task)
    loop = CampaignLoop(cfg, store, task, proposer or ToyProposer(),
                        lambda: make_policy(cfg.policy, cfg.seed), runner or InProcessRunner(),
                        SandboxLimits())
    return loop, db


def test_campaign_spends_its_budget_and_records_everything(tmp_path):
    loop, db = make(tmp_path, n=12)
    summary = asyncio.run(loop.run())
    assert summary.stop_reason.startswith("max_evaluations")
    with db.read_session() as s:
        counts = repo.count_by_status(s, "toy")
        assert counts.get("evaluated", 0) + counts.get("failed", 0) == 12
        camp = repo.get_campaign(s, "toy")
        assert camp.status == "finished"
        # every finished candidate has exactly one set of evaluation rows (attempt 1)
        for c in repo.candidates(s, "toy", ("evaluated", "failed")):
            evs = repo.evaluations_for(s, c.id)
            assert {e.attempt for e in evs} == {1}
            assert evs[0].stage == "load"
        # reference seed: fitness 0.5 exactly (equal to itself)
        ref = repo.get_candidate(s, camp.reference_candidate_id)
        assert ref.fitness == pytest.approx(0.5)
        # the constraint-violating seed is evaluated, infeasible, and never a parent
        huge = next(c for c in repo.candidates(s, "toy") if c.name == "huge")
        assert huge.status == "evaluated" and huge.feasible is False
        assert repo.children_of(s, huge.id, ("parent", "crossover")) == []
        # proposals have lineage edges to their parents
        proposed = [c for c in repo.candidates(s, "toy") if not c.is_seed]
        assert proposed and all(repo.parents_of(s, c.id) for c in proposed if c.origin != "fresh")
    db.close()


def test_failures_are_recorded_with_kind_and_not_parents(tmp_path):
    loop, db = make(tmp_path, proposer=ToyProposer(crash_every=2), n=10)
    asyncio.run(loop.run())
    with db.read_session() as s:
        failed = repo.candidates(s, "toy", "failed")
        assert failed and all(c.failure_kind == "runtime" and c.failure_stage == "score" for c in failed)
        for c in failed:
            assert repo.children_of(s, c.id, ("parent", "crossover")) == []
    db.close()


def test_duplicates_are_rejected_not_evaluated(tmp_path):
    class Same(ToyProposer):
        async def propose(self, ctx):
            p = await super().propose(ctx)
            return type(p)(name="same", motivation="", code="VALUE = 2.0  # a comment\n",
                           genome={"v": 2.0}, parent_ids=p.parent_ids, origin="mutation")

    loop, db = make(tmp_path, proposer=Same(), n=5)
    summary = asyncio.run(loop.run())
    assert "in a row" in summary.stop_reason  # the proposer only produces duplicates
    with db.read_session() as s:
        dups = repo.candidates(s, "toy", "duplicate")
        assert dups and all(c.failure_message.startswith("duplicate of candidate #") for c in dups)
        assert not repo.evaluations_for(s, dups[0].id)
    db.close()


def test_infra_failure_is_retried_once_then_succeeds(tmp_path):
    runner = InProcessRunner(infra_failures=1)
    loop, db = make(tmp_path, runner=runner, n=4)
    asyncio.run(loop.run())
    with db.read_session() as s:
        first = repo.get_candidate(s, runner.submitted[0])
        evs = repo.evaluations_for(s, first.id)
        assert [e.stage for e in evs if e.attempt == 1] == ["infra"]
        assert {e.attempt for e in evs} == {1, 2}
        assert first.status == "evaluated" and first.attempts == 2
    db.close()


def test_resume_requeues_interrupted_and_finishes_without_repeats(tmp_path):
    loop, db = make(tmp_path, n=8)
    # simulate a crash: start the campaign, mark two candidates running, stop abruptly
    loop.store.open_campaign(loop.cfg, loop.task)
    with db.session() as s:
        for c in repo.candidates(s, "toy", "queued")[:2]:
            c.status = "running"
            c.attempts = 1
    db.close()
    loop2, db2 = make(tmp_path, n=8)
    asyncio.run(loop2.run())
    with db2.read_session() as s:
        done = repo.candidates(s, "toy", ("evaluated", "failed"))
        assert len(done) == 8
        assert not repo.candidates(s, "toy", ("running", "queued"))
        events = [e.kind for e in repo.events(s, "toy")]
        assert "resumed" in events
    db2.close()


def test_budget_applies_to_seeds_too(tmp_path):
    loop, db = make(tmp_path, n=2)
    summary = asyncio.run(loop.run())
    assert summary.stop_reason.startswith("max_evaluations")
    with db.read_session() as s:
        counts = repo.count_by_status(s, "toy")
    assert counts.get("evaluated", 0) + counts.get("failed", 0) == 2
    assert counts.get("queued") == 1  # left for a resume with a larger budget
    db.close()


def test_fidelity_ladder_promotes_top_fraction_and_reports_rank_correlation(tmp_path):
    from discovery.fidelity import rung_correlations

    loop, db = make(tmp_path, n=12, fidelity={"max_rung": 1, "promote_fraction": 0.5, "min_to_promote": 2})
    asyncio.run(loop.run())
    with db.read_session() as s:
        evs = repo.campaign_evaluations(s, "toy")
        rung1 = {e.candidate_id for e in evs if e.rung == 1}
        rung0 = {e.candidate_id for e in evs if e.rung == 0 and e.stage == "score" and e.ok}
        camp = repo.get_campaign(s, "toy")
        assert camp.reference_candidate_id in rung1  # the reference always climbs
        assert 3 <= len(rung1) < len(rung0)  # only the top fraction climbs
        promoted = [repo.get_candidate(s, cid) for cid in rung1]
        assert all(c.rung == 1 for c in promoted)
        huge = next(c for c in repo.candidates(s, "toy") if c.name == "huge")
        assert huge.id not in rung1  # infeasible: never promoted
        corr = rung_correlations(evs, metrics=("value",))
    assert corr["rung0->rung1:value"]["spearman"] == pytest.approx(1.0)
    db.close()


def test_cuda_target_without_gpu_falls_back_to_cpu_with_a_note(monkeypatch):
    from discovery import session

    cfg = parse_config({"targets": [{"name": "gpu", "device": "cuda", "dtype": "bfloat16",
                                     "resources": {"GPU": 1}}]})
    monkeypatch.setattr(session, "_cuda_available", lambda: False)
    new, note = session.cpu_fallback(cfg)
    assert new.targets[0].device == "cpu" and new.targets[0].resources == {"CPU": 1.0}
    assert new.targets[0].dtype == "bfloat16" and "reduced" in note
    monkeypatch.setattr(session, "_cuda_available", lambda: True)
    assert session.cpu_fallback(cfg) == (cfg, None)
