"""Lenient parsing of LLM replies into typed values.

Proposal replies (researcher, debugger) are read as: a ``Name: <name>`` line, a
``Motivation: <text>`` paragraph, and either one fenced Python block holding the whole
module (```python, ```py, or an unlabeled fence; the largest one when there are several)
or SEARCH/REPLACE edit blocks applied to the parent's code::

    <<<<<<< SEARCH
    exact lines of the parent
    =======
    new lines
    >>>>>>> REPLACE

Analyst and extractor replies carry JSON, found in a ```json fence, the bare reply, or the
first decodable object/array inside prose, then validated by a pydantic model.

A reply that yields nothing usable raises ``agents.types.ProposalError`` carrying the reply;
the campaign loop records it as a ``validator`` failure. Syntax errors inside a code block
are *not* judged here: the sandbox's static check reports them as ``syntax`` failures.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from agents.types import ProposalError

MAX_NAME_CHARS = 120
MAX_MOTIVATION_CHARS = 4000
PYTHON_LABELS = frozenset({"", "python", "py", "python3", "py3", "pytorch", "torch"})

_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<label>[\w+.\-]*)[^`]*$")
_BLOCK_MARK = "\x00<code block>\x00"
_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FIELD = r"^[\s>#*_\-]*{key}[\s*_]*[:\uff1a][\s*_]*(?P<value>.*)$"
_NAME = re.compile(_FIELD.format(key="name"), re.IGNORECASE)
_MOTIVATION = re.compile(_FIELD.format(key="motivation"), re.IGNORECASE)
# Headers that end a motivation paragraph (other "Word:" lines are part of it).
_NEXT_FIELD = re.compile(
    r"^[\s>#*_\-]*(name|code|implementation|changes|edits?|module|search/replace)[\s*_]*[:\uff1a]",
    re.IGNORECASE,
)


class ParsedProposal(BaseModel):
    """What a proposal reply says: a name, why, and the whole module's source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    motivation: str
    code: str
    edited: bool = False  # built by applying SEARCH/REPLACE edits to the parent


@dataclass(frozen=True)
class CodeBlock:
    label: str
    body: str
    closed: bool


@dataclass(frozen=True)
class EditBlock:
    search: str
    replace: str


# --------------------------------------------------------------------------------------
# Fences, prose and edit blocks
# --------------------------------------------------------------------------------------
def split_fences(text: str) -> tuple[list[CodeBlock], list[str]]:
    """Fenced blocks (an unclosed one runs to the end) and the prose lines outside them."""
    blocks: list[CodeBlock] = []
    prose: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            prose.append(lines[i])
            i += 1
            continue
        fence, label = match.group("fence"), match.group("label").lower()
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.strip(fence[0]) == "":
                closed = True
                i += 1
                break
            body.append(lines[i])
            i += 1
        blocks.append(CodeBlock(label, "\n".join(body), closed))
        prose.append(_BLOCK_MARK)  # where a block was: a motivation paragraph ends there
    return blocks, prose


def parse_edit_blocks(text: str) -> list[EditBlock]:
    """SEARCH/REPLACE blocks anywhere in ``text`` (inside fences or not)."""
    edits: list[EditBlock] = []
    state, search, replace = "out", [], []
    for line in text.splitlines():
        if state == "out" and _SEARCH.match(line):
            state, search, replace = "search", [], []
        elif state == "search" and _DIVIDER.match(line):
            state = "replace"
        elif state == "search":
            search.append(line)
        elif state == "replace" and _REPLACE.match(line):
            edits.append(EditBlock("\n".join(search), "\n".join(replace)))
            state = "out"
        elif state == "replace":
            replace.append(line)
    if state != "out":
        raise ProposalError("a SEARCH/REPLACE block is not terminated by '>>>>>>> REPLACE'", text)
    return edits


def _find_lines(code_lines: list[str], search_lines: list[str]) -> int:
    """Index where ``search_lines`` occur in ``code_lines`` ignoring trailing spaces, or -1."""
    target = [s.rstrip() for s in search_lines]
    stripped = [c.rstrip() for c in code_lines]
    n = len(target)
    for start in range(len(stripped) - n + 1):
        if stripped[start : start + n] == target:
            return start
    return -1


def apply_edits(code: str, edits: list[EditBlock], reply: str = "") -> str:
    """Apply each edit to the first occurrence of its SEARCH text; fail if one is missing."""
    for number, edit in enumerate(edits, start=1):
        if not edit.search.strip():
            code = code.rstrip("\n") + "\n" + edit.replace + "\n"
            continue
        if edit.search in code:
            code = code.replace(edit.search, edit.replace, 1)
            continue
        # Models often drop trailing spaces or add blank lines around the SEARCH text.
        search_lines = edit.search.strip("\n").splitlines()
        code_lines = code.splitlines()
        start = _find_lines(code_lines, search_lines)
        if start < 0:
            first = next((s.strip() for s in search_lines if s.strip()), "")
            raise ProposalError(
                f"SEARCH block {number} of {len(edits)} does not occur in the parent code "
                f"(its first line is {first[:100]!r}); copy SEARCH text exactly from the parent",
                reply,
            )
        new_lines = code_lines[:start] + edit.replace.strip("\n").splitlines() + code_lines[start + len(search_lines) :]
        code = "\n".join(new_lines) + ("\n" if code.endswith("\n") else "")
    return code


# --------------------------------------------------------------------------------------
# Name and motivation
# --------------------------------------------------------------------------------------
def _clean_name(raw: str) -> str:
    name = raw.strip().strip("*_`\"' ").strip()
    name = " ".join(name.split())
    return name[:MAX_NAME_CHARS].rstrip()


def _find_name(prose: list[str]) -> str:
    for line in prose:
        match = _NAME.match(line)
        if match and _clean_name(match.group("value")):
            return _clean_name(match.group("value"))
    return ""


def _find_motivation(prose: list[str]) -> str:
    for index, line in enumerate(prose):
        match = _MOTIVATION.match(line)
        if match is None:
            continue
        parts = [match.group("value").strip()]
        for follow in prose[index + 1 :]:
            if follow == _BLOCK_MARK or _NEXT_FIELD.match(follow) or _SEARCH.match(follow):
                break
            parts.append(follow.strip())
        text = "\n".join(parts).strip().strip("*_ ").strip()
        return re.sub(r"\n{3,}", "\n\n", text)[:MAX_MOTIVATION_CHARS]
    return ""


def _default_name(code: str) -> str:
    return "proposal-" + hashlib.sha256(code.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------
def parse_proposal_reply(reply: str, parent_code: str | None = None, *, default_name: str = "") -> ParsedProposal:
    """Read a researcher/debugger reply; raise ``ProposalError`` when it has no usable code."""
    if not reply or not reply.strip():
        raise ProposalError("the reply is empty", reply or "")
    blocks, prose = split_fences(reply)
    edits = parse_edit_blocks(reply)
    if edits:
        if not parent_code:
            raise ProposalError(
                "the reply has SEARCH/REPLACE edits but there is no parent code to apply them to; "
                "send the whole module in one ```python block",
                reply,
            )
        code, edited = apply_edits(parent_code, edits, reply), True
    else:
        candidates = [
            b for b in blocks if b.label in PYTHON_LABELS and b.body.strip() and not _SEARCH.search(b.body)
        ]
        if not candidates:
            raise ProposalError(
                "the reply has no ```python code block (expected 'Name:', 'Motivation:' and one "
                "fenced python block with the whole module, or SEARCH/REPLACE edits)",
                reply,
            )
        # The largest block is the module; small ones are usually snippets quoted in prose.
        best = max(candidates, key=lambda b: (len(b.body.strip()), b.closed))
        code, edited = best.body.strip("\n") + "\n", False
    if not code.strip():
        raise ProposalError("the code is empty after parsing the reply", reply)
    name = _find_name(prose) or _clean_name(default_name) or _default_name(code)
    return ParsedProposal(name=name, motivation=_find_motivation(prose), code=code, edited=edited)


# --------------------------------------------------------------------------------------
# JSON replies
# --------------------------------------------------------------------------------------
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(_TRAILING_COMMA.sub(r"\1", text))


def json_candidates(text: str) -> list[Any]:
    """Every JSON value found in ``text``, most explicit first (fences, whole text, embedded)."""
    found: list[Any] = []
    blocks, _ = split_fences(text)
    for block in blocks:
        if block.label in {"", "json", "jsonl", "javascript", "js"}:
            try:
                found.append(_loads(block.body))
            except json.JSONDecodeError:
                pass
    try:
        found.append(_loads(text.strip()))
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, (dict, list)):
            found.append(value)
    return found


def parse_json_reply(text: str, type_: Any) -> Any:
    """The first JSON value in ``text`` that validates as ``type_`` (a pydantic type)."""
    adapter: TypeAdapter[Any] = TypeAdapter(type_)
    candidates = json_candidates(text or "")
    if not candidates:
        raise ProposalError("the reply contains no JSON value", text or "")
    first_error: ValidationError | None = None
    for value in candidates:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            first_error = first_error or exc
    assert first_error is not None
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in first_error.errors()[:3])
    raise ProposalError(f"the reply's JSON does not have the expected shape ({detail})", text)
