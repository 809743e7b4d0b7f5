"""LLM campaigns end to end (issue 4): scripted agents through litellm's mock path with the real
sandbox, `disco run --model` over real HTTP against a loopback OpenAI-compatible server, the
dollar budget, missing credentials, and the spend shown by `disco llm-calls` / `disco status`.

Every campaign here is the token-mixer task cut to its reference seed (tests/discovery/
llm_script.py), one evaluation at a time, so the scripted replies are consumed in a fixed
order: each test's campaign costs a few evaluations of a few seconds each.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.llm import ModelPrice
from agents.scripted import ScriptedLLM
from discovery.config import load_config
from discovery.llm_setup import override_model
from discovery.loop import CampaignSummary
from discovery.runners import InlineRunner
from discovery.session import build_campaign
from knowledge_base import repository as repo
from knowledge_base.db import Database, open_database
from tests.discovery.conftest import disco
from tests.discovery.llm_script import (
    GATED_CONV, NO_CODE, PREFIX_SUM_BUGGY, PREFIX_SUM_FIXED, insight_reply, proposal_reply,
    seed_code, write_config,
)
from tests.fake_openai_server import FakeOpenAIServer, HTTPFailure

MODEL = "openai/scripted-priced"
PRICE = ModelPrice(1e-5, 2e-5)  # litellm's mock usage is 10 tokens in, 20 out: $0.0005 a call
LLM_SECTION = f'[proposer]\nkind = "llm"\n[llm.researcher]\nmodel = "{MODEL}"\n'


def run_campaign(cfg_path: Path, db_path: Path, llm: ScriptedLLM):
    cfg = load_config(cfg_path)
    database = open_database(f"sqlite:///{db_path}")
    campaign = build_campaign(cfg, database, runner=InlineRunner(max_in_flight=1), llm=llm)
    try:
        summary = asyncio.run(campaign.loop.run())
    finally:
        campaign.close()
    return summary, database


@dataclass
class Finished:
    dir: Path
    db: Database
    llm: ScriptedLLM
    summary: CampaignSummary


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Finished:
    """Seed, then: an unusable reply (twice: the re-ask), a copy of the seed, a mixer that
    crashes in forward (repaired by the debugger), a good mixer. Budget: 4 evaluations."""
    d = tmp_path_factory.mktemp("scripted")
    cfg = write_config(d / "c.toml", "scripted", 4, LLM_SECTION)
    llm = ScriptedLLM(
        {
            "researcher": [
                NO_CODE, NO_CODE,
                proposal_reply("copy", "the reference, again", seed_code()),
                proposal_reply("prefix-sum", "linear attention by prefix sums, no chunking", PREFIX_SUM_BUGGY),
                proposal_reply("gated-conv", "a gated short convolution for local mixing", GATED_CONV),
            ],
            "debugger": [proposal_reply("prefix-sum", "the heads were not merged before out", PREFIX_SUM_FIXED)],
            "analyst": [insight_reply("first insight"), insight_reply("second insight")],
        },
        via_litellm=True, prices={MODEL: PRICE},
    )
    summary, database = run_campaign(cfg, d / "disco.db", llm)
    yield Finished(d, database, llm, summary)
    database.close()


def test_scripted_campaign_records_every_outcome(scripted: Finished) -> None:
    assert scripted.summary.stop_reason.startswith("max_evaluations")
    assert scripted.llm.remaining == 0  # every scripted reply was asked for, none more
    with scripted.db.read_session() as s:
        by_name = {c.name: c for c in repo.candidates(s, "scripted")}
        seed = by_name["linear_attention"]
        good = by_name["gated-conv"]
        assert good.status == "evaluated" and good.origin == f"llm:{MODEL}" and good.fitness is not None
        assert [p.id for p in repo.parents_of(s, good.id, "parent")] == [seed.id]

        crashed = by_name["prefix-sum"]
        assert (crashed.status, crashed.failure_kind, crashed.failure_stage) == ("failed", "runtime", "conformance")
        fixed = by_name["prefix-sum-fix1"]  # the debugger reused the name: a round suffix
        assert fixed.status == "evaluated" and fixed.origin == "debug" and fixed.debug_round == 1
        assert fixed.code == PREFIX_SUM_FIXED
        assert [p.id for p in repo.parents_of(s, fixed.id, "debug")] == [crashed.id]
        assert {e.kind for e in repo.lineage_edges(s, "scripted") if e.child_id == fixed.id} == {"debug"}

        [invalid] = [c for c in by_name.values() if c.failure_kind == "validator"]
        assert invalid.status == "failed" and invalid.code == NO_CODE  # the reply is kept
        assert "no ```python code block" in invalid.failure_message
        assert not repo.evaluations_for(s, invalid.id)

        dup = by_name["copy"]
        assert dup.status == "duplicate" and dup.failure_message == f"duplicate of candidate #{seed.id}"
        assert not repo.evaluations_for(s, dup.id)
        # 4 evaluations: the seed, the crash, its fix and the good mixer (not the unusable reply)
        assert repo.ledger_sum(s, "scripted", "evaluation") == 4

        insights = {i.candidate_id: i.text for i in repo.insights(s, "scripted")}
        assert set(insights) == {good.id, fixed.id}
        assert all(t.startswith("Change: ") and "insight" in t for t in insights.values())

        calls = repo.llm_calls(s, "scripted")
        roles = [c.role for c in calls]
        assert roles.count("researcher") == 5 and roles.count("debugger") == 1 and roles.count("analyst") == 2
        assert all(c.error is None and c.tokens_in > 0 and c.tokens_out > 0 for c in calls)
        assert all(c.dollars == pytest.approx(10 * 1e-5 + 20 * 2e-5) for c in calls)
        assert sum(c.tokens_in for c in calls) == 10 * len(calls)  # litellm's mock usage
        assert [c.candidate_id for c in calls if c.role == "debugger"] == [crashed.id]
        # the researcher's calls come before their candidate exists: linked once it does
        researched = {c.candidate_id for c in calls if c.role == "researcher"}
        assert {good.id, crashed.id, dup.id} <= researched
        assert invalid.id in researched  # an unusable reply is kept with the calls that gave it
        assert None not in researched
        from knowledge_base.models import BudgetEntry

        spent = s.query(BudgetEntry).filter_by(campaign_id="scripted", kind="llm_dollars").all()
        assert len(spent) == len(calls) and all(e.candidate_id is not None for e in spent)
        assert "researcher.j2+format_error.j2" in {c.template_name for c in calls}  # the re-ask
        assert repo.ledger_sum(s, "scripted", "llm_dollars") == pytest.approx(sum(c.dollars for c in calls))


def test_prompts_carry_retrieved_knowledge_and_the_failure_log(scripted: Finished) -> None:
    history = scripted.llm.history
    researcher = [r for r in history if r.role == "researcher" and r.template_name == "researcher.j2"]
    titles = [json.loads(line)["title"] for line in
              (Path(__file__).resolve().parents[2] / "agents/knowledge_pack/token_mixer.jsonl").read_text().splitlines()
              if line.strip()]
    for request in researcher:
        prompt = request.messages[0].content
        assert "## Design principles retrieved from the knowledge base" in prompt
        assert sum(t in prompt for t in titles) >= 3  # knowledge_top_k = 5 by default
    last = researcher[-1].messages[0].content  # asked after the crash: the failure is shown
    assert "prefix-sum" in last and 'with kind "runtime"' in last
    [debug] = [r for r in history if r.role == "debugger"]
    assert "RuntimeError" in debug.messages[0].content and PREFIX_SUM_BUGGY.splitlines()[-2].strip() in debug.messages[0].content


def test_cli_reports_llm_spend_of_the_campaign(scripted: Finished) -> None:
    db = str(scripted.dir / "disco.db")
    calls = disco("llm-calls", "--campaign", "scripted", "--json", "--db", db, cwd=scripted.dir, check=True)
    out = json.loads(calls.stdout)
    assert out["totals"]["calls"] == len(out["calls"]) == 8
    assert out["totals"]["tokens_in"] == 80 and out["totals"]["tokens_out"] == 160
    assert out["totals"]["dollars"] == pytest.approx(8 * 0.0005)
    assert {c["role"] for c in out["calls"]} == {"researcher", "debugger", "analyst"}
    status = json.loads(disco("status", "--json", "--db", db, cwd=scripted.dir, check=True).stdout)
    assert status["llm"] == {"calls": 8, "tokens_in": 80, "tokens_out": 160, "dollars": pytest.approx(0.004),
                             "cache_hits": 0}
    assert status["candidates"] == {"evaluated": 3, "failed": 2, "duplicate": 1}
    assert status["failures_by_kind"] == {"runtime": 1, "validator": 1}


def test_dollar_budget_stops_the_campaign_before_the_next_call(tmp_path: Path) -> None:
    # $0.006 a call: the first proposal leaves $0.006 in the ledger, the second $0.012; its
    # re-ask (the reply had no code) finds the budget spent and is never sent.
    price = ModelPrice(1e-4, 2.5e-4)
    cfg = write_config(tmp_path / "c.toml", "budget", 10, LLM_SECTION.replace("[llm", "analyst = false\n[llm"),
                       budget="max_llm_dollars = 0.01\n")
    llm = ScriptedLLM({"researcher": [proposal_reply("gated-conv", "local", GATED_CONV), NO_CODE, NO_CODE,
                                      proposal_reply("never", "asked", PREFIX_SUM_FIXED)]},
                      via_litellm=True, prices={MODEL: price})
    summary, database = run_campaign(cfg, tmp_path / "disco.db", llm)
    try:
        # stopped by the gate before the re-ask (the ledger held $0.012), not by the loop
        assert "max_llm_dollars reached ($0.0120 of $0.01)" == summary.stop_reason
        assert llm.remaining == 2
        with database.read_session() as s:
            camp = repo.get_campaign(s, "budget")
            assert camp.status == "finished" and "max_llm_dollars" in camp.stop_reason
            calls = repo.llm_calls(s, "budget")
            assert [c.dollars for c in calls] == [pytest.approx(0.006)] * 2
            spent_before = [sum(c.dollars for c in calls[:i]) for i in range(len(calls))]
            assert all(x < 0.01 for x in spent_before)  # no call started at or over the budget
            assert repo.ledger_sum(s, "budget", "llm_dollars") == pytest.approx(0.012)
            counts = repo.count_by_status(s, "budget")
            assert counts == {"evaluated": 2}  # the seed and the first proposal
    finally:
        database.close()


def test_disco_run_model_over_http_with_a_retried_429(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", "http", 2)  # an offline config: --model switches it
    assert load_config(cfg).proposer.kind == "offline"
    replies = [HTTPFailure(429), proposal_reply("gated-conv", "local mixing with a gate", GATED_CONV),
               insight_reply("a gated convolution")]
    with FakeOpenAIServer(replies) as server:
        api_base = server.api_base
        proc = disco("run", str(cfg), "--db", str(tmp_path / "disco.db"), "--model", "openai/tiny",
                     "--api-base", api_base, "--json", cwd=tmp_path, timeout=240)
        statuses = list(server.statuses)
        sent = list(server.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert statuses == [429, 200, 200]
    assert sent[0]["model"] == "tiny" and "Design principles retrieved" in sent[0]["messages"][0]["content"]
    database = open_database(f"sqlite:///{tmp_path / 'disco.db'}")
    try:
        with database.read_session() as s:
            camp = repo.get_campaign(s, "http")
            assert camp.config["proposer"]["kind"] == "llm"
            assert camp.config["llm"]["analyst"][0]["api_base"] == api_base
            calls = repo.llm_calls(s, "http")
            assert [(c.role, c.error is None) for c in calls] == [
                ("researcher", False), ("researcher", True), ("analyst", True)]
            assert "RateLimit" in calls[0].error and calls[0].tokens_in == 0
            assert all(c.model == "openai/tiny" and c.tokens_in > 0 and c.tokens_out > 0 for c in calls[1:])
            [proposed] = [c for c in repo.candidates(s, "http") if not c.is_seed]
            assert proposed.origin == "llm:openai/tiny" and proposed.status == "evaluated"
            assert proposed.code == GATED_CONV
            assert [i.text for i in repo.insights(s, "http")] == [
                "Change: a gated convolution Effect: measured in the sandbox Lesson: keep it"]
    finally:
        database.close()
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {"evaluated": 2}


def test_missing_credentials_fail_before_the_campaign_starts(tmp_path: Path) -> None:
    assert "OPENAI_API_KEY" not in os.environ  # tests/conftest.py removes every *_API_KEY
    cfg = write_config(tmp_path / "c.toml", "nokey", 2)
    db = tmp_path / "disco.db"
    proc = disco("run", str(cfg), "--db", str(db), "--model", "openai/gpt-4o", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0] and "Traceback" not in proc.stderr
    if db.exists():
        database = open_database(f"sqlite:///{db}")
        with database.read_session() as s:
            assert repo.list_campaigns(s) == []
        database.close()


def test_model_override_switches_every_role_and_the_proposer(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "c.toml", "o", 2))
    new = override_model(cfg, "openai/x", "http://127.0.0.1:9/v1")
    assert new.proposer.kind == "llm"
    for role in ("researcher", "debugger", "analyst", "extractor"):
        [spec] = getattr(new.llm, role)
        assert (spec.model, spec.api_base) == ("openai/x", "http://127.0.0.1:9/v1")


def test_a_call_to_a_real_provider_fails_the_campaign_loudly(tmp_path: Path) -> None:
    """With DISCO_BLOCK_REAL_LLM=1 the guard raises; the loop must not swallow that as one more
    unusable proposal (it would spin 64 times and report a normal stop)."""
    from agents.llm import LiteLLM, RealLLMBlockedError
    from discovery.config import parse_config
    from tests.discovery.toy import InProcessRunner

    cfg = parse_config({
        "name": "guard", "task": {"name": "tests.discovery.toy:ToyTask"}, "proposer": {"kind": "llm"},
        "llm": {"researcher": {"model": "openai/gpt-4o-mini"}}, "budget": {"max_evaluations": 6},
        "runner": {"kind": "inline", "max_in_flight": 1}, "sandbox": {"warm_pool": False},
    })
    database = open_database(f"sqlite:///{tmp_path / 'disco.db'}")
    campaign = build_campaign(cfg, database, runner=InProcessRunner(), llm=LiteLLM())
    try:
        with pytest.raises(RealLLMBlockedError, match="DISCO_BLOCK_REAL_LLM"):
            asyncio.run(campaign.loop.run())
        with database.read_session() as s:
            assert not [e for e in repo.events(s, "guard") if e.kind == "proposer_error"]
            assert repo.llm_calls(s, "guard") == []
    finally:
        campaign.close()
        database.close()
