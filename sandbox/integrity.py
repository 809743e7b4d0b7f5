"""Run-time check that candidate code did not rewire the libraries the harness measures with.

The static policy rejects ``torch.nn.functional.cross_entropy = ...`` and its obvious
spellings, but aliasing through call results (``(lambda: F)().cross_entropy = ...``) cannot be
seen statically. Before the candidate is imported the harness keeps a reference to every
public callable held by a watched module (and the callables in the dictionaries of the
classes those modules define); after the import and after every stage it compares. An entry
(new or replaced) now holding a function, method, partial, property or object that was
created by candidate code fails the stage with kind ``policy``.

Replacements made by library code itself are not flagged: torch rewires some of its own
attributes when a lazy submodule is first imported (importing ``torch._dynamo`` wraps
``torch.manual_seed``), and those new values come from torch, not from the candidate.

Not covered: a patch applied and reverted inside one stage, rewiring with library objects
only (e.g. ``F.cross_entropy = F.l1_loss``), in-place mutation of objects (a tensor
constant), and C-level state. The static policy makes reaching those objects hard in the
first place; containment of the host never depends on this check.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings

CANDIDATE_MODULE = "candidate"
CANDIDATE_FILENAME = "<candidate>"
WATCHED_TOP = frozenset({
    "torch", "math", "functools", "itertools", "operator", "collections", "typing",
    "dataclasses", "enum", "abc", "numbers", "builtins", "einops", "random", "time", "json",
    "hmac", "hashlib", "evaluator", "sandbox",
})
_PLAIN = (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, type,
          types.MethodType, types.BuiltinMethodType, staticmethod, classmethod, property,
          functools.partial)


def _public_callables(namespace: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in list(namespace.items()):
        if key.startswith("_") and not (key.startswith("__") and key.endswith("__")):
            continue
        if isinstance(value, _PLAIN) or callable(value):
            out[key] = value  # a reference, so the id cannot be reused
    return out


def from_candidate(value: object, depth: int = 0) -> bool:
    """Was ``value`` made by candidate code? Looks only at C-level fields and dictionaries,
    so it never runs candidate code (no ``__getattr__`` or property of the candidate's)."""
    if depth > 4:
        return False
    if isinstance(value, types.FunctionType):
        if value.__code__.co_filename == CANDIDATE_FILENAME or value.__module__ == CANDIDATE_MODULE:
            return True
        wrapped = value.__dict__.get("__wrapped__")
        return wrapped is not None and from_candidate(wrapped, depth + 1)
    if isinstance(value, functools.partial):
        return from_candidate(value.func, depth + 1)
    if isinstance(value, types.MethodType | staticmethod | classmethod):
        return from_candidate(value.__func__, depth + 1)
    if isinstance(value, property):
        return any(from_candidate(f, depth + 1) for f in (value.fget, value.fset) if f)
    cls = value if isinstance(value, type) else type(value)
    try:
        return type.__getattribute__(cls, "__dict__").get("__module__") == CANDIDATE_MODULE
    except (AttributeError, TypeError):
        return False


class ModuleSnapshot:
    """References to the watched modules' public callables, taken incrementally."""

    def __init__(self, extra_top: frozenset[str] = frozenset()):
        self._watched = WATCHED_TOP | extra_top
        self._modules: dict[str, dict[str, object]] = {}
        self._classes: dict[int, tuple[str, type, dict[str, object]]] = {}

    def _wants(self, name: str) -> bool:
        return name.split(".")[0] in self._watched

    def extend(self) -> None:
        """Record every watched module loaded since the last call."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, module in list(sys.modules.items()):
                if name in self._modules or module is None or not self._wants(name):
                    continue
                namespace = getattr(module, "__dict__", None)
                if not isinstance(namespace, dict):
                    continue
                self._modules[name] = _public_callables(namespace)
                for key, value in list(namespace.items()):
                    if not isinstance(value, type) or id(value) in self._classes:
                        continue
                    owner = str(vars(value).get("__module__", ""))
                    if self._wants(owner):
                        label = f"{owner}.{getattr(value, '__qualname__', key)}"
                        self._classes[id(value)] = (label, value,
                                                    _public_callables(dict(vars(value))))

    def changes(self, limit: int = 5) -> list[str]:
        """Entries now holding something the candidate made (at most ``limit``)."""
        found: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, recorded in self._modules.items():
                module = sys.modules.get(name)
                namespace = getattr(module, "__dict__", None) if module is not None else None
                if not isinstance(namespace, dict):
                    continue
                found += _candidate_made(name, namespace, recorded)
                if len(found) >= limit:
                    return found[:limit]
            for label, cls, recorded in self._classes.values():
                # New keys count too: a class attribute shadows an inherited method.
                found += _candidate_made(label, vars(cls), recorded)
                if len(found) >= limit:
                    return found[:limit]
        return found


def _candidate_made(label: str, namespace: object, recorded: dict[str, object]) -> list[str]:
    out = []
    for key, now in list(namespace.items()):  # type: ignore[attr-defined]
        if now is not recorded.get(key, _MISSING) and from_candidate(now):
            out.append(f"{label}.{key}")
    return out


_MISSING = object()
