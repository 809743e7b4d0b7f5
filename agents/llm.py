"""The LLM boundary: typed requests and responses, and the litellm-backed implementation.

This is the only module of ArchDisco that imports litellm (lazily, on first use, so that
importing agents stays cheap; ``LITELLM_LOCAL_MODEL_COST_MAP`` is set before the import so
litellm never fetches its price map from the network). Agents depend on the ``LLM``
protocol only; tests inject ``agents.scripted.ScriptedLLM``.

``LiteLLM.complete`` adds, around ``litellm.acompletion``: a response cache keyed by the
full request including ``sample_id`` (repeated samples stay distinct), retries with
exponential backoff on rate limits / timeouts / 5xx, fallback models, a per-call timeout, a
concurrency limit, dollar accounting through litellm's cost functions (unknown models are
registered at zero cost with one warning), an optional pre-call hook (budget checks), and a
call sink: every attempt (success, cache hit, error) is reported as an ``LLMCallRecord`` to
``on_call`` so the campaign loop can write ``llm_call`` rows; agents never touch the DB.

Safety guard: with ``DISCO_BLOCK_REAL_LLM=1`` (the test suite sets it) any call that would
leave the machine -- anything but litellm's ``mock_response`` path or an ``api_base`` on
loopback -- raises ``RealLLMBlockedError`` before a byte is sent.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import contextlib
import contextvars
import hashlib
import ipaddress
import json
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

log = logging.getLogger(__name__)

BLOCK_ENV = "DISCO_BLOCK_REAL_LLM"
MESSAGE_ROLES = frozenset({"system", "user", "assistant"})
# Providers that speak the OpenAI wire format: with an explicit api_base they reach a
# user-run server (vLLM, llama.cpp, LM Studio, ...) that usually accepts any key.
OPENAI_COMPATIBLE = frozenset({"openai", "hosted_vllm", "openai_like", "custom_openai", "lm_studio"})
_PLACEHOLDER_KEY = "sk-archdisco-no-key"

# --------------------------------------------------------------------------------------
# litellm, imported once on demand
# --------------------------------------------------------------------------------------
_litellm_module: ModuleType | None = None
_litellm_lock = threading.Lock()


def _litellm() -> ModuleType:
    global _litellm_module
    if _litellm_module is None:
        with _litellm_lock:
            if _litellm_module is None:
                import litellm

                litellm.suppress_debug_info = True  # no "Provider List" banners on errors
                logging.getLogger("LiteLLM").setLevel(logging.ERROR)
                _litellm_module = litellm
    return _litellm_module


# --------------------------------------------------------------------------------------
# Typed data
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant
    content: str

    def __post_init__(self) -> None:
        if self.role not in MESSAGE_ROLES:
            raise ValueError(f"message role {self.role!r} is not one of {sorted(MESSAGE_ROLES)}")

    def as_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion request, with the provenance stored on its ``llm_call`` rows."""

    role: str  # researcher | debugger | analyst | summarizer | extractor
    template_name: str
    template_hash: str
    model: str  # any litellm model string, e.g. "openai/gpt-4o", "ollama/llama3"
    messages: tuple[ChatMessage, ...]
    temperature: float = 0.7
    max_tokens: int | None = None
    api_base: str | None = None
    sample_id: int = 0  # distinguishes repeated samples of the same prompt in the cache
    timeout: float | None = None  # seconds per attempt; None -> the LLM's default
    candidate_id: int | None = None  # the candidate this call is about, when known

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        if not self.messages:
            raise ValueError("LLMRequest.messages is empty")
        if not self.model:
            raise ValueError("LLMRequest.model is empty")

    def messages_json(self) -> list[dict[str, str]]:
        return [m.as_json() for m in self.messages]

    def cache_key(self) -> str:
        """Hash of everything that determines the reply (all fields but timeout/candidate)."""
        payload = {
            "model": self.model,
            "api_base": self.api_base,
            "messages": self.messages_json(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "sample_id": self.sample_id,
            "role": self.role,
            "template": [self.template_name, self.template_hash],
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class LLMResponse:
    text: str
    tokens_in: int
    tokens_out: int
    dollars: float  # spent by this call (0.0 on a cache hit)
    latency_s: float
    cache_hit: bool
    model: str  # the model that answered (a fallback when the primary failed)


@dataclass(frozen=True)
class LLMCallRecord:
    """One attempt, as the campaign loop stores it in ``llm_call`` (same field names)."""

    role: str
    template_name: str
    template_hash: str
    model: str
    sample_id: int
    messages: tuple[ChatMessage, ...]
    response: str | None
    tokens_in: int
    tokens_out: int
    dollars: float
    latency_s: float
    cache_hit: bool
    error: str | None
    attempt: int  # 1-based attempt number within one ``complete`` call (0 for cache hits)
    candidate_id: int | None = None
    scope: str | None = None  # the ``call_scope`` label active when the call was made
    created_at: float = 0.0  # unix time

    @property
    def ok(self) -> bool:
        return self.error is None

    def messages_json(self) -> list[dict[str, str]]:
        return [m.as_json() for m in self.messages]


@dataclass(frozen=True)
class Endpoint:
    """A model string plus the server to reach it (None: the provider's default)."""

    model: str
    api_base: str | None = None


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per token, registered with litellm for models it has no price for."""

    input_per_token: float
    output_per_token: float


@dataclass(frozen=True)
class CachedReply:
    text: str
    model: str
    tokens_in: int
    tokens_out: int
    dollars: float  # what the original call cost


@runtime_checkable
class LLM(Protocol):
    async def complete(self, request: LLMRequest) -> LLMResponse: ...


class CacheStore(Protocol):
    """Persistence for the response cache (the in-memory layer sits in front of it)."""

    def get(self, key: str) -> CachedReply | None: ...

    def put(self, key: str, reply: CachedReply) -> None: ...


CallSink = Callable[[LLMCallRecord], None]


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
class LLMError(RuntimeError):
    """Every attempt of a call failed (after retries and fallbacks)."""

    def __init__(self, message: str, request: LLMRequest, attempts: int) -> None:
        super().__init__(message)
        self.request = request
        self.attempts = attempts


class TransientLLMError(Exception):
    """A retryable failure raised by non-litellm transports (scripted tests)."""


class LLMFatalError(RuntimeError):
    """A setup bug, never retried nor folded into ``LLMError`` (it must surface loudly)."""


class RealLLMBlockedError(LLMFatalError):
    """A call would reach a real provider while DISCO_BLOCK_REAL_LLM=1."""


# --------------------------------------------------------------------------------------
# Scopes: attribute calls to the work that made them
# --------------------------------------------------------------------------------------
_SCOPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("archdisco_llm_scope", default=None)


def current_scope() -> str | None:
    return _SCOPE.get()


@contextlib.contextmanager
def call_scope(label: str) -> Iterator[None]:
    """Label every call made inside this block (and tasks created in it) with ``label``.

    The campaign loop wraps e.g. one proposal in ``call_scope("proposal:17")`` and finds
    the label in ``LLMCallRecord.scope`` to link the calls to the candidate made from them.
    """
    token = _SCOPE.set(label)
    try:
        yield
    finally:
        _SCOPE.reset(token)


# --------------------------------------------------------------------------------------
# Guard and credentials
# --------------------------------------------------------------------------------------
def is_loopback(api_base: str | None) -> bool:
    if not api_base:
        return False
    host = (urlparse(api_base if "//" in api_base else f"//{api_base}").hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name such as "127.0.0.1.example.com" is not loopback
        return False


def real_calls_blocked() -> bool:
    return os.environ.get(BLOCK_ENV, "").strip().lower() not in {"", "0", "false", "no"}


def guard_real_call(endpoint: Endpoint, *, mocked: bool) -> None:
    """Raise if this call would reach a real provider while the test guard is on."""
    if mocked or not real_calls_blocked() or is_loopback(endpoint.api_base):
        return
    raise RealLLMBlockedError(
        f"{BLOCK_ENV}=1 forbids real LLM calls, but a call to model {endpoint.model!r} "
        f"(api_base={endpoint.api_base!r}) was about to leave this machine; use ScriptedLLM, "
        "litellm's mock path, or a server on 127.0.0.1"
    )


def _missing_keys(model: str, api_base: str | None) -> list[str]:
    lit = _litellm()
    _, provider, _, _ = lit.get_llm_provider(model, api_base=api_base)
    report = lit.validate_environment(model=model, api_base=api_base)
    missing = [str(k) for k in report.get("missing_keys", [])]
    if api_base or provider in {"ollama", "ollama_chat"}:
        # A base URL is not a credential: the given api_base (or ollama's localhost default) covers it.
        missing = [k for k in missing if not (k.endswith("_API_BASE") or k.endswith("_BASE_URL"))]
    if api_base and provider in OPENAI_COMPATIBLE:
        missing = []  # a user-run OpenAI-compatible server; a placeholder key is sent
    return missing


def check_credentials(model: str, api_base: str | None = None) -> str | None:
    """None when ``model`` can be called, else one line saying what to set."""
    try:
        missing = _missing_keys(model, api_base)
    except Exception as exc:  # litellm raises for model strings without a known provider
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"model {model!r} is not a model string litellm understands ({first[:160]}); "
            "use provider/name, e.g. openai/gpt-4o, anthropic/claude-3-5-sonnet-20240620, ollama/llama3"
        )
    if is_loopback(api_base) or not missing:
        return None
    names = " and ".join(missing) if len(missing) <= 2 else ", ".join(missing)
    hint = " (or pass --api-base URL to use a local OpenAI-compatible server)" if "OPENAI_API_KEY" in missing else ""
    return f"model {model!r} has no credentials: set {names} in the environment{hint}"


# --------------------------------------------------------------------------------------
# Prices
# --------------------------------------------------------------------------------------
_unpriced_warned: set[str] = set()


def register_prices(prices: Mapping[str, ModelPrice]) -> None:
    """Tell litellm what these models cost (local fine-tunes, scripted test models)."""
    lit = _litellm()
    entries: dict[str, dict[str, Any]] = {}
    for model, price in prices.items():
        try:
            _, provider, _, _ = lit.get_llm_provider(model)
        except Exception:
            provider = "openai"
        entries[model] = {
            "input_cost_per_token": float(price.input_per_token),
            "output_cost_per_token": float(price.output_per_token),
            "litellm_provider": provider,
            "mode": "chat",
        }
    lit.register_model(entries)


def _dollars(response: Any, model: str) -> float:
    lit = _litellm()
    try:
        return float(lit.completion_cost(completion_response=response, model=model) or 0.0)
    except Exception as exc:
        if model not in _unpriced_warned:
            _unpriced_warned.add(model)
            log.warning("no price known for model %r (%s); counting it as $0 per token", model, type(exc).__name__)
            with contextlib.suppress(Exception):
                register_prices({model: ModelPrice(0.0, 0.0)})
        return 0.0


# --------------------------------------------------------------------------------------
# Cache stores
# --------------------------------------------------------------------------------------
class DirectoryCacheStore:
    """One JSON file per cache key under ``root`` (written atomically)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedReply | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return CachedReply(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def put(self, key: str, reply: CachedReply) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(reply.__dict__, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# The litellm implementation
# --------------------------------------------------------------------------------------
MockSource = Callable[[LLMRequest], "str | BaseException"]


def _error_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (TransientLLMError, asyncio.TimeoutError, TimeoutError)):
        return True
    lit = _litellm()
    transient = (
        lit.RateLimitError,
        lit.Timeout,
        lit.APIConnectionError,
        lit.InternalServerError,
        lit.ServiceUnavailableError,
        lit.BadGatewayError,
    )
    if isinstance(exc, transient):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in {408, 429} or status >= 500)


class LiteLLM:
    """``LLM`` over ``litellm.acompletion`` for any litellm model string (+ api_base)."""

    def __init__(
        self,
        *,
        on_call: CallSink | None = None,
        fallbacks: Sequence[str | Endpoint] = (),
        max_retries: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        timeout_s: float = 120.0,
        max_concurrency: int = 8,
        cache: bool = True,
        store: CacheStore | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        before_call: Callable[[LLMRequest], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        mock_source: MockSource | None = None,
    ) -> None:
        if max_retries < 0 or max_concurrency < 1 or timeout_s <= 0:
            raise ValueError("max_retries must be >= 0, max_concurrency >= 1 and timeout_s > 0")
        self.on_call = on_call
        self.fallbacks = tuple(f if isinstance(f, Endpoint) else Endpoint(f) for f in fallbacks)
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.cache_enabled = cache
        self.store = store
        self.before_call = before_call
        self._sleep = sleep
        self._mock_source = mock_source
        self._memory: dict[str, CachedReply] = {}
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._placeholder_key: dict[Endpoint, bool] = {}
        self.dollars_spent = 0.0
        if prices:
            register_prices(prices)

    # -- helpers -----------------------------------------------------------------------
    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = asyncio.Semaphore(self.max_concurrency)
            self._semaphores[loop] = sem
        return sem

    def backoff_s(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0-based): base * 2**retry, capped."""
        return min(self.backoff_max_s, self.backoff_base_s * (2.0**retry))

    def _emit(self, request: LLMRequest, **fields: Any) -> None:
        if self.on_call is None:
            return
        self.on_call(
            LLMCallRecord(
                role=request.role,
                template_name=request.template_name,
                template_hash=request.template_hash,
                sample_id=request.sample_id,
                messages=request.messages,
                candidate_id=request.candidate_id,
                scope=_SCOPE.get(),
                created_at=time.time(),
                **fields,
            )
        )

    def _lookup(self, key: str) -> CachedReply | None:
        hit = self._memory.get(key)
        if hit is None and self.store is not None:
            hit = self.store.get(key)
            if hit is not None:
                self._memory[key] = hit
        return hit

    def _remember(self, key: str, reply: CachedReply) -> None:
        self._memory[key] = reply
        if self.store is not None:
            self.store.put(key, reply)

    def _needs_placeholder_key(self, endpoint: Endpoint) -> bool:
        """An OpenAI-compatible server at an explicit api_base, with no key in the environment."""
        if endpoint.api_base is None:
            return False
        if endpoint not in self._placeholder_key:
            try:
                lit = _litellm()
                provider = lit.get_llm_provider(endpoint.model, api_base=endpoint.api_base)[1]
                missing = lit.validate_environment(model=endpoint.model, api_base=endpoint.api_base)["missing_keys"]
                needed = provider in OPENAI_COMPATIBLE and any(str(k).endswith("_KEY") for k in missing)
            except Exception:
                needed = False
            self._placeholder_key[endpoint] = needed
        return self._placeholder_key[endpoint]

    async def _transport(self, endpoint: Endpoint, request: LLMRequest, timeout: float) -> Any:
        kwargs: dict[str, Any] = {
            "model": endpoint.model,
            "messages": request.messages_json(),
            "temperature": request.temperature,
            "timeout": timeout,
            "max_retries": 0,  # the OpenAI SDK's own retries would hide attempts from the log
            "num_retries": 0,
            "drop_params": True,  # e.g. models that reject a temperature
        }
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if endpoint.api_base:
            kwargs["api_base"] = endpoint.api_base
        mocked = False
        if self._mock_source is not None:
            reply = self._mock_source(request)
            if isinstance(reply, BaseException):
                raise reply
            kwargs["mock_response"] = reply
            mocked = True
        guard_real_call(endpoint, mocked=mocked)
        if not mocked and self._needs_placeholder_key(endpoint):
            kwargs["api_key"] = _PLACEHOLDER_KEY
        return await _litellm().acompletion(**kwargs)

    # -- the protocol ------------------------------------------------------------------
    async def complete(self, request: LLMRequest) -> LLMResponse:
        key = request.cache_key()
        if self.cache_enabled:
            hit = self._lookup(key)
            if hit is not None:
                self._emit(
                    request, model=hit.model, response=hit.text, tokens_in=0, tokens_out=0,
                    dollars=0.0, latency_s=0.0, cache_hit=True, error=None, attempt=0,
                )
                return LLMResponse(hit.text, 0, 0, 0.0, 0.0, True, hit.model)

        endpoints = (Endpoint(request.model, request.api_base), *self.fallbacks)
        if self._mock_source is None:
            for endpoint in endpoints:  # fail before any attempt, not after the primary's retries
                guard_real_call(endpoint, mocked=False)
        if self.before_call is not None:
            self.before_call(request)
        timeout = float(request.timeout or self.timeout_s)
        attempt, last_error = 0, "no attempt made"
        for endpoint in endpoints:
            for retry in range(self.max_retries + 1):
                attempt += 1
                async with self._semaphore():
                    start = time.perf_counter()
                    try:
                        raw = await asyncio.wait_for(self._transport(endpoint, request, timeout), timeout)
                    except LLMFatalError:
                        raise
                    except Exception as exc:
                        latency = time.perf_counter() - start
                        last_error = _error_line(exc)
                        retryable = _is_retryable(exc)
                        self._emit(
                            request, model=endpoint.model, response=None, tokens_in=0, tokens_out=0,
                            dollars=0.0, latency_s=latency, cache_hit=False, error=last_error, attempt=attempt,
                        )
                        log.warning("LLM attempt %d on %s failed: %s", attempt, endpoint.model, last_error)
                    else:
                        latency = time.perf_counter() - start
                        return self._finish(request, key, endpoint, raw, latency, attempt)
                if not retryable or retry == self.max_retries:
                    break  # next endpoint (fallback)
                await self._sleep(self.backoff_s(retry))
        models = ", ".join(e.model for e in endpoints)
        raise LLMError(f"{request.role} call failed after {attempt} attempts ({models}): {last_error}", request, attempt)

    def _finish(
        self, request: LLMRequest, key: str, endpoint: Endpoint, raw: Any, latency: float, attempt: int
    ) -> LLMResponse:
        choice = raw.choices[0]
        text = getattr(choice.message, "content", None) or ""
        usage = getattr(raw, "usage", None)
        tokens_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "completion_tokens", 0) or 0)
        dollars = _dollars(raw, endpoint.model)
        self.dollars_spent += dollars
        self._emit(
            request, model=endpoint.model, response=text, tokens_in=tokens_in, tokens_out=tokens_out,
            dollars=dollars, latency_s=latency, cache_hit=False, error=None, attempt=attempt,
        )
        if self.cache_enabled:
            self._remember(key, CachedReply(text, endpoint.model, tokens_in, tokens_out, dollars))
        return LLMResponse(text, tokens_in, tokens_out, dollars, latency, False, endpoint.model)
