"""Rendered prompts are snapshot-tested; templates fail on missing variables.

Snapshots live in tests/agents/snapshots/. To regenerate them deliberately after changing
a template: DISCO_UPDATE_SNAPSHOTS=1 pytest tests/agents/test_prompts.py, then review the
diff. A missing snapshot fails the test (it is never created silently).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import pytest

from agents.prompts import (
    TEMPLATE_DIR,
    RenderedPrompt,
    code_diff,
    environment,
    render,
    render_analyst,
    render_debugger,
    render_extractor,
    render_format_error,
    render_researcher,
    template_hash,
    template_names,
)
from agents.types import FailureInfo, ParentInfo, ProposalContext

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
INTERFACE = "class Mixer(nn.Module):\n    def __init__(self, hidden_size: int, num_heads: int, **kw): ...\n    def forward(self, x): ...  # (B, T, D) -> (B, T, D), causal"

PARENT = ParentInfo(
    candidate_id=4,
    name="linear-attention",
    code="import torch\n\n\nclass Mixer(torch.nn.Module):\n    def forward(self, x):\n        return x\n",
    genome=None,
    fitness=0.5123,
    metrics={"mqar_acc": 0.41, "tokens_per_s": 12345.6},
    motivation="elu+1 linear attention, chunked.",
)
INSPIRATION = ParentInfo(9, "retention", "class Mixer:\n    pass\n", None, 0.61, {"mqar_acc": 0.55}, "")
FAILURE = FailureInfo(
    candidate_id=11,
    name="fft-mixer",
    stage="causality",
    failure_kind="causality",
    message="gradient of y[:, 3] w.r.t. x[:, 4:] is not zero (max 0.12)",
    log_tail="line 1\nline 2\nAssertionError: leak",
    code="class Mixer:\n    pass\n",
)


def _context() -> ProposalContext:
    return ProposalContext(
        task="token-mixer",
        interface=INTERFACE,
        parents=(PARENT,),
        inspirations=(INSPIRATION,),
        recent_failures=(FAILURE,),
        insights=("Change: added decay. Effect: recall +0.1. Lesson: decay helps.",),
        knowledge=("Delta rule. When: state saturates. Idea: write the error. How: beta gate. (source: X (2021))",),
        operation="mutation",
        evaluations_left=17,
        seed=3,
    )


def _rendered() -> dict[str, RenderedPrompt]:
    return {
        "researcher_mutation": render_researcher(_context()),
        "researcher_fresh": render_researcher(ProposalContext(task="token-mixer", interface=INTERFACE, operation="fresh")),
        "debugger": render_debugger(FAILURE, task="token-mixer", interface=INTERFACE, round=1, max_rounds=2),
        "analyst": render_analyst(
            ParentInfo(12, "decayed-linear", PARENT.code.replace("return x", "return 0.9 * x"), None, 0.58, {}, "add decay"),
            PARENT,
            {"mqar_acc": 0.52, "tokens_per_s": 11000.0},
            task="token-mixer",
        ),
        "extractor": render_extractor("A Paper (2024)", "We gate the state.\n\nIt works.", task="token-mixer"),
        "format_error": render_format_error("the reply has no ```python code block", expected="Name/Motivation/code"),
    }


@pytest.mark.parametrize("case", sorted(_rendered()))
def test_rendered_prompt_matches_snapshot(case: str) -> None:
    prompt = _rendered()[case]
    path = SNAPSHOTS / f"{case}.txt"
    if os.environ.get("DISCO_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(prompt.text, encoding="utf-8")
    assert path.is_file(), f"missing snapshot {path}; run with DISCO_UPDATE_SNAPSHOTS=1 and review it"
    assert prompt.text == path.read_text(encoding="utf-8"), f"{case} prompt changed; review and regenerate"


def test_researcher_prompt_carries_every_part_of_the_context() -> None:
    text = render_researcher(_context()).text
    for expected in [
        INTERFACE.splitlines()[0],
        PARENT.code.strip(),
        "fitness 0.5123",
        "mqar_acc=0.41",
        "retention",
        'failed at stage "causality" with kind "causality"',
        "AssertionError: leak",
        "Delta rule. When: state saturates",
        "Lesson: decay helps",
        "Evaluations left in this campaign: 17",
        "Name: <",
        "Motivation: <",
        "```python",
        "<<<<<<< SEARCH",
    ]:
        assert expected in text, expected


def test_rendered_prompt_names_its_template_and_hash() -> None:
    prompt = render_debugger(FAILURE, task="token-mixer", interface=INTERFACE)
    text, name, digest = prompt
    source = (TEMPLATE_DIR / "debugger.j2").read_text(encoding="utf-8")
    assert name == "debugger.j2"
    assert digest == hashlib.sha256(source.encode()).hexdigest() == template_hash("debugger.j2")
    assert "AssertionError: leak" in text and FAILURE.message in text


def test_long_log_tail_keeps_its_end() -> None:
    long_log = "\n".join(f"noise {i}" for i in range(5000)) + "\nRuntimeError: the real cause"
    failure = FailureInfo(1, "x", "conformance", "runtime", "boom", log_tail=long_log, code="pass\n")
    text = render_debugger(failure, task="t", interface="i", max_log_chars=500).text
    assert "RuntimeError: the real cause" in text
    assert "noise 0\n" not in text and "earlier characters cut" in text


def test_analyst_prompt_shows_diff_and_both_metric_columns() -> None:
    diff, truncated = code_diff("a = 1\n", "a = 2\n")
    assert "-a = 1" in diff and "+a = 2" in diff and not truncated
    text = _rendered()["analyst"].text
    assert "+        return 0.9 * x" in text
    assert "| mqar_acc | 0.41 | 0.52 |" in text


def _full_variables() -> dict[str, dict[str, Any]]:
    """Variables that take every branch of every template."""
    shown = {"candidate_id": 1, "name": "p", "code": "x", "fitness": 0.1, "metrics": {"a": 1.0}, "motivation": "m"}
    failure = {"name": "f", "stage": "s", "failure_kind": "runtime", "message": "m", "log_tail": "t"}
    return {
        "researcher.j2": dict(
            task="t", interface="i", operation="mutation", evaluations_left=3, parents=[shown],
            inspirations=[shown], failures=[failure], knowledge=["k"], insights=["n"], allow_edits=True,
        ),
        "debugger.j2": dict(
            task="t", interface="i", round=1, max_rounds=2, name="n", stage="s", failure_kind="runtime",
            message="m", log_tail="t", code="c",
        ),
        "analyst.j2": dict(
            task="t", child_name="c", child_id=2, child_fitness=0.2, child_motivation="m", parent_name="p",
            parent_fitness=0.1, diff="d", diff_truncated=True, rows=[{"name": "a", "parent": 1.0, "child": 2.0}],
        ),
        "extractor.j2": dict(task="t", title="T", text="x", truncated=True, max_chars=10, max_principles=3),
        "format_error.j2": dict(error="e", expected="x"),
    }


@pytest.mark.parametrize("name", list(template_names()))
def test_templates_fail_on_every_missing_variable(name: str) -> None:
    full = _full_variables()[name]
    render(name, **full)  # complete variables render
    env = environment()
    declared = jinja2.meta.find_undeclared_variables(env.parse((TEMPLATE_DIR / name).read_text(encoding="utf-8")))
    assert declared == set(full), "test variables out of date with the template"
    for missing in sorted(declared):
        partial = {k: v for k, v in full.items() if k != missing}
        with pytest.raises(jinja2.UndefinedError):
            render(name, **partial)
