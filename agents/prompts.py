"""Prompt rendering: one typed function per jinja2 template in ``agents/templates/``.

Templates are package data rendered with ``StrictUndefined`` (a missing variable is an
error, never an empty string). Each function returns a ``RenderedPrompt`` -- a named tuple
``(text, template_name, template_hash)`` -- so every logged call can say which template,
in which version (SHA-256 of its source), produced its prompt.

Long inputs are cut here, not in the templates: log tails keep their *end* (where the
error is), codes and paper texts keep their beginning, each with a stated limit.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agents.types import FailureInfo, ParentInfo, ProposalContext

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

MAX_CODE_CHARS = 24_000
MAX_LOG_CHARS = 3_000
MAX_MESSAGE_CHARS = 2_000
MAX_DIFF_CHARS = 8_000
MAX_PAPER_CHARS = 16_000

PROPOSAL_SHAPE = (
    "a line 'Name: <name>', a line 'Motivation: <text>', then one ```python block with the "
    "whole module (or SEARCH/REPLACE blocks against the parent's code)"
)
ANALYST_SHAPE = 'one JSON object {"change": "...", "effect": "...", "lesson": "..."}'
EXTRACTOR_SHAPE = 'one JSON array of objects {"title": "...", "trigger": "...", "principle": "...", "hint": "..."}'


class RenderedPrompt(NamedTuple):
    text: str
    template_name: str
    template_hash: str


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.0f}" if 1e3 <= abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=StrictUndefined,
        autoescape=False,  # prompts are plain text, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    return env


def template_hash(name: str) -> str:
    env = environment()
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, name)
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def render(template: str, /, **variables: Any) -> RenderedPrompt:
    """Render any template strictly; prefer the typed functions below."""
    text = environment().get_template(template).render(**variables)
    return RenderedPrompt(text, template, template_hash(template))


def head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} more characters cut]"


def tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"[... {len(text) - limit} earlier characters cut]\n" + text[-limit:]


@dataclass(frozen=True)
class _ShownCandidate:
    candidate_id: int
    name: str
    code: str
    fitness: float | None
    metrics: Mapping[str, float]
    motivation: str


def _shown(p: ParentInfo, max_code_chars: int) -> _ShownCandidate:
    return _ShownCandidate(
        p.candidate_id, p.name, head(p.code.rstrip("\n"), max_code_chars), p.fitness, dict(p.metrics), p.motivation.strip()
    )


def _shown_failure(f: FailureInfo, max_log_chars: int) -> FailureInfo:
    return FailureInfo(
        candidate_id=f.candidate_id,
        name=f.name,
        stage=f.stage,
        failure_kind=f.failure_kind,
        message=head(f.message.strip(), MAX_MESSAGE_CHARS),
        log_tail=tail(f.log_tail.strip("\n"), max_log_chars),
        code="",
    )


# --------------------------------------------------------------------------------------
# One function per template
# --------------------------------------------------------------------------------------
def render_researcher(
    ctx: ProposalContext, *, max_code_chars: int = MAX_CODE_CHARS, max_log_chars: int = MAX_LOG_CHARS
) -> RenderedPrompt:
    parents = [_shown(p, max_code_chars) for p in ctx.parents]
    return render(
        "researcher.j2",
        task=ctx.task,
        interface=ctx.interface.strip(),
        operation=ctx.operation,
        evaluations_left=ctx.evaluations_left,
        parents=parents,
        inspirations=[_shown(p, max_code_chars) for p in ctx.inspirations],
        failures=[_shown_failure(f, max_log_chars) for f in ctx.recent_failures],
        knowledge=[k.strip() for k in ctx.knowledge if k.strip()],
        insights=[i.strip() for i in ctx.insights if i.strip()],
        allow_edits=len(parents) == 1,
    )


def render_debugger(
    failed: FailureInfo,
    *,
    task: str,
    interface: str,
    round: int = 1,
    max_rounds: int = 2,
    max_log_chars: int = MAX_LOG_CHARS,
    max_code_chars: int = MAX_CODE_CHARS,
) -> RenderedPrompt:
    return render(
        "debugger.j2",
        task=task,
        interface=interface.strip(),
        round=round,
        max_rounds=max_rounds,
        name=failed.name,
        stage=failed.stage,
        failure_kind=failed.failure_kind,
        message=head(failed.message.strip(), MAX_MESSAGE_CHARS),
        log_tail=tail(failed.log_tail.strip("\n"), max_log_chars),
        code=head(failed.code.rstrip("\n"), max_code_chars),
    )


@dataclass(frozen=True)
class _MetricRow:
    name: str
    parent: float | None
    child: float | None


def code_diff(parent_code: str, child_code: str, limit: int = MAX_DIFF_CHARS) -> tuple[str, bool]:
    """A unified diff parent -> child, cut to ``limit`` characters (text, truncated?)."""
    lines = difflib.unified_diff(
        parent_code.splitlines(), child_code.splitlines(), "parent.py", "candidate.py", lineterm="", n=2
    )
    diff = "\n".join(lines) or "(no textual difference)"
    return (diff, False) if len(diff) <= limit else (diff[:limit], True)


def render_analyst(
    child: ParentInfo,
    parent: ParentInfo | None,
    metrics: Mapping[str, float],
    *,
    task: str,
    max_diff_chars: int = MAX_DIFF_CHARS,
) -> RenderedPrompt:
    """``metrics`` are the child's measurements; the parent's come from ``parent.metrics``."""
    parent_metrics = dict(parent.metrics) if parent else {}
    names = sorted(set(metrics) | set(parent_metrics))
    rows = [_MetricRow(n, parent_metrics.get(n), metrics.get(n)) for n in names]
    if parent is not None:
        diff, truncated = code_diff(parent.code, child.code, max_diff_chars)
    else:
        diff, truncated = head(child.code.rstrip("\n"), max_diff_chars), len(child.code) > max_diff_chars
    return render(
        "analyst.j2",
        task=task,
        child_name=child.name,
        child_id=child.candidate_id,
        child_fitness=child.fitness,
        child_motivation=child.motivation.strip(),
        parent_name=parent.name if parent else "",
        parent_fitness=parent.fitness if parent else None,
        diff=diff,
        diff_truncated=truncated,
        rows=rows,
    )


def render_extractor(
    title: str, text: str, *, task: str, max_chars: int = MAX_PAPER_CHARS, max_principles: int = 8
) -> RenderedPrompt:
    body = text.strip()
    return render(
        "extractor.j2",
        task=task,
        title=title.strip(),
        text=body[:max_chars],
        truncated=len(body) > max_chars,
        max_chars=max_chars,
        max_principles=max_principles,
    )


def render_format_error(error: str, *, expected: str) -> RenderedPrompt:
    """The follow-up sent when a reply could not be parsed."""
    return render("format_error.j2", error=error.strip(), expected=expected)


def template_names() -> Sequence[str]:
    return ("researcher.j2", "debugger.j2", "analyst.j2", "extractor.j2", "format_error.j2")
