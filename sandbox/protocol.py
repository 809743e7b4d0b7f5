"""Messages between the driver and one sandbox child, and their authenticated framing.

Driver -> child, on the request pipe (an inherited fd the harness closes after reading):
  line 1, written at spawn:  ``SpawnConfig`` (how to isolate, the per-run HMAC key);
  line 2, written per use:   ``LaunchRequest`` (the EvalRequest and the resolved limits).
Child -> driver, on the result pipe (an inherited fd the harness moves to a high number,
marks close-on-exec and never exposes to candidate code): one frame per event,

    <hex HMAC-SHA256(key, "<seq>\\n" + payload)> <payload JSON>\\n

``seq`` counts frames from 0, so a frame cannot be replayed, reordered or dropped silently.
The key reaches the child only through the request pipe, never argv or the environment. A
candidate that prints on stdout / stderr only adds to the log; one that writes to the result
pipe without the key produces a frame that fails verification, which the driver treats as
tampering (failure kind ``policy``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from evaluator.types import StageResult
from sandbox.api import EvalRequest

Mode = Literal["auto", "namespaces", "userns", "none"]
MAX_FRAME_BYTES = 8 * 1024 * 1024


class IsolationReport(BaseModel):
    """What the child actually got; attached to the ``load`` result as artifact ``isolation``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["namespaces", "userns", "none"]
    uid: int
    pid_namespace: bool = False
    net_namespace: bool = False
    mount_namespace: bool = False
    readonly_root: bool = False
    private_tmp: bool = False
    fresh_proc: bool = False
    capabilities_dropped: bool = False
    no_new_privs: bool = False
    seccomp: bool = False
    landlock_abi: int = 0
    landlock: bool = False
    socket_layer: bool = False
    workdir: str = ""
    notes: list[str] = Field(default_factory=list)


class SpawnConfig(BaseModel):
    """How a child isolates itself; sent before the request is known (warm pool)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str  # hex HMAC key for this child's frames
    mode: Mode = "auto"
    uid: int | None = None  # unprivileged uid to run as (when started as root)
    simulate_unprivileged: bool = False  # test switch: drop to ``uid`` before namespaces
    seccomp: bool = True
    landlock: bool = True
    socket_layer: bool = True
    workdir: str | None = None  # host directory to use when no mount namespace is available
    read_paths: list[str] = Field(default_factory=list)
    tmpfs_bytes: int = 512 * 1024 * 1024
    # imported after isolation, before the request; "module:function" also calls function()
    preload: list[str] = Field(default_factory=list)
    torch_threads: int = 1


class ResolvedLimits(BaseModel):
    """Concrete limits the child applies to itself before importing the candidate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_bytes: int
    address_space: bool = True  # RLIMIT_AS; False (GPU targets): RLIMIT_DATA
    cpu_seconds: int
    max_processes: int
    max_file_bytes: int
    max_open_files: int
    torch_threads: int


class LaunchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request: EvalRequest
    limits: ResolvedLimits
    static_policy: bool = True  # test switch (driver-side only): False skips the AST policy


class ReadyEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event: Literal["ready"] = "ready"
    isolation: IsolationReport


class StageStartEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event: Literal["stage_start"] = "stage_start"
    stage: str


class StageResultEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event: Literal["stage_result"] = "stage_result"
    result: StageResult


class DoneEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event: Literal["done"] = "done"


class ErrorEvent(BaseModel):
    """The harness itself failed (not the candidate): the driver raises SandboxError."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event: Literal["error"] = "error"
    message: str


Event = Annotated[ReadyEvent | StageStartEvent | StageResultEvent | DoneEvent | ErrorEvent,
                  Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


class TamperError(Exception):
    """A frame on the result channel was not produced by the harness holding the key."""


def _mac(key: bytes, seq: int, payload: bytes) -> str:
    return hmac.new(key, b"%d\n" % seq + payload, hashlib.sha256).hexdigest()


def encode_event(event: BaseModel) -> bytes:
    """JSON for one event (NaN / inf metrics survive as JSON extensions)."""
    return json.dumps(event.model_dump(mode="python"), allow_nan=True, default=_jsonable,
                      separators=(",", ":")).encode()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):  # enums
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def make_frame(key: bytes, seq: int, payload: bytes) -> bytes:
    return _mac(key, seq, payload).encode() + b" " + payload + b"\n"


class FrameReader:
    """Driver side: accumulates bytes, returns verified events in order."""

    def __init__(self, key: bytes):
        self._key = key
        self._seq = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[BaseModel]:
        self._buf += data
        events: list[BaseModel] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_FRAME_BYTES:
                    raise TamperError("an oversized frame arrived on the result channel")
                return events
            frame = bytes(self._buf[:end])
            del self._buf[: end + 1]
            mac, _, payload = frame.partition(b" ")
            expected = _mac(self._key, self._seq, payload).encode()
            if not hmac.compare_digest(mac, expected):
                raise TamperError("the result channel carried a frame the harness did not sign")
            self._seq += 1
            try:
                events.append(_EVENT.validate_python(json.loads(payload)))
            except ValueError as exc:
                raise TamperError(f"a signed frame did not parse: {exc}") from exc

    @property
    def pending(self) -> bool:
        return bool(self._buf)
