"""Run-time check that candidate code did not rewire the libraries the harness measures with.

The static policy rejects ``torch.nn.functional.cross_entropy = ...`` and its obvious
spellings, but aliasing through call results (``(lambda: F)().cross_entropy = ...``) cannot be
seen statically. Before the candidate is imported the harness records the identity of every
public function, class and module held by a watched module (and the callables in the
dictionaries of classes those modules define); after the import and after every stage it
compares. Any replaced or deleted entry fails the stage with kind ``policy``.

Not covered: changes that are undone before the check runs (a patch applied and reverted
inside one stage), in-place mutation of objects (e.g. a tensor constant), and changes to C
state. The static policy is what makes reaching those objects hard in the first place.
"""

from __future__ import annotations

import sys
import types
import warnings

WATCHED_TOP = frozenset({
    "torch", "math", "functools", "itertools", "operator", "collections", "typing",
    "dataclasses", "enum", "abc", "numbers", "builtins", "einops", "random", "time", "json",
    "hmac", "hashlib", "evaluator", "sandbox",
})
_PLAIN = (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, type,
          types.MethodType, types.BuiltinMethodType, staticmethod, classmethod, property)


def _public_callables(namespace: dict) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in list(namespace.items()):
        if key.startswith("_") and not (key.startswith("__") and key.endswith("__")):
            continue
        if isinstance(value, _PLAIN) or callable(value):
            out[key] = value  # a reference, so the id cannot be reused
    return out


class ModuleSnapshot:
    """Identities of the watched modules' public callables, taken incrementally."""

    def __init__(self, extra_top: frozenset[str] = frozenset()):
        self._watched = WATCHED_TOP | extra_top
        self._modules: dict[str, dict[str, object]] = {}
        self._classes: dict[tuple[str, str], tuple[type, dict[str, object]]] = {}

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
                    if type(value) is type and getattr(value, "__module__", None) == name:
                        self._classes[(name, key)] = (value, _public_callables(dict(vars(value))))

    def changes(self, limit: int = 5) -> list[str]:
        """Entries replaced or deleted since they were recorded (at most ``limit``)."""
        found: list[str] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, recorded in self._modules.items():
                module = sys.modules.get(name)
                namespace = getattr(module, "__dict__", None) if module is not None else None
                if not isinstance(namespace, dict):
                    continue
                for key, value in recorded.items():
                    if key not in namespace or namespace[key] is not value:
                        found.append(f"{name}.{key}")
                        if len(found) >= limit:
                            return found
            for (name, cls_name), (cls, recorded) in self._classes.items():
                namespace = vars(cls)
                for key, value in recorded.items():
                    if key not in namespace or namespace[key] is not value:
                        found.append(f"{name}.{cls_name}.{key}")
                        if len(found) >= limit:
                            return found
        return found
