"""LiteLLM through litellm's mock path: accounting, cache, retries, fallbacks, guard, credentials."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agents.llm import (
    BLOCK_ENV,
    ChatMessage,
    DirectoryCacheStore,
    Endpoint,
    LiteLLM,
    LLMCallRecord,
    LLMError,
    LLMRequest,
    ModelPrice,
    RealLLMBlockedError,
    TransientLLMError,
    call_scope,
    check_credentials,
    guard_real_call,
    is_loopback,
)
from agents.scripted import ScriptedLLM

PRICED = "openai/archdisco-test-priced"
PRICE = ModelPrice(input_per_token=2e-6, output_per_token=5e-6)


def _request(model: str = PRICED, sample_id: int = 0, text: str = "propose a mixer") -> LLMRequest:
    return LLMRequest(
        role="researcher",
        template_name="researcher.j2",
        template_hash="h" * 64,
        model=model,
        messages=(ChatMessage("user", text),),
        temperature=0.5,
        max_tokens=256,
        sample_id=sample_id,
    )


class _Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def _mock_llm(replies: list, **kwargs) -> tuple[LiteLLM, list[LLMCallRecord], _Sleeps]:
    queue = list(replies)
    records: list[LLMCallRecord] = []
    sleeps = _Sleeps()

    def source(_request: LLMRequest):
        return queue.pop(0)

    llm = LiteLLM(on_call=records.append, sleep=sleeps, mock_source=source, prices={PRICED: PRICE}, **kwargs)
    return llm, records, sleeps


def test_mock_path_accounts_tokens_and_dollars_with_litellm_cost_code() -> None:
    llm, records, _ = _mock_llm(["Name: a\n```python\npass\n```"])
    response = asyncio.run(llm.complete(_request()))
    assert response.text.startswith("Name: a")
    assert response.tokens_in > 0 and response.tokens_out > 0
    expected = response.tokens_in * PRICE.input_per_token + response.tokens_out * PRICE.output_per_token
    assert response.dollars == pytest.approx(expected) and response.dollars > 0
    assert not response.cache_hit and response.model == PRICED
    [record] = records
    assert record.ok and record.attempt == 1 and record.dollars == response.dollars
    assert record.template_name == "researcher.j2" and record.role == "researcher"
    assert record.messages_json() == [{"role": "user", "content": "propose a mixer"}]
    assert llm.dollars_spent == pytest.approx(expected)


def test_unknown_model_price_is_zero_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    llm, records, _ = _mock_llm(["one", "two"], cache=False)
    model = "openai/archdisco-never-priced"
    with caplog.at_level(logging.WARNING, logger="agents.llm"):
        first = asyncio.run(llm.complete(_request(model)))
        second = asyncio.run(llm.complete(_request(model, sample_id=1)))
    assert first.dollars == 0.0 and second.dollars == 0.0 and first.tokens_out > 0
    warnings = [r for r in caplog.records if "no price known" in r.getMessage()]
    assert len(warnings) == 1 and model in warnings[0].getMessage()


def test_cache_hits_same_request_and_sample_and_misses_other_sample() -> None:
    llm, records, _ = _mock_llm(["first reply", "second reply"])
    first = asyncio.run(llm.complete(_request(sample_id=7)))
    again = asyncio.run(llm.complete(_request(sample_id=7)))
    other = asyncio.run(llm.complete(_request(sample_id=8)))
    assert again.text == first.text == "first reply" and again.cache_hit and again.dollars == 0.0
    assert other.text == "second reply" and not other.cache_hit
    assert [r.cache_hit for r in records] == [False, True, False]
    assert records[1].attempt == 0 and records[1].response == "first reply"


def test_cache_persists_through_an_injected_store(tmp_path) -> None:
    store = DirectoryCacheStore(tmp_path / "cache")
    llm, _, _ = _mock_llm(["stored reply"], store=store)
    asyncio.run(llm.complete(_request(sample_id=1)))
    fresh, records, _ = _mock_llm([], store=store)  # no replies: a miss would fail
    response = asyncio.run(fresh.complete(_request(sample_id=1)))
    assert response.cache_hit and response.text == "stored reply" and records[0].cache_hit


def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    llm, records, sleeps = _mock_llm(
        [TransientLLMError("429 slow down"), TransientLLMError("503"), "ok"], backoff_base_s=0.5, max_retries=3
    )
    response = asyncio.run(llm.complete(_request()))
    assert response.text == "ok"
    assert sleeps.calls == [0.5, 1.0]
    assert [(r.attempt, r.ok) for r in records] == [(1, False), (2, False), (3, True)]
    assert "429 slow down" in (records[0].error or "")


def test_non_retryable_error_falls_back_to_next_model() -> None:
    llm, records, sleeps = _mock_llm([ValueError("bad request"), "from fallback"], fallbacks=["openai/fallback-model"])
    response = asyncio.run(llm.complete(_request()))
    assert response.text == "from fallback" and response.model == "openai/fallback-model"
    assert sleeps.calls == []  # not retryable: no backoff on the primary
    assert [r.model for r in records] == [PRICED, "openai/fallback-model"]


def test_all_attempts_failing_raise_llm_error_after_retries_and_fallbacks() -> None:
    llm, records, _ = _mock_llm([TransientLLMError("x")] * 4, max_retries=1, fallbacks=[Endpoint("openai/fb2")])
    with pytest.raises(LLMError, match="after 4 attempts") as info:
        asyncio.run(llm.complete(_request()))
    assert info.value.attempts == 4 and len(records) == 4 and not any(r.ok for r in records)


def test_before_call_hook_can_stop_a_call_and_is_skipped_on_cache_hits() -> None:
    seen: list[LLMRequest] = []

    class BudgetReached(Exception):
        pass

    def before(request: LLMRequest) -> None:
        seen.append(request)
        if len(seen) > 1:
            raise BudgetReached("max_llm_dollars reached")

    llm, records, _ = _mock_llm(["a", "b"], before_call=before)
    asyncio.run(llm.complete(_request(sample_id=1)))
    asyncio.run(llm.complete(_request(sample_id=1)))  # cache hit: no hook
    with pytest.raises(BudgetReached):
        asyncio.run(llm.complete(_request(sample_id=2)))
    assert len(seen) == 2 and len(records) == 2


def test_records_carry_the_call_scope_and_candidate() -> None:
    llm, records, _ = _mock_llm(["a", "b"])

    async def main() -> None:
        with call_scope("proposal:1"):
            await llm.complete(_request(sample_id=1))
        await llm.complete(LLMRequest("debugger", "debugger.j2", "h", PRICED, (ChatMessage("user", "x"),), candidate_id=5))

    asyncio.run(main())
    assert [(r.scope, r.candidate_id) for r in records] == [("proposal:1", None), (None, 5)]


def test_scripted_litellm_mode_runs_litellm_and_fails_loudly_when_empty() -> None:
    records: list[LLMCallRecord] = []
    llm = ScriptedLLM(["only one"], via_litellm=True, prices={PRICED: PRICE}, on_call=records.append)
    response = asyncio.run(llm.complete(_request()))
    assert response.dollars > 0 and response.tokens_in > 0 and records[0].dollars == response.dollars
    from agents.scripted import ScriptExhaustedError

    with pytest.raises(ScriptExhaustedError, match="no reply left"):
        asyncio.run(llm.complete(_request(sample_id=1)))
    assert len(llm.history) == 2


def test_guard_blocks_real_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "1")
    records: list[LLMCallRecord] = []
    llm = LiteLLM(on_call=records.append)
    with pytest.raises(RealLLMBlockedError, match="openai/gpt-4o"):
        asyncio.run(llm.complete(_request("openai/gpt-4o")))
    assert records == []
    # a loopback primary does not make a real fallback acceptable
    guarded = LiteLLM(fallbacks=["anthropic/claude-3-5-sonnet-20240620"])
    loopback = LLMRequest("researcher", "t", "h", "openai/x", (ChatMessage("user", "x"),), api_base="http://127.0.0.1:9/v1")
    with pytest.raises(RealLLMBlockedError, match="anthropic"):
        asyncio.run(guarded.complete(loopback))
    guard_real_call(Endpoint("openai/x", "http://localhost:8000/v1"), mocked=False)  # allowed
    guard_real_call(Endpoint("openai/gpt-4o"), mocked=True)  # litellm mock path: allowed
    monkeypatch.setenv(BLOCK_ENV, "0")
    guard_real_call(Endpoint("openai/gpt-4o"), mocked=False)  # guard off: allowed


def test_loopback_detection() -> None:
    assert is_loopback("http://127.0.0.1:8000/v1") and is_loopback("http://localhost/v1")
    assert is_loopback("http://[::1]:80/v1")
    assert not is_loopback("http://127.0.0.1.evil.example/v1") and not is_loopback("https://api.openai.com/v1")
    assert not is_loopback(None)


def test_check_credentials_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    message = check_credentials("openai/gpt-4o")
    assert message is not None and "OPENAI_API_KEY" in message and "\n" not in message
    assert "ANTHROPIC_API_KEY" in (check_credentials("anthropic/claude-3-5-sonnet-20240620") or "")
    assert check_credentials("openai/tiny", "http://127.0.0.1:8000/v1") is None
    assert check_credentials("ollama/llama3") is None
    assert "not a model string" in (check_credentials("no-such-provider-model-xyz") or "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    assert check_credentials("openai/gpt-4o") is None
