"""Lenient parsing of researcher/debugger replies, SEARCH/REPLACE edits and JSON replies."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from agents.parsing import apply_edits, parse_edit_blocks, parse_json_reply, parse_proposal_reply
from agents.types import ProposalError

MODULE = """import torch
from torch import nn


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, **kw):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.proj(x)
"""


def test_required_shape_is_accepted() -> None:
    reply = f"Name: gated-delta-v2\nMotivation: Add a decay gate to the delta rule.\n```python\n{MODULE}```\n"
    parsed = parse_proposal_reply(reply)
    assert parsed.name == "gated-delta-v2"
    assert parsed.motivation == "Add a decay gate to the delta rule."
    assert parsed.code == MODULE
    assert parsed.edited is False


@pytest.mark.parametrize("label", ["py", "", "python3", "Python"])
def test_fence_variants(label: str) -> None:
    reply = f"Name: x\nMotivation: y\n```{label}\n{MODULE}```"
    assert parse_proposal_reply(reply).code == MODULE


def test_markdown_decorated_fields_and_multiline_motivation() -> None:
    reply = (
        "Here is my design.\n\n**Name:** `Short-Conv Retention`\n"
        "**Motivation:** Retention forgets uniformly.\nNote: a short convolution gives keys their predecessor.\n\n"
        f"```python\n{MODULE}```\nThat is all."
    )
    parsed = parse_proposal_reply(reply)
    assert parsed.name == "Short-Conv Retention"
    assert parsed.motivation.startswith("Retention forgets uniformly.")
    assert "Note: a short convolution" in parsed.motivation  # "Word:" lines stay in the paragraph
    assert "That is all" not in parsed.motivation  # the paragraph ends at the code block


def test_largest_python_block_wins_and_other_languages_are_ignored() -> None:
    snippet = "x = q @ k.T\n"
    big_bash = "pip install " + "x " * 500
    reply = f"Name: n\nMotivation: m\n```python\n{snippet}```\n```bash\n{big_bash}\n```\n```python\n{MODULE}```"
    assert parse_proposal_reply(reply).code == MODULE


def test_unclosed_fence_runs_to_end_of_reply() -> None:
    reply = f"Name: n\nMotivation: m\n```python\n{MODULE}"
    assert parse_proposal_reply(reply).code == MODULE


def test_code_lines_that_look_like_fields_are_not_the_name() -> None:
    code = "name: str = 'inner'\nclass Mixer:\n    pass\n"
    parsed = parse_proposal_reply(f"```python\n{code}```", default_name="fallback")
    assert parsed.name == "fallback"
    unnamed = parse_proposal_reply(f"```python\n{code}```")
    assert unnamed.name.startswith("proposal-") and len(unnamed.name) == len("proposal-") + 8


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n",
        "Name: idea\nMotivation: I would add gating but will not write code.",
        "Name: idea\n```text\nclass Mixer: pass\n```",
        "Name: idea\n```python\n\n```",
    ],
)
def test_replies_without_code_raise_with_the_reply(reply: str) -> None:
    with pytest.raises(ProposalError) as info:
        parse_proposal_reply(reply)
    assert info.value.reply == reply


def test_search_replace_edits_are_applied_to_parent() -> None:
    reply = """Name: wider-proj
Motivation: widen then project back.
```python
<<<<<<< SEARCH
        self.proj = nn.Linear(hidden_size, hidden_size)
=======
        self.up = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj = nn.Linear(2 * hidden_size, hidden_size)
>>>>>>> REPLACE
```
<<<<<<< SEARCH
        return self.proj(x)
=======
        return self.proj(torch.relu(self.up(x)))
>>>>>>> REPLACE
"""
    parsed = parse_proposal_reply(reply, parent_code=MODULE)
    assert parsed.edited is True
    assert parsed.name == "wider-proj"
    assert "self.up = nn.Linear(hidden_size, 2 * hidden_size)" in parsed.code
    assert "return self.proj(torch.relu(self.up(x)))" in parsed.code
    assert "return self.proj(x)\n" not in parsed.code
    assert parsed.code.startswith("import torch\n")


def test_search_tolerates_trailing_whitespace_differences() -> None:
    parent = "a = 1   \nb = 2\nc = 3\n"
    edits = parse_edit_blocks("<<<<<<< SEARCH\na = 1\nb = 2\n=======\na = 10\nb = 20\n>>>>>>> REPLACE\n")
    assert apply_edits(parent, edits) == "a = 10\nb = 20\nc = 3\n"


def test_search_not_found_fails_clearly() -> None:
    reply = "Name: n\n<<<<<<< SEARCH\n        return self.nope(x)\n=======\n        return x\n>>>>>>> REPLACE\n"
    with pytest.raises(ProposalError, match=r"SEARCH block 1 of 1 does not occur.*return self.nope") as info:
        parse_proposal_reply(reply, parent_code=MODULE)
    assert info.value.reply == reply


def test_edits_without_parent_or_unterminated_fail() -> None:
    block = "<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n"
    with pytest.raises(ProposalError, match="no parent code"):
        parse_proposal_reply(block, parent_code=None)
    with pytest.raises(ProposalError, match="not terminated"):
        parse_proposal_reply("<<<<<<< SEARCH\nx\n=======\ny\n", parent_code="x\n")


def test_empty_search_appends() -> None:
    edits = parse_edit_blocks("<<<<<<< SEARCH\n=======\nEXTRA = 1\n>>>>>>> REPLACE")
    assert apply_edits("a = 1\n", edits) == "a = 1\nEXTRA = 1\n"


class _Insight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    change: str
    lesson: str


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"change": "c", "lesson": "l"}\n```',
        '{"change": "c", "lesson": "l"}',
        'Sure! Here it is: {"change": "c", "lesson": "l"} Hope this helps.',
        '{"change": "c", "lesson": "l",}',
    ],
)
def test_json_extraction_variants(text: str) -> None:
    assert parse_json_reply(text, _Insight) == _Insight(change="c", lesson="l")


def test_json_list_and_shape_errors() -> None:
    items = parse_json_reply('Principles:\n[{"change": "a", "lesson": "b"}, {"change": "c", "lesson": "d"}]', list[_Insight])
    assert [i.change for i in items] == ["a", "c"]
    with pytest.raises(ProposalError, match="expected shape"):
        parse_json_reply('{"change": "c"}', _Insight)
    with pytest.raises(ProposalError, match="no JSON"):
        parse_json_reply("nothing structured here", _Insight)
