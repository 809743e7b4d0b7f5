"""Result-channel framing, environment scrubbing and limit resolution (no child processes)."""

from __future__ import annotations

import math

import pytest

from evaluator.types import StageResult, StageSpec, TargetSpec
from sandbox.api import EvalRequest, SandboxLimits
from sandbox.isolation import MARKER_ENV, scrubbed_environment
from sandbox.launcher import DEFAULT_MEMORY_FRACTION, physical_memory_bytes, resolve_limits
from sandbox.protocol import (DoneEvent, FrameReader, StageResultEvent, StageStartEvent,
                              TamperError, encode_event, make_frame)

KEY = bytes(range(32))


def frames(*events, key=KEY, start=0) -> bytes:
    return b"".join(make_frame(key, start + i, encode_event(e)) for i, e in enumerate(events))


def test_signed_frames_round_trip_in_pieces_with_nan_metrics() -> None:
    result = StageResult(stage="forward", ok=True, metrics={"loss": math.nan, "y": 2.0})
    data = frames(StageStartEvent(stage="forward"), StageResultEvent(result=result), DoneEvent())
    reader = FrameReader(KEY)
    events = []
    for i in range(0, len(data), 7):  # arbitrary chunking, as a pipe delivers it
        events += reader.feed(data[i:i + 7])
    assert [type(e).__name__ for e in events] == ["StageStartEvent", "StageResultEvent", "DoneEvent"]
    assert math.isnan(events[1].result.metrics["loss"]) and events[1].result.metrics["y"] == 2.0


@pytest.mark.parametrize("data", [
    frames(DoneEvent(), key=b"k" * 32),  # signed with another key
    frames(DoneEvent(), start=1),  # out of sequence (a replayed or dropped frame)
    b"0" * 64 + b' {"event":"done"}\n',  # a candidate printing a plausible frame
    frames(DoneEvent()).replace(b"done", b"dome"),  # altered after signing
])
def test_frames_not_produced_by_the_harness_are_rejected(data: bytes) -> None:
    with pytest.raises(TamperError):
        FrameReader(KEY).feed(data)


def test_replaying_an_earlier_frame_is_rejected() -> None:
    first = frames(StageStartEvent(stage="load"))
    reader = FrameReader(KEY)
    reader.feed(first)
    with pytest.raises(TamperError):
        reader.feed(first)


def test_an_endless_unterminated_frame_is_rejected() -> None:
    reader = FrameReader(KEY)
    with pytest.raises(TamperError):
        for _ in range(200):
            reader.feed(b"x" * 65536)


def test_environment_keeps_only_allowlisted_non_secret_names() -> None:
    source = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "HOME": "/root",
              "OPENAI_API_KEY": "sk-1", "DISCO_TEST_OPENAI_API_KEY": "sk-2", "GITHUB_TOKEN": "t",
              "AWS_SECRET_ACCESS_KEY": "a", "AWS_REGION": "eu", "GOOGLE_APPLICATION_CREDENTIALS": "g",
              "AZURE_CLIENT_ID": "z", "DISCO_DB": "sqlite:///x.db", "DB_PASSWORD": "p",
              "LD_PRELOAD": "/evil.so", "PYTHONSTARTUP": "/evil.py", "LC_SECRET": "s"}
    env = scrubbed_environment(source, pythonpath=["/proj"], torch_threads=2, marker="m")
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8" and env["LC_ALL"] == "C"
    assert env["PYTHONPATH"] == "/proj" and env["OMP_NUM_THREADS"] == "2"
    assert env[MARKER_ENV] == "m" and env["HOME"] == "/nonexistent"
    for name in ("OPENAI_API_KEY", "DISCO_TEST_OPENAI_API_KEY", "GITHUB_TOKEN", "AWS_REGION",
                 "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_CLIENT_ID",
                 "DISCO_DB", "DB_PASSWORD", "LD_PRELOAD", "PYTHONSTARTUP", "LC_SECRET"):
        assert name not in env
    assert not any(v in ("sk-1", "sk-2", "t", "a", "p") for v in env.values())


def test_default_limits_use_half_the_ram_and_the_stage_budget() -> None:
    request = EvalRequest(task="t", code="", stages=[StageSpec(name="a", timeout_s=5),
                                                      StageSpec(name="b", timeout_s=7)])
    resolved, wall = resolve_limits(request, SandboxLimits())
    assert resolved.memory_bytes == int(physical_memory_bytes() * DEFAULT_MEMORY_FRACTION)
    assert DEFAULT_MEMORY_FRACTION <= 0.5
    assert wall == SandboxLimits().load_timeout_s + 10 + 12
    assert resolved.cpu_seconds >= wall


def test_target_memory_limit_and_explicit_limits_win() -> None:
    target = TargetSpec(memory_limit_gb=2.0)
    request = EvalRequest(task="t", code="", stages=[], target=target)
    resolved, _ = resolve_limits(request, SandboxLimits())
    assert resolved.memory_bytes == 2 << 30
    resolved, wall = resolve_limits(request, SandboxLimits(memory_bytes=3 << 30, cpu_seconds=9,
                                                           wall_timeout_s=4.0))
    assert (resolved.memory_bytes, resolved.cpu_seconds, wall) == (3 << 30, 9, 4.0)
