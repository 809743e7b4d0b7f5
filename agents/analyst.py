"""The analyst agent: after an evaluation, a short insight on what changed and what it did.

``Analyst.analyse(child, parent, metrics)`` renders ``analyst.j2`` (a unified diff of the
child against its parent, both sets of measurements side by side) and parses the model's
JSON reply ``{"change", "effect", "lesson"}`` into one insight text, which the campaign
loop stores in the ``insight`` table and feeds to later researcher prompts.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from agents.bandit import ModelChooser
from agents.llm import LLM
from agents.parsing import parse_json_reply
from agents.prompts import ANALYST_SHAPE, render_analyst
from agents.researcher import ask_parsed
from agents.types import ParentInfo


class InsightReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    change: str = Field(min_length=1)
    effect: str = Field(min_length=1)
    lesson: str = Field(min_length=1)

    def as_text(self) -> str:
        return f"Change: {self.change} Effect: {self.effect} Lesson: {self.lesson}"


class Analyst:
    role = "analyst"

    def __init__(self, llm: LLM, models: ModelChooser, *, task: str, max_attempts: int = 2) -> None:
        self.llm = llm
        self.models = models
        self.task = task
        self.max_attempts = max_attempts

    async def analyse(self, child: ParentInfo, parent: ParentInfo | None, metrics: Mapping[str, float]) -> str:
        """``metrics``: the child's measurements (the parent's are ``parent.metrics``)."""
        spec = self.models.choose()
        prompt = render_analyst(child, parent, metrics, task=self.task)
        reply, _ = await ask_parsed(
            self.llm,
            spec,
            role=self.role,
            prompt=prompt,
            parse=lambda text: parse_json_reply(text, InsightReply),
            expected=ANALYST_SHAPE,
            sample_id=child.candidate_id,
            candidate_id=child.candidate_id,
            max_attempts=self.max_attempts,
        )
        return reply.as_text()
