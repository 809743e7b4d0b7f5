"""Normalised code hash (exact duplicates) and similarity (near duplicates)."""

from __future__ import annotations

import textwrap

import pytest

from knowledge_base import novelty
from knowledge_base.novelty import (
    NoveltyIndex,
    normalized_code_hash,
    normalized_source,
    similarity,
)

BASE = textwrap.dedent(
    '''
    """A linear-attention mixer."""
    import torch
    from torch import nn


    class Mixer(nn.Module):
        """Chunked linear attention."""

        def __init__(self, hidden_size: int, num_heads: int, **kw):
            super().__init__()
            self.qkv = nn.Linear(hidden_size, 3 * hidden_size)  # fused projection
            self.heads = num_heads

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            scores = torch.einsum("btd,bsd->bts", q, k)
            weights = [w * 2 for w in range(3)]
            out = scores.tril() @ v
            return out
    '''
)

REFORMATTED = textwrap.dedent(
    """
    import torch
    from torch import nn
    class Mixer(nn.Module):
        def __init__(self, hidden_size: int, num_heads: int, **kw):
            # a comment that says nothing
            super().__init__()
            self.qkv = nn.Linear(hidden_size,
                                 3*hidden_size)
            self.heads = num_heads
        def forward(self, x):
            'another docstring, other quotes'
            query, key, value = self.qkv(x).chunk(3, dim = -1)
            s = torch.einsum('btd,bsd->bts', query, key)
            ws = [i * 2 for i in range(3)]
            result = (s.tril()) @ value
            return result
    """
)


def test_hash_ignores_formatting_comments_docstrings_and_local_names() -> None:
    h = normalized_code_hash(BASE)
    assert len(h) == 64 and int(h, 16) >= 0
    assert normalized_code_hash(REFORMATTED) == h
    assert similarity(BASE, REFORMATTED) == 1.0


def test_hash_sees_real_changes() -> None:
    h = normalized_code_hash(BASE)
    for changed in (
        BASE.replace("scores.tril()", "scores.triu()"),  # a different computation
        BASE.replace("3 * hidden_size", "4 * hidden_size"),
        BASE.replace("self.heads = num_heads", "self.n_heads = num_heads"),  # attribute name
        BASE.replace("def forward(self, x)", "def forward(self, inputs)").replace("qkv(x)", "qkv(inputs)"),
        BASE.replace("class Mixer", "class Mixer2"),  # the interface name
    ):
        assert normalized_code_hash(changed) != h


def test_renaming_is_only_done_where_safe() -> None:
    # `x` in `return x` is a global, not the comprehension variable: it must keep its name
    code = "def f():\n    y = [x for x in range(3)]\n    return x\n"
    src = normalized_source(code)
    assert src is not None and "_v0 = [x for x in range(3)]" in src and "return x" in src
    # a comprehension variable used only inside its comprehension is renamed
    assert "[_v0 for _v0 in range(3)]" in normalized_source("def f():\n    return [k for k in range(3)]\n")
    # globals, closures and dynamic scope keep their names
    assert "total" in normalized_source("def f():\n    global total\n    total = 1\n")
    closure = "def f():\n    acc = 0\n    def g():\n        return acc\n    return g\n"
    assert "acc" in normalized_source(closure)
    assert "val" in normalized_source("def f():\n    val = 1\n    return locals()\n")
    # parameters are part of the interface (keyword calls)
    assert "hidden_size" in normalized_source(BASE)


def test_unparseable_code_falls_back_to_text_hash() -> None:
    broken = "def f(:\n    return   1\n"
    assert normalized_source(broken) is None
    assert normalized_code_hash(broken) == normalized_code_hash("def   f(:\n\treturn 1")
    assert normalized_code_hash(broken) != normalized_code_hash("def f(:\n    return 2\n")
    assert 0.0 <= similarity(broken, BASE) < 0.2


def test_similarity_is_graded_and_symmetric() -> None:
    small_edit = BASE.replace("scores.tril()", "scores.tril().softmax(-1)")
    unrelated = "def solve(problem, llm):\n    return llm.sample(problem)[0]\n"
    near = similarity(BASE, small_edit)
    far = similarity(BASE, unrelated)
    assert 0.6 < near < 1.0
    assert 0.0 <= far < 0.1
    assert similarity(small_edit, BASE) == near
    assert similarity("", "") == 1.0


def _variant(i: int) -> str:
    return BASE.replace("3 * hidden_size", f"{i % 7 + 2} * hidden_size").replace(
        "range(3)", f"range({i})"
    ) + f"\n\nCONST_{i} = {i}\n" + "\n".join(f"def helper_{i}_{j}(a):\n    return a * {j}\n"
                                             for j in range(i % 5))


def test_index_finds_nearest_and_exact() -> None:
    index = NoveltyIndex()
    for i in range(50):
        index.add(i, _variant(i))
    assert len(index) == 50
    probe = _variant(17).replace("# fused projection", "")  # comment-only change
    assert index.exact(probe) == 17
    assert index.max_similarity(probe) == (17, 1.0)
    key, score = index.max_similarity(_variant(17).replace("tril()", "tril(1)"))
    assert key == 17 and 0.8 < score < 1.0
    assert NoveltyIndex().max_similarity(BASE) == (None, 0.0)
    top = index.most_similar(probe, 3)
    assert top[0][0] == 17 and top[0][1] >= top[1][1] >= top[2][1]


def test_a_query_fingerprints_the_probe_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive's fingerprints are computed once, when programs are added: a query against
    a thousand programs fingerprints the probe alone and agrees with pairwise similarity."""
    archive = [_variant(i) for i in range(1000)]
    index = NoveltyIndex()
    for i, code in enumerate(archive):
        index.add(i, code)
    probe = _variant(123).replace("tril()", "tril(-1)")
    calls = []
    real = novelty.fingerprint
    monkeypatch.setattr(novelty, "fingerprint", lambda code: calls.append(code) or real(code))
    key, score = index.max_similarity(probe)
    assert calls == [probe]
    monkeypatch.undo()
    assert key == 123 and score == max(similarity(probe, code) for code in archive)
