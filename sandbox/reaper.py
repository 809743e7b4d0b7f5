"""Finding and killing what a sandbox child left behind, and removing files it wrote to
shared scratch directories. Used by the driver after every evaluation.

With a PID namespace nothing can survive the harness (the kernel kills the namespace), so
these scans are a second line. Without one (the ``none`` fallback) they are the line: a
``setsid`` escapee has left the process group, but it still runs as the child's unique uid
(when the driver is root) and still carries the child's environment marker (fork keeps the
environment block that /proc/PID/environ shows, unless the process re-execs with a new one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterable


def _live_uid(pid: str) -> int | None:
    """The real uid of a live process (None for zombies: they hold nothing but a pid)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            uid = None
            for line in fh:
                if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                    return None
                if line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
            return uid
    except (OSError, ValueError, IndexError):
        return None


def _has_marker(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return False


def find_strays(*, uid: int | None, marker: str | None) -> list[int]:
    """Live processes running as ``uid`` or carrying ``marker`` in their environment."""
    me = os.getpid()
    needle = marker.encode() if marker else None
    found: list[int] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if int(pid) == me:
            continue
        live_uid = _live_uid(pid)
        if live_uid is None:
            continue
        if (uid is not None and live_uid == uid) or (
                needle is not None and _has_marker(pid, needle)):
            found.append(int(pid))
    return found


def kill_strays(*, uid: int | None, marker: str | None, rounds: int = 50) -> int:
    """SIGKILL every stray until a scan finds none (forks racing the scan are caught by the
    next round; RLIMIT_NPROC bounds how many there can be). Returns how many were killed."""
    killed = 0
    for _ in range(rounds):
        strays = find_strays(uid=uid, marker=marker)
        if not strays:
            return killed
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.005)
    return killed


def remove_files_of(uid: int, directories: Iterable[str]) -> None:
    """Delete top-level entries owned by ``uid`` in shared scratch directories."""
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue
