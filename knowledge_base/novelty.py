"""Novelty of candidate code: a normalised hash for exact duplicates and a similarity score.

``normalized_code_hash`` hashes the program's AST after normalisation, so two programs that
differ only in formatting, comments, docstrings or the names of local variables hash equal:

- comments and formatting disappear when parsing; the tree is printed back with
  ``ast.unparse``, which also fixes quote style and parentheses;
- docstrings and other bare string statements are removed (a body left empty gets ``pass``);
- inside each function, local variables are renamed to ``_v0, _v1, ...`` in order of first
  appearance, only where that cannot change behaviour: parameters (callers may pass them by
  keyword), globals/nonlocals, names also used by a nested function, lambda or class, names
  bound by imports, ``def``/``class``, ``except ... as`` or ``match`` patterns, and every name
  in a function that calls ``locals``/``vars``/``eval``/``exec``/``dir`` keep their names.
  Module- and class-level names (the task's interface) are never renamed.

Code that does not parse falls back to a hash of its whitespace-normalised text (prefixed
differently, so it can never equal an AST hash).

``similarity`` is the Jaccard index of the sets of 4-token shingles of the normalised sources,
in [0, 1]. Fingerprints are cached (LRU), so comparing one program against ~1000 archived ones
costs one set intersection each; ``NoveltyIndex`` keeps an archive's fingerprints explicitly.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Hashable, Iterable
from functools import lru_cache

SHINGLE = 4
_CACHE_SIZE = 8192
_DYNAMIC_SCOPE = frozenset({"locals", "vars", "eval", "exec", "dir"})
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\S")


# --- normalisation ---------------------------------------------------------------------------


def _strip_strings(tree: ast.AST) -> None:
    """Drop bare string statements (docstrings included) from every body."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [
                s for s in body
                if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                        and isinstance(s.value.value, str))
            ]
            if len(kept) != len(body):
                setattr(node, field, kept or ([ast.Pass()] if field == "body" else []))


def _own_scope(fn: ast.AST) -> Iterable[ast.AST]:
    """Nodes of ``fn``'s body in source order, not descending into nested scopes
    (the nested def/lambda/class node itself is yielded)."""
    stack = list(reversed(fn.body if isinstance(fn.body, list) else [fn.body]))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, _SCOPES):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _comp_targets(comp: ast.AST) -> set[str]:
    return {n.id for g in comp.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}


def _comprehension_leaks(fn: ast.AST, comp_only: set[str]) -> set[str]:
    """Names bound only by comprehension targets but also read outside a comprehension that
    binds them (there they name a global, so renaming would change behaviour)."""
    unsafe: set[str] = set()

    def visit(node: ast.AST, bound: frozenset[str]) -> None:
        if isinstance(node, _SCOPES):
            return
        if isinstance(node, _COMPS):
            visit(node.generators[0].iter, bound)  # evaluated in the enclosing scope
            inner = bound | _comp_targets(node)
            for i, gen in enumerate(node.generators):
                visit(gen.target, inner)
                if i:
                    visit(gen.iter, inner)
                for cond in gen.ifs:
                    visit(cond, inner)
            for part in ("elt", "key", "value"):
                if hasattr(node, part):
                    visit(getattr(node, part), inner)
            return
        if isinstance(node, ast.Name) and node.id in comp_only and node.id not in bound:
            unsafe.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child, bound)

    for stmt in fn.body:
        visit(stmt, frozenset())
    return unsafe


def _rename_locals(fn: ast.FunctionDef | ast.AsyncFunctionDef, taken: set[str]) -> None:
    nodes = list(_own_scope(fn))
    keep = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    order: dict[str, None] = {}
    comp_bound: set[str] = set()
    comp_target_nodes: set[int] = set()  # Name nodes that are comprehension targets
    plain_bound: set[str] = set()
    for node in nodes:
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            keep.update(node.names)
        elif isinstance(node, _SCOPES):
            keep.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
            if not isinstance(node, ast.Lambda):
                keep.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            keep.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            keep.add(node.name)
        elif isinstance(node, ast.Match):
            return  # pattern captures are plain strings; leave the function alone
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in _DYNAMIC_SCOPE):
            return
        elif isinstance(node, _COMPS):
            comp_bound |= _comp_targets(node)
            comp_target_nodes.update(
                id(n) for g in node.generators for n in ast.walk(g.target)
                if isinstance(n, ast.Name)
            )
        elif isinstance(node, ast.Name):
            order.setdefault(node.id, None)
            if isinstance(node.ctx, (ast.Store, ast.Del)) and id(node) not in comp_target_nodes:
                plain_bound.add(node.id)
    comp_only = comp_bound - plain_bound
    keep |= _comprehension_leaks(fn, comp_only)
    local = (plain_bound | comp_only) - keep
    mapping: dict[str, str] = {}
    for name in order:
        if name in local:
            new = f"_v{len(mapping)}"
            while new in taken:
                new = "_" + new
            mapping[name] = new
    if not mapping:
        return
    for node in nodes:
        if isinstance(node, ast.Name) and node.id in mapping:
            node.id = mapping[node.id]


def normalized_source(code: str) -> str | None:
    """The normalised program text, or None when ``code`` does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    _strip_strings(tree)
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    taken |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _rename_locals(node, taken)
    try:
        return ast.unparse(tree)
    except (RecursionError, ValueError):
        return None


def _text_fallback(code: str) -> str:
    return " ".join(code.split())


@lru_cache(maxsize=_CACHE_SIZE)
def _normalized(code: str) -> tuple[str, str]:
    source = normalized_source(code)
    if source is None:
        return "txt", _text_fallback(code)
    return "ast", source


def normalized_code_hash(code: str) -> str:
    """sha256 hex digest of the normalised program (64 characters)."""
    kind, text = _normalized(code)
    return hashlib.sha256(f"{kind}\n{text}".encode()).hexdigest()


# --- similarity ------------------------------------------------------------------------------


@lru_cache(maxsize=_CACHE_SIZE)
def fingerprint(code: str) -> frozenset[int]:
    """The set of hashed 4-token shingles of the normalised program."""
    tokens = _TOKEN.findall(_normalized(code)[1])
    if len(tokens) <= SHINGLE:
        return frozenset({hash(tuple(tokens))})
    return frozenset(hash(tuple(tokens[i:i + SHINGLE])) for i in range(len(tokens) - SHINGLE + 1))


def _jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def similarity(code_a: str, code_b: str) -> float:
    """How alike two programs are once normalised, in [0, 1] (1: same normalised text)."""
    if _normalized(code_a) == _normalized(code_b):
        return 1.0
    return _jaccard(fingerprint(code_a), fingerprint(code_b))


class NoveltyIndex:
    """An archive of programs' fingerprints for repeated nearest-neighbour queries."""

    def __init__(self) -> None:
        self._prints: dict[Hashable, frozenset[int]] = {}
        self._hashes: dict[str, Hashable] = {}

    def __len__(self) -> int:
        return len(self._prints)

    def add(self, key: Hashable, code: str) -> None:
        self._prints[key] = fingerprint(code)
        self._hashes.setdefault(normalized_code_hash(code), key)

    def exact(self, code: str) -> Hashable | None:
        """The key of an archived program with the same normalised hash, if any."""
        return self._hashes.get(normalized_code_hash(code))

    def most_similar(self, code: str, n: int = 1) -> list[tuple[Hashable, float]]:
        """The ``n`` archived programs most similar to ``code``, best first."""
        if self.exact(code) is not None and n == 1:
            return [(self._hashes[normalized_code_hash(code)], 1.0)]
        probe = fingerprint(code)
        scored = [(key, _jaccard(probe, fp)) for key, fp in self._prints.items()]
        scored.sort(key=lambda item: -item[1])
        return scored[:n]

    def max_similarity(self, code: str) -> tuple[Hashable | None, float]:
        """The most similar archived program and its similarity (``(None, 0.0)`` if empty)."""
        best = self.most_similar(code, 1)
        return best[0] if best else (None, 0.0)
