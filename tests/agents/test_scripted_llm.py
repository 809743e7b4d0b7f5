"""ScriptedLLM: queued replies and exceptions, request history, loud failure when empty."""

from __future__ import annotations

import asyncio

import pytest

from agents.llm import LLM, ChatMessage, LLMCallRecord, LLMRequest, ModelPrice
from agents.scripted import ScriptedLLM, ScriptExhaustedError


def _request(role: str = "researcher", text: str = "hi") -> LLMRequest:
    return LLMRequest(role, f"{role}.j2", "h", "scripted/model", (ChatMessage("user", text),))


def test_replies_in_order_history_and_exceptions() -> None:
    records: list[LLMCallRecord] = []
    llm = ScriptedLLM(["first", RuntimeError("provider down"), "third"], on_call=records.append)
    assert isinstance(llm, LLM)
    assert asyncio.run(llm.complete(_request(text="a"))).text == "first"
    with pytest.raises(RuntimeError, match="provider down"):
        asyncio.run(llm.complete(_request(text="b")))
    assert asyncio.run(llm.complete(_request(text="c"))).text == "third"
    assert [r.messages[0].content for r in llm.history] == ["a", "b", "c"]
    assert [r.ok for r in records] == [True, False, True]
    assert llm.remaining == 0


def test_raises_clearly_when_out_of_replies() -> None:
    llm = ScriptedLLM(["only"])
    asyncio.run(llm.complete(_request()))
    with pytest.raises(ScriptExhaustedError, match=r"no reply left.*role=debugger.*debugger\.j2"):
        asyncio.run(llm.complete(_request("debugger")))
    llm.push("more")
    assert asyncio.run(llm.complete(_request())).text == "more"


def test_direct_mode_prices_by_word_count() -> None:
    llm = ScriptedLLM(["one two three"], prices={"scripted/model": ModelPrice(0.5, 1.0)})
    response = asyncio.run(llm.complete(_request(text="four words in here")))
    assert (response.tokens_in, response.tokens_out) == (4, 3)
    assert response.dollars == pytest.approx(4 * 0.5 + 3 * 1.0) == llm.dollars_spent


def test_cache_requires_litellm_mode() -> None:
    with pytest.raises(ValueError, match="via_litellm"):
        ScriptedLLM([], cache=True)
