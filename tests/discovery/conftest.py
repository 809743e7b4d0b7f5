"""Fixtures for CLI tests: a small real campaign shared by the read-command tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.discovery.llm_script import FAST_TASK_OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def disco(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600,
          check: bool = False) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "discovery.cli.main", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"disco {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def small_config(path: Path, name: str, n: int, extra: str = "") -> Path:
    path.write_text(
        f'name = "{name}"\n[budget]\nmax_evaluations = {n}\n[runner]\nkind = "inline"\n'
        f"max_in_flight = 2\n{extra}{FAST_TASK_OPTIONS}"
    )
    return path


@pytest.fixture(scope="session")
def small_campaign(tmp_path_factory) -> Path:
    """A finished 4-evaluation campaign in <dir>/disco.db; returns <dir>."""
    d = tmp_path_factory.mktemp("campaign")
    cfg = small_config(d / "c.toml", "small", 4)
    disco("run", str(cfg), "--db", str(d / "disco.db"), cwd=d, check=True)
    return d
