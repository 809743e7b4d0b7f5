"""``benchmarks/with_mps.sh``: a private MPS daemon around a command (a stand-in
``nvidia-cuda-mps-control`` on PATH records what the script asks of it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "with_mps.sh"
PROBE = "import os, sys; print('pipe=' + os.environ.get('CUDA_MPS_PIPE_DIRECTORY', '')); sys.exit(3)"


def _fake_control(bin_dir: Path, log: Path, start_ok: bool) -> None:
    bin_dir.mkdir()
    tool = bin_dir / "nvidia-cuda-mps-control"
    tool.write_text(f"#!/bin/sh\necho \"$* $(cat 2>/dev/null) $CUDA_MPS_PIPE_DIRECTORY\" >> {log}\n"
                    f"exit {0 if start_ok else 1}\n")
    tool.chmod(0o755)


def _run(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), sys.executable, "-c", PROBE], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_the_command_runs_beside_a_private_daemon_that_is_stopped_after(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    _fake_control(tmp_path / "bin", log, start_ok=True)
    out = _run(tmp_path / "bin")
    assert out.returncode == 3, out.stderr  # the command's status
    pipe = out.stdout.strip().removeprefix("pipe=")
    assert "archdisco-mps." in pipe, out.stdout
    start, stop = log.read_text().splitlines()
    assert start.split()[0] == "-d" and start.split()[-1] == pipe
    assert stop.split() == ["quit", pipe]  # the quit went to the same daemon
    assert not Path(pipe).parent.exists()  # the private directory is gone


def test_without_a_daemon_the_command_runs_alone(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    _fake_control(tmp_path / "bin", log, start_ok=False)
    out = _run(tmp_path / "bin")
    assert out.returncode == 3 and out.stdout.strip() == "pipe=", out.stdout
    assert "no MPS daemon" in out.stderr
    assert len(log.read_text().splitlines()) == 1  # the failed start; no quit


def test_a_terminated_run_stops_the_command_and_the_daemon(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    _fake_control(tmp_path / "bin", log, start_ok=True)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(["bash", str(SCRIPT), sys.executable, "-c", code], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        proc.terminate()  # as `timeout` ends it
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["-d", "quit"]
