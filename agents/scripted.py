"""``ScriptedLLM``: an ``LLM`` that answers from a queue, for tests and offline demos.

Replies are strings (answered) or exceptions (raised). Every request is kept in
``history``; a request with no reply left raises ``ScriptExhaustedError`` -- a test that
asks for more replies than it scripted fails loudly instead of getting an empty answer.

Two modes:
- direct (default): the reply is returned as is; tokens are counted as whitespace-separated
  words and dollars come from ``prices`` (zero for unpriced models).
- ``via_litellm=True``: each reply goes through ``litellm.acompletion(mock_response=...)``
  inside ``agents.llm.LiteLLM``, so litellm's own response objects, usage and cost code
  run, together with the retry / record / cache machinery; ``prices`` are registered with
  litellm for the named (fake) models. Queued exceptions are raised as transport errors,
  so ``agents.llm.TransientLLMError`` exercises the retry path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping

from agents.llm import (
    CallSink,
    LiteLLM,
    LLMCallRecord,
    LLMFatalError,
    LLMRequest,
    LLMResponse,
    ModelPrice,
    current_scope,
)


class ScriptExhaustedError(LLMFatalError):
    """A ScriptedLLM was asked for more replies than it was given."""


async def _no_sleep(_seconds: float) -> None:
    return None


def _count_tokens(text: str) -> int:
    return len(text.split())


class ScriptedLLM:
    """Queued replies; implements the ``LLM`` protocol."""

    def __init__(
        self,
        replies: Iterable[str | BaseException] = (),
        *,
        via_litellm: bool = False,
        prices: Mapping[str, ModelPrice] | None = None,
        on_call: CallSink | None = None,
        cache: bool = False,
        max_retries: int = 2,
    ) -> None:
        self._queue: deque[str | BaseException] = deque(replies)
        self.history: list[LLMRequest] = []
        self.prices = dict(prices or {})
        self.on_call = on_call
        self.via_litellm = via_litellm
        self._inner: LiteLLM | None = None
        self._direct_dollars = 0.0
        if via_litellm:
            self._inner = LiteLLM(
                on_call=on_call,
                prices=self.prices,
                cache=cache,
                max_retries=max_retries,
                sleep=_no_sleep,
                mock_source=self._pop,
            )
        elif cache:
            raise ValueError("the response cache needs via_litellm=True")

    @property
    def remaining(self) -> int:
        return len(self._queue)

    @property
    def dollars_spent(self) -> float:
        return self._inner.dollars_spent if self._inner else self._direct_dollars

    def push(self, *replies: str | BaseException) -> None:
        self._queue.extend(replies)

    def _pop(self, request: LLMRequest) -> str | BaseException:
        if not self._queue:
            raise ScriptExhaustedError(
                f"ScriptedLLM has no reply left for request #{len(self.history)} "
                f"(role={request.role}, template={request.template_name}, model={request.model}); "
                "script more replies"
            )
        return self._queue.popleft()

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.history.append(request)
        if self._inner is not None:
            return await self._inner.complete(request)
        reply = self._pop(request)
        if isinstance(reply, BaseException):
            self._record(request, None, 0, 0, 0.0, f"{type(reply).__name__}: {reply}")
            raise reply
        tokens_in = sum(_count_tokens(m.content) for m in request.messages)
        tokens_out = _count_tokens(reply)
        price = self.prices.get(request.model)
        dollars = 0.0 if price is None else tokens_in * price.input_per_token + tokens_out * price.output_per_token
        self._direct_dollars += dollars
        self._record(request, reply, tokens_in, tokens_out, dollars, None)
        return LLMResponse(reply, tokens_in, tokens_out, dollars, 0.0, False, request.model)

    def _record(
        self, request: LLMRequest, text: str | None, tokens_in: int, tokens_out: int, dollars: float, error: str | None
    ) -> None:
        if self.on_call is None:
            return
        self.on_call(
            LLMCallRecord(
                role=request.role,
                template_name=request.template_name,
                template_hash=request.template_hash,
                model=request.model,
                sample_id=request.sample_id,
                messages=request.messages,
                response=text,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                dollars=dollars,
                latency_s=0.0,
                cache_hit=False,
                error=error,
                attempt=1,
                candidate_id=request.candidate_id,
                scope=current_scope(),
                created_at=time.time(),
            )
        )
