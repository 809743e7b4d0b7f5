"""Progress reporting for long campaigns: a Reporter protocol, a silent one for tests, a
rich console one for `disco run`, and a JSON-lines one for machines (`disco run --json`)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from discovery.config import CampaignConfig
    from discovery.loop import CampaignSummary
    from discovery.store import CompletedEvaluation


class Reporter(Protocol):
    def start(self, cfg: CampaignConfig, resumed: bool, done: int, queued: int) -> None: ...
    def submitted(self, candidate_id: int, name: str) -> None: ...
    def completed(self, c: CompletedEvaluation) -> None: ...
    def rejected(self, candidate_id: int, name: str, kind: str, message: str) -> None: ...
    def duplicate(self, candidate_id: int, name: str, duplicate_of: int) -> None: ...
    def note(self, message: str) -> None: ...
    def finish(self, summary: CampaignSummary) -> None: ...


class NullReporter:
    def start(self, cfg, resumed, done, queued) -> None: ...
    def submitted(self, candidate_id, name) -> None: ...
    def completed(self, c) -> None: ...
    def rejected(self, candidate_id, name, kind, message) -> None: ...
    def duplicate(self, candidate_id, name, duplicate_of) -> None: ...
    def note(self, message) -> None: ...
    def finish(self, summary) -> None: ...


def _headline(c: CompletedEvaluation, keys: tuple[str, ...] = ("mqar_acc", "lm_bpb", "train_tokens_per_s")) -> str:
    parts = []
    for k in keys:
        if k in c.metrics:
            v = c.metrics[k]
            parts.append(f"{k}={v:.3g}" if abs(v) < 1e4 else f"{k}={v:.3e}")
    return " ".join(parts)


class ConsoleReporter:
    """One line per event on stderr with a running count: readable in logs and terminals."""

    def __init__(self, console: Any | None = None, total: int | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.total = total
        self.done = 0
        self._t0 = time.monotonic()

    def _elapsed(self) -> str:
        s = int(time.monotonic() - self._t0)
        return f"{s // 60:02d}:{s % 60:02d}"

    def start(self, cfg, resumed, done, queued) -> None:
        self.total = cfg.budget.max_evaluations
        self.done = done
        verb = "resuming" if resumed else "starting"
        self.console.print(
            f"[bold]{verb} campaign {cfg.name!r}[/]: task {cfg.task.name}, policy {cfg.policy.kind}, "
            f"proposer {cfg.proposer.kind}, budget {cfg.budget.max_evaluations} evaluations, "
            f"{cfg.runner.max_in_flight} in flight ({cfg.runner.kind} runner); "
            f"{done} done, {queued} queued"
        )

    def submitted(self, candidate_id, name) -> None:
        pass

    def completed(self, c) -> None:
        self.done += 1
        fit = "-" if c.fitness is None else f"{c.fitness:.3f}"
        if c.status == "evaluated":
            tag = "[green]evaluated[/]" + ("" if c.feasible else " [yellow](infeasible: reference only)[/]")
            detail = _headline(c)
        else:
            tag = f"[red]failed:{c.failure_kind}[/]"
            detail = f"at {c.failure_stage}: {(c.failure_message or '').splitlines()[0][:100] if c.failure_message else ''}"
        self.console.print(
            f"[dim]{self._elapsed()}[/] [{self.done}/{self.total}] #{c.candidate_id} {c.name} {tag} "
            f"fitness {fit} {detail} ({c.wall_s:.1f}s)"
        )

    def rejected(self, candidate_id, name, kind, message) -> None:
        self.console.print(f"[dim]{self._elapsed()}[/] #{candidate_id} {name} [red]rejected:{kind}[/] {message[:120]}")

    def duplicate(self, candidate_id, name, duplicate_of) -> None:
        self.console.print(f"[dim]{self._elapsed()}[/] #{candidate_id} {name} duplicate of #{duplicate_of}")

    def note(self, message) -> None:
        self.console.print(f"[dim]{self._elapsed()}[/] {message}")

    def finish(self, summary) -> None:
        self.console.print(
            f"[bold]campaign {summary.campaign_id!r} stopped[/]: {summary.stop_reason}; "
            f"{summary.evaluated} evaluated, {summary.failed} failed, {summary.rejected} rejected, "
            f"{summary.duplicates} duplicates in {summary.wall_s:.0f}s"
        )


class JsonLinesReporter:
    """Machine-readable progress: one JSON object per event."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _emit(self, **obj: Any) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def start(self, cfg, resumed, done, queued) -> None:
        self._emit(event="start", campaign=cfg.name, resumed=resumed, done=done, queued=queued)

    def submitted(self, candidate_id, name) -> None:
        self._emit(event="submitted", candidate=candidate_id, name=name)

    def completed(self, c) -> None:
        self._emit(event="completed", candidate=c.candidate_id, name=c.name, status=c.status,
                   fitness=c.fitness, failure_kind=c.failure_kind, wall_s=c.wall_s)

    def rejected(self, candidate_id, name, kind, message) -> None:
        self._emit(event="rejected", candidate=candidate_id, name=name, kind=kind, message=message)

    def duplicate(self, candidate_id, name, duplicate_of) -> None:
        self._emit(event="duplicate", candidate=candidate_id, name=name, duplicate_of=duplicate_of)

    def note(self, message) -> None:
        self._emit(event="note", message=message)

    def finish(self, summary) -> None:
        self._emit(event="finish", campaign=summary.campaign_id, stop_reason=summary.stop_reason,
                   evaluated=summary.evaluated, failed=summary.failed)
