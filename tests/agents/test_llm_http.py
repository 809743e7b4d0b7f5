"""LiteLLM over real HTTP against the loopback fake OpenAI server (no network beyond 127.0.0.1)."""

from __future__ import annotations

import asyncio

import pytest

from agents.llm import ChatMessage, LiteLLM, LLMCallRecord, LLMError, LLMRequest, ModelPrice
from tests.fake_openai_server import Delayed, FakeOpenAIServer, HTTPFailure


def _request(api_base: str, model: str = "openai/tiny", sample_id: int = 0) -> LLMRequest:
    return LLMRequest(
        role="researcher",
        template_name="researcher.j2",
        template_hash="0" * 64,
        model=model,
        messages=(ChatMessage("user", "design a causal token mixer please"),),
        temperature=0.2,
        max_tokens=64,
        api_base=api_base,
        sample_id=sample_id,
    )


async def _no_sleep(_seconds: float) -> None:
    return None


def test_http_429_is_retried_logged_and_tokens_accounted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a loopback server needs no key
    records: list[LLMCallRecord] = []
    price = ModelPrice(1e-6, 3e-6)
    llm = LiteLLM(on_call=records.append, sleep=_no_sleep, prices={"openai/tiny-priced": price})
    reply = "Name: tiny\nMotivation: small\n```python\nclass Mixer: pass\n```"
    with FakeOpenAIServer([HTTPFailure(429), reply]) as server:
        response = asyncio.run(llm.complete(_request(server.api_base, "openai/tiny-priced")))
        assert server.statuses == [429, 200]
        assert len(server.requests) == 2
        sent = server.requests[1]
        assert sent["model"] == "tiny-priced" and sent["messages"][0]["content"].startswith("design a causal")
        assert sent["max_tokens"] == 64 and sent["temperature"] == 0.2
    assert response.text == reply
    # the fake server counts whitespace-separated words as tokens
    assert response.tokens_in == 6 and response.tokens_out == len(reply.split())
    assert response.dollars == pytest.approx(6 * 1e-6 + len(reply.split()) * 3e-6)
    assert [(r.attempt, r.ok) for r in records] == [(1, False), (2, True)]
    assert "RateLimit" in (records[0].error or "") and records[0].tokens_in == 0
    assert records[1].tokens_in == 6 and records[1].dollars == response.dollars


def test_http_unknown_model_costs_zero_and_server_errors_exhaust_retries() -> None:
    llm = LiteLLM(sleep=_no_sleep, max_retries=1)
    with FakeOpenAIServer(["hello"]) as server:
        ok = asyncio.run(llm.complete(_request(server.api_base)))
        assert ok.text == "hello" and ok.dollars == 0.0 and ok.tokens_out == 1
        with pytest.raises(LLMError, match="after 2 attempts"):
            asyncio.run(llm.complete(_request(server.api_base, sample_id=1)))  # queue empty: HTTP 500 twice
        assert server.statuses == [200, 500, 500]


def test_http_timeout_is_retried() -> None:
    records: list[LLMCallRecord] = []
    llm = LiteLLM(on_call=records.append, sleep=_no_sleep, timeout_s=0.5, max_retries=1)
    with FakeOpenAIServer([Delayed("late", 2.0), "on time"]) as server:
        response = asyncio.run(llm.complete(_request(server.api_base)))
    assert response.text == "on time"
    assert [r.ok for r in records] == [False, True]
    assert "timeout" in (records[0].error or "").lower()


def test_http_concurrency_limit_is_respected() -> None:
    llm = LiteLLM(sleep=_no_sleep, max_concurrency=2)

    async def main(api_base: str) -> list[str]:
        calls = [llm.complete(_request(api_base, sample_id=i)) for i in range(5)]
        return [r.text for r in await asyncio.gather(*calls)]

    with FakeOpenAIServer([Delayed(f"r{i}", 0.15) for i in range(5)]) as server:
        texts = asyncio.run(main(server.api_base))
        assert server.max_in_flight == 2
    assert sorted(texts) == [f"r{i}" for i in range(5)]
