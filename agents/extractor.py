"""The knowledge extractor: paper text -> design principles (trigger, principle, hint).

``KnowledgeExtractor.extract(title, text)`` splits long texts into at most ``max_chunks``
chunks of ``max_chars`` characters on paragraph boundaries (the rest is ignored, and the
prompt says so), renders ``extractor.j2`` for each, parses the JSON array of principles,
and returns them deduplicated as ``agents.knowledge_pack.Principle`` with the paper's
title as source. Storing them in ``knowledge`` is the caller's job (``disco kb ingest``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agents.bandit import ModelChooser
from agents.knowledge_pack import Principle
from agents.llm import LLM
from agents.parsing import parse_json_reply
from agents.prompts import EXTRACTOR_SHAPE, MAX_PAPER_CHARS, render_extractor
from agents.researcher import ask_parsed


class ExtractedPrinciple(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    title: str = ""
    trigger: str = Field(min_length=1)
    principle: str = Field(min_length=1)
    hint: str = ""


class _Wrapped(BaseModel):
    """Models sometimes wrap the array: {"principles": [...]}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principles: list[ExtractedPrinciple]


def split_text(text: str, max_chars: int, max_chunks: int) -> list[str]:
    """Chunks of at most ``max_chars`` on paragraph boundaries (a long paragraph is cut)."""
    chunks: list[str] = []
    current = ""
    for paragraph in text.split("\n\n"):
        while len(paragraph) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(paragraph[:max_chars])
            paragraph = paragraph[max_chars:]
        if current and len(current) + 2 + len(paragraph) > max_chars:
            chunks.append(current)
            current = paragraph
        else:
            current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        chunks.append(current)
    return [c.strip() for c in chunks if c.strip()][:max_chunks]


def _title_from(principle: str) -> str:
    words = principle.split()
    return " ".join(words[:8]) + ("..." if len(words) > 8 else "")


class KnowledgeExtractor:
    role = "extractor"

    def __init__(
        self,
        llm: LLM,
        models: ModelChooser,
        *,
        task: str,
        max_principles: int = 8,
        max_chars: int = MAX_PAPER_CHARS,
        max_chunks: int = 3,
        max_attempts: int = 2,
    ) -> None:
        self.llm = llm
        self.models = models
        self.task = task
        self.max_principles = max_principles
        self.max_chars = max_chars
        self.max_chunks = max_chunks
        self.max_attempts = max_attempts

    async def extract(self, title: str, text: str) -> list[Principle]:
        found: list[Principle] = []
        seen: set[str] = set()
        for index, chunk in enumerate(split_text(text, self.max_chars, self.max_chunks)):
            spec = self.models.choose()
            prompt = render_extractor(
                title, chunk, task=self.task, max_chars=self.max_chars, max_principles=self.max_principles
            )
            items, _ = await ask_parsed(
                self.llm,
                spec,
                role=self.role,
                prompt=prompt,
                parse=lambda reply: parse_json_reply(reply, list[ExtractedPrinciple] | _Wrapped),
                expected=EXTRACTOR_SHAPE,
                sample_id=index,
                max_attempts=self.max_attempts,
            )
            for item in items.principles if isinstance(items, _Wrapped) else items:
                key = " ".join(item.principle.lower().split())
                if key in seen:
                    continue
                seen.add(key)
                found.append(
                    Principle(
                        title=item.title or _title_from(item.principle),
                        trigger=item.trigger,
                        principle=item.principle,
                        hint=item.hint,
                        source=title.strip(),
                    )
                )
        return found
