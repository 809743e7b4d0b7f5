"""Helpers shared by the token-mixer tests: load candidate source as a module, find fixtures."""

from __future__ import annotations

import types
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mixers"
CPU = torch.device("cpu")


def load_module(code: str, name: str = "candidate") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(code, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - trusted test code
    return module


def fixture(name: str) -> types.ModuleType:
    return load_module((FIXTURES / f"{name}.py").read_text(), name)
