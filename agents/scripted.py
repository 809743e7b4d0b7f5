"""``ScriptedLLM``: an ``LLM`` that answers from a queue, for tests and offline demos.

Replies are strings (answered) or exceptions (raised). Every request is kept in
``history``; a request with no reply left raises ``ScriptExhaustedError`` -- a test that
asks for more replies than it scripted fails loudly instead of getting an empty answer.
Replies are one queue, or one queue per agent role (a mapping ``{"researcher": [...],
"debugger": [...]}``): a campaign runs its agents concurrently, so only per-role queues
script it deterministically.

``on_call`` and ``before_call`` (the call sink and the pre-call hook, e.g. a budget gate) may
be set after construction, as the campaign wiring does with an injected LLM.

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
from collections.abc import Callable, Iterable, Mapping

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


Reply = str | BaseException
ANY_ROLE = "*"  # the key of the single queue when replies are not scripted per role


class ScriptedLLM:
    """Queued replies; implements the ``LLM`` protocol."""

    def __init__(
        self,
        replies: Iterable[Reply] | Mapping[str, Iterable[Reply]] = (),
        *,
        via_litellm: bool = False,
        prices: Mapping[str, ModelPrice] | None = None,
        on_call: CallSink | None = None,
        cache: bool = False,
        max_retries: int = 2,
    ) -> None:
        self._by_role = isinstance(replies, Mapping)
        self._queues: dict[str, deque[Reply]] = (
            {role: deque(items) for role, items in replies.items()} if isinstance(replies, Mapping)
            else {ANY_ROLE: deque(replies)}
        )
        self.history: list[LLMRequest] = []
        self.prices = dict(prices or {})
        self._on_call = on_call
        self._before_call: Callable[[LLMRequest], None] | None = None
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

    # The sink and the pre-call hook live on the inner LiteLLM in via_litellm mode, so that
    # setting them after construction reaches the code that makes the calls.
    @property
    def on_call(self) -> CallSink | None:
        return self._inner.on_call if self._inner is not None else self._on_call

    @on_call.setter
    def on_call(self, sink: CallSink | None) -> None:
        self._on_call = sink
        if self._inner is not None:
            self._inner.on_call = sink

    @property
    def before_call(self) -> Callable[[LLMRequest], None] | None:
        return self._inner.before_call if self._inner is not None else self._before_call

    @before_call.setter
    def before_call(self, hook: Callable[[LLMRequest], None] | None) -> None:
        self._before_call = hook
        if self._inner is not None:
            self._inner.before_call = hook

    @property
    def remaining(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def dollars_spent(self) -> float:
        return self._inner.dollars_spent if self._inner else self._direct_dollars

    def push(self, *replies: Reply, role: str | None = None) -> None:
        if self._by_role != (role is not None):
            raise ValueError("push(role=...) exactly when the replies are scripted per role")
        self._queues.setdefault(role or ANY_ROLE, deque()).extend(replies)

    def _pop(self, request: LLMRequest) -> Reply:
        queue = self._queues.get(request.role if self._by_role else ANY_ROLE)
        if not queue:
            raise ScriptExhaustedError(
                f"ScriptedLLM has no reply left for request #{len(self.history)} "
                f"(role={request.role}, template={request.template_name}, model={request.model}); "
                "script more replies"
            )
        return queue.popleft()

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.history.append(request)
        if self._inner is not None:
            return await self._inner.complete(request)
        if self._before_call is not None:
            self._before_call(request)
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
        if self._on_call is None:
            return
        self._on_call(
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
