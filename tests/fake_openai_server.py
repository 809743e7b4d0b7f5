"""A tiny OpenAI-compatible chat-completions server for tests (loopback only, no network).

It runs ``http.server`` in a daemon thread on 127.0.0.1 with an ephemeral port and answers
``POST /v1/chat/completions`` from a queue of scripted items: a reply string (answered with
HTTP 200, OpenAI's response shape and a ``usage`` block), an ``HTTPFailure`` (answered with
that status code and an OpenAI-style error body, e.g. one HTTP 429 before a success), or a
``Delayed`` reply (answered after a pause; ``max_in_flight`` counts concurrent requests). Every
request body it receives is kept in ``requests`` so tests can assert what was sent. When the
queue is empty it answers HTTP 500 with a message saying so, which a test sees as an error
rather than a silent default reply.

Usage::

    with FakeOpenAIServer([HTTPFailure(429), "Name: a ..."]) as server:
        ...  # call model "openai/tiny" with api_base=server.api_base
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delayed:
    """Answer with ``reply`` after ``seconds`` (to exercise timeouts and concurrency)."""

    reply: str
    seconds: float


@dataclass(frozen=True)
class HTTPFailure:
    """Answer one request with this HTTP status instead of a completion."""

    status: int = 429
    message: str = "rate limited (scripted)"
    retry_after_s: float | None = None


def _count_tokens(text: str) -> int:
    # A deterministic stand-in for a tokenizer: one token per whitespace-separated word.
    return max(1, len(text.split()))


class FakeOpenAIServer:
    """Scripted ``/v1/chat/completions`` on loopback; use as a context manager."""

    def __init__(self, replies: Iterable[str | HTTPFailure | Delayed] = ()) -> None:
        self._queue: deque[str | HTTPFailure | Delayed] = deque(replies)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------
    def push(self, *items: str | HTTPFailure | Delayed) -> None:
        with self._lock:
            self._queue.extend(items)

    def _next(self) -> str | HTTPFailure | Delayed | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeOpenAIServer is not started")
        return int(self._server.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from the server thread) -------------------------------
    def _answer(self, body: dict[str, Any], headers_in: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers_in)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._reply(body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        item = self._next()
        if isinstance(item, Delayed):
            time.sleep(item.seconds)
            item = item.reply
        if item is None:
            status, payload = 500, _error_body("FakeOpenAIServer has no scripted reply left", "server_error")
            headers: dict[str, str] = {}
        elif isinstance(item, HTTPFailure):
            code = "rate_limit_exceeded" if item.status == 429 else "server_error"
            status, payload = item.status, _error_body(item.message, code)
            headers = {} if item.retry_after_s is None else {"retry-after": str(item.retry_after_s)}
        else:
            status, payload, headers = 200, _completion_body(body, item), {}
        with self._lock:
            self.statuses.append(status)
        return status, payload, headers


def _error_body(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _completion_body(request: dict[str, Any], reply: str) -> dict[str, Any]:
    prompt_text = " ".join(str(m.get("content", "")) for m in request.get("messages", []))
    tokens_in, tokens_out = _count_tokens(prompt_text), _count_tokens(reply)
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model", "fake")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }


def _make_handler(owner: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}, {})
            else:
                self._send(404, _error_body(f"no route {self.path}", "not_found"), {})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, _error_body(f"no route {self.path}", "not_found"), {})
                return
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send(400, _error_body("request body is not JSON", "invalid_request_error"), {})
                return
            if body.get("stream"):
                self._send(400, _error_body("streaming is not supported", "invalid_request_error"), {})
                return
            headers_in = {k.lower(): v for k, v in self.headers.items()}
            try:
                self._send(*owner._answer(body, headers_in))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test); nothing to answer

    return Handler
