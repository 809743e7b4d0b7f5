"""Task registry: built-in tasks by name, third-party tasks through the
``archdisco.tasks`` entry-point group.

A task is constructed from its name and the ``[task.options]`` table of a campaign config, in
the driver and again inside every sandbox child, so construction must be cheap and pure.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from evaluator.types import Task

# Built-ins are listed here too so a source checkout works without an installed distribution.
_BUILTIN: dict[str, str] = {
    "token-mixer": "evaluator.token_mixer:TokenMixerTask",
}


class UnknownTaskError(ValueError):
    pass


def _targets() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group="archdisco.tasks"):
        found.setdefault(ep.name, ep.value)
    return found


def task_names() -> list[str]:
    return sorted(_targets())


def get_task_factory(name: str) -> Any:
    """The class (or callable) that builds task ``name``; raises UnknownTaskError."""
    targets = _targets()
    if ":" in name:  # "package.module:Factory" names a task directly (plugins, tests)
        targets = {**targets, name: name}
    if name not in targets:
        raise UnknownTaskError(f"unknown task {name!r}; available: {', '.join(sorted(targets))}")
    module_name, _, attr = targets[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def get_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """Build task ``name`` with ``options``; raises UnknownTaskError / ValueError with one line."""
    return get_task_factory(name)(**dict(options or {}))
