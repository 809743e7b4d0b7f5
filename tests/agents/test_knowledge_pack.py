"""The built-in token-mixer knowledge pack: enough valid, cited principles on the right topics."""

from __future__ import annotations

import json
import re

import pytest

from agents.knowledge_pack import builtin_pack_tasks, load_builtin_pack, load_pack_file, pack_path


def test_token_mixer_pack_has_at_least_30_cited_principles() -> None:
    pack = load_builtin_pack("token-mixer")
    assert len(pack) >= 30
    assert len({p.title for p in pack}) == len(pack)
    for p in pack:
        assert all(s.strip() for s in (p.title, p.trigger, p.principle, p.hint, p.source))
        year = int(re.search(r"\((\d{4})\)\s*$", p.source).group(1))
        assert 2015 <= year <= 2026, p.source
        assert len(p.source.rsplit("(", 1)[0].strip()) > 8  # a title, not just a year
    assert "token-mixer" in builtin_pack_tasks()


def test_pack_covers_the_required_topics() -> None:
    text = " ".join(p.as_text().lower() for p in load_builtin_pack("token-mixer"))
    for topic in ["gate", "delta rule", "decay", "feature map", "convolution", "state expansion",
                  "norm", "chunk", "hybrid", "sliding"]:
        assert topic in text, topic


def test_invalid_pack_lines_name_the_line(tmp_path) -> None:
    good = json.loads(pack_path("token-mixer").read_text().splitlines()[0])
    bad = dict(good, source="Some paper without a year")
    path = tmp_path / "pack.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"pack.jsonl line 2: .*Title \(YEAR\)"):
        load_pack_file(path)
    path.write_text(json.dumps(dict(good, extra="x")) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        load_pack_file(path)


def test_tasks_without_a_pack_get_none() -> None:
    assert load_builtin_pack("nas-bench-201") == []
