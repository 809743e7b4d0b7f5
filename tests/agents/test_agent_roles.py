"""Researcher, Debugger, Analyst and KnowledgeExtractor driven by ScriptedLLM."""

from __future__ import annotations

import asyncio

import pytest

from agents.analyst import Analyst
from agents.bandit import FixedModel, ModelBandit, ModelSpec
from agents.debugger import Debugger
from agents.extractor import KnowledgeExtractor, split_text
from agents.llm import LLMCallRecord, ModelPrice
from agents.prompts import template_hash
from agents.researcher import Researcher
from agents.scripted import ScriptedLLM
from agents.types import FailureInfo, ParentInfo, Proposal, ProposalContext, ProposalError, Proposer

MODEL = ModelSpec("openai/scripted-researcher", temperature=0.3, max_tokens=2048)
PARENT_CODE = "import torch\n\n\nclass Mixer(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
PARENT = ParentInfo(4, "identity", PARENT_CODE, None, 0.4, {"mqar_acc": 0.1}, "baseline")
CTX = ProposalContext(task="token-mixer", interface="class Mixer(nn.Module): ...", parents=(PARENT,), seed=42)
GOOD = "Name: scaled\nMotivation: scale the output.\n```python\nclass Mixer:\n    pass\n```"


def test_researcher_is_a_proposer_and_builds_the_proposal() -> None:
    llm = ScriptedLLM([GOOD])
    researcher = Researcher(llm, FixedModel(MODEL))
    assert isinstance(researcher, Proposer)
    proposal = asyncio.run(researcher.propose(CTX))
    assert proposal == Proposal(
        name="scaled", motivation="scale the output.", code="class Mixer:\n    pass\n",
        parent_ids=(4,), genome=None, origin="llm:openai/scripted-researcher",
    )
    [request] = llm.history
    assert request.role == "researcher" and request.template_name == "researcher.j2"
    assert request.template_hash == template_hash("researcher.j2")
    assert request.sample_id == 42 and request.model == MODEL.model
    assert request.temperature == 0.3 and request.max_tokens == 2048
    assert PARENT_CODE.strip() in request.messages[0].content


def test_researcher_retries_an_unusable_reply_with_the_error_shown() -> None:
    llm = ScriptedLLM(["I think gating would help.", GOOD])
    proposal = asyncio.run(Researcher(llm, FixedModel(MODEL), max_attempts=2).propose(CTX))
    assert proposal.name == "scaled"
    second = llm.history[1]
    assert [m.role for m in second.messages] == ["user", "assistant", "user"]
    assert "no ```python code block" in second.messages[2].content
    assert second.template_name == "researcher.j2+format_error.j2"


def test_researcher_gives_up_with_the_last_reply() -> None:
    llm = ScriptedLLM(["no code", "still no code"])
    with pytest.raises(ProposalError, match="after 2 attempt") as info:
        asyncio.run(Researcher(llm, FixedModel(MODEL), max_attempts=2).propose(CTX))
    assert info.value.reply == "still no code"
    assert llm.remaining == 0


def test_researcher_applies_search_replace_edits_to_the_parent() -> None:
    reply = "Name: halved\nMotivation: damp.\n<<<<<<< SEARCH\n        return x\n=======\n        return 0.5 * x\n>>>>>>> REPLACE\n"
    proposal = asyncio.run(Researcher(ScriptedLLM([reply]), FixedModel(MODEL)).propose(CTX))
    assert proposal.code == PARENT_CODE.replace("return x", "return 0.5 * x")


def test_researcher_through_litellm_logs_priced_calls_and_uses_the_bandit() -> None:
    records: list[LLMCallRecord] = []
    price = {"openai/cheap": ModelPrice(1e-6, 1e-6), "openai/dear": ModelPrice(1e-4, 1e-4)}
    llm = ScriptedLLM([GOOD, GOOD], via_litellm=True, prices=price, on_call=records.append)
    bandit = ModelBandit([ModelSpec("openai/cheap"), ModelSpec("openai/dear")], strategy="ucb", seed=0)
    researcher = Researcher(llm, bandit)
    first = asyncio.run(researcher.propose(CTX))
    second = asyncio.run(researcher.propose(ProposalContext(task="token-mixer", interface="i", seed=1)))
    assert (first.origin, second.origin) == ("llm:openai/cheap", "llm:openai/dear")
    assert [r.model for r in records] == ["openai/cheap", "openai/dear"]
    assert records[1].dollars > records[0].dollars > 0


FAILED = FailureInfo(
    candidate_id=17, name="leaky", stage="causality", failure_kind="causality",
    message="output at t=3 depends on x[:, 4:]", log_tail="AssertionError: leak at t=3", code=PARENT_CODE,
)


def test_debugger_returns_a_debug_proposal_linked_to_the_failure() -> None:
    reply = "Name: leaky\nMotivation: mask the future.\n```python\nclass Mixer:\n    causal = True\n```"
    llm = ScriptedLLM([reply])
    fixed = asyncio.run(Debugger(llm, FixedModel(MODEL)).fix(FAILED, CTX, round=1))
    assert fixed.origin == "debug" and fixed.parent_ids == (17,)
    assert fixed.name == "leaky-fix1"  # a reused name gets a round suffix
    assert fixed.code == "class Mixer:\n    causal = True\n"
    [request] = llm.history
    assert request.role == "debugger" and request.candidate_id == 17 and request.template_name == "debugger.j2"
    prompt = request.messages[0].content
    assert "AssertionError: leak at t=3" in prompt and "Failure kind: causality" in prompt and "round 1 of at most 2" in prompt


def test_debugger_accepts_edits_against_the_failing_code_and_refuses_empty_code() -> None:
    reply = "<<<<<<< SEARCH\n        return x\n=======\n        return x.cumsum(1)\n>>>>>>> REPLACE"
    fixed = asyncio.run(Debugger(ScriptedLLM([reply]), FixedModel(MODEL)).fix(FAILED, CTX, round=2))
    assert "x.cumsum(1)" in fixed.code and fixed.name == "leaky-fix2"
    assert fixed.motivation.startswith("repair of leaky")
    with pytest.raises(ProposalError, match="no code"):
        asyncio.run(Debugger(ScriptedLLM([]), FixedModel(MODEL)).fix(FailureInfo(1, "x", "s", "k", "m"), CTX))


def test_analyst_turns_json_into_an_insight() -> None:
    child = ParentInfo(20, "halved", PARENT_CODE.replace("return x", "return 0.5 * x"), None, 0.45, {}, "damp")
    llm = ScriptedLLM([
        "The result: not json at all",
        '```json\n{"change": "Output halved.", "effect": "mqar_acc 0.1 -> 0.2.", "lesson": "Damping helps."}\n```',
    ])
    insight = asyncio.run(Analyst(llm, FixedModel(MODEL), task="token-mixer").analyse(child, PARENT, {"mqar_acc": 0.2}))
    assert insight == "Change: Output halved. Effect: mqar_acc 0.1 -> 0.2. Lesson: Damping helps."
    first = llm.history[0]
    assert first.role == "analyst" and first.candidate_id == 20 and "+        return 0.5 * x" in first.messages[0].content


def test_extractor_returns_principles_citing_the_paper() -> None:
    reply = (
        '[{"title": "Delta rule", "trigger": "state saturates", "principle": "write the error", "hint": "beta gate"},'
        ' {"trigger": "slow training", "principle": "chunk the sequence into blocks for matmuls"}]'
    )
    wrapped = '{"principles": [{"trigger": "t", "principle": "write the error"}, {"trigger": "x", "principle": "new one"}]}'
    llm = ScriptedLLM([reply, wrapped])
    extractor = KnowledgeExtractor(llm, FixedModel(MODEL), task="token-mixer", max_chars=60, max_chunks=2)
    text = "Paragraph one about delta rules and such things.\n\nParagraph two about chunking of long sequences."
    principles = asyncio.run(extractor.extract("DeltaNet (2024)", text))
    assert [p.principle for p in principles] == ["write the error", "chunk the sequence into blocks for matmuls", "new one"]
    assert {p.source for p in principles} == {"DeltaNet (2024)"}
    assert principles[0].title == "Delta rule" and principles[1].title.startswith("chunk the sequence")
    assert len(llm.history) == 2 and all(r.role == "extractor" for r in llm.history)


def test_split_text_respects_limits() -> None:
    chunks = split_text("a" * 25 + "\n\n" + "b" * 10 + "\n\n" + "c" * 10, max_chars=20, max_chunks=10)
    assert all(len(c) <= 20 for c in chunks) and "".join(chunks).replace("\n", "") == "a" * 25 + "b" * 10 + "c" * 10
    assert len(split_text("x\n\n" * 100, max_chars=3, max_chunks=4)) == 4
