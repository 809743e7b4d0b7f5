"""Design principles: the ``Principle`` type and the built-in starter packs.

A principle is a short, actionable piece of design knowledge: when it applies (trigger),
the idea (principle), how to implement it (hint) and where it comes from (source: the
paper's title and year). Packs ship as JSONL package data, one file per task
(``token_mixer.jsonl`` for task ``token-mixer``), written in the project's own words.
The knowledge base stores principles in its ``knowledge`` table; this module only reads
files, it never touches the database.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

PACK_DIR = Path(__file__).resolve().parent
_YEAR = re.compile(r"\((19|20)\d{2}\)\s*$")


@dataclass(frozen=True)
class Principle:
    title: str
    trigger: str
    principle: str
    hint: str
    source: str  # "Paper title (year)" for the built-in packs; the paper title for extracted ones

    def as_text(self) -> str:
        """One paragraph for prompts and full-text search."""
        return (
            f"{self.title}. When: {self.trigger} Idea: {self.principle} "
            f"How: {self.hint} (source: {self.source})"
        )


class PackEntry(BaseModel):
    """One line of a built-in pack, validated on load."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    title: str
    trigger: str
    principle: str
    hint: str
    source: str

    @field_validator("title", "trigger", "principle", "hint", "source")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("source")
    @classmethod
    def _cites_year(cls, value: str) -> str:
        if not _YEAR.search(value):
            raise ValueError("must cite the paper as 'Title (YEAR)'")
        return value


def pack_path(task: str) -> Path:
    return PACK_DIR / f"{task.replace('-', '_')}.jsonl"


def builtin_pack_tasks() -> list[str]:
    return sorted(p.stem.replace("_", "-") for p in PACK_DIR.glob("*.jsonl"))


def load_pack_file(path: str | Path) -> list[Principle]:
    """Read and validate a pack; an invalid line raises ValueError naming file and line."""
    principles: list[Principle] = []
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = PackEntry.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"{path.name} line {number}: {' '.join(str(exc).split())}") from exc
        principles.append(Principle(entry.title, entry.trigger, entry.principle, entry.hint, entry.source))
    return principles


def load_builtin_pack(task: str) -> list[Principle]:
    """The starter principles shipped for ``task`` (empty for tasks without a pack)."""
    path = pack_path(task)
    return load_pack_file(path) if path.is_file() else []
