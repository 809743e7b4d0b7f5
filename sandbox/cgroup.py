"""A memory cgroup of its own for each sandbox child, where the host lets the driver make one.

The child's whole process tree is charged to it, so the driver can tell what the kernel's OOM
killer did *to this child* (its ``oom_kill`` count) instead of reading the machine-wide count,
which rises for any process, and can report the tree's peak resident memory. A hard limit on
the tree is a test switch for now (``IsolationConfig.cgroup_limit_bytes``): the rlimits stay
the per-process limit a campaign sets.

Works with cgroup v1's ``memory`` hierarchy (``memory.oom_control``,
``memory.max_usage_in_bytes``, ``memory.limit_in_bytes``) and with cgroup v2 where the
driver's cgroup delegates the memory controller (``memory.events``, ``memory.peak``,
``memory.max``). Elsewhere (no permission, no controller) ``MemoryCgroup.create`` returns
None and the launcher falls back to the machine-wide count.

Each cgroup is named ``archdisco-<driver pid>-<n>`` and made below the driver's own, so the
limits above it still hold; one left behind by a driver that died is removed by the next
``create`` once it is empty. Under cgroup v2 a cgroup that holds processes cannot enable
controllers for its children, so there this works mainly for a driver in the root cgroup.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path

PREFIX = "archdisco-"
_counter = itertools.count()


def _own_cgroup_dir() -> tuple[Path, int] | None:
    """The directory of this process's memory cgroup and the cgroup version, or None."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1_path = v2_path = None
    for line in own:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            v1_path = parts[2]
        elif parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        for version, path in ((1, v1_path), (2, v2_path)):
            wanted = "cgroup" if version == 1 else "cgroup2"
            if path is None or fstype != wanted or (version == 1 and "memory" not in options):
                continue
            # the mount shows the hierarchy from ``root``: our cgroup's place below it
            rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
            if rel.startswith(".."):
                rel = ""  # a cgroup namespace hides the path above: the mount's root is ours
            directory = Path(point) / rel
            if directory.is_dir():
                return directory, version
    return None


def _read_key(path: Path, key: str) -> int | None:
    """``key N`` out of a flat-keyed cgroup file."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(parent: Path) -> None:
    """Remove empty cgroups that drivers which no longer run left behind."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            name = entry.name
            if not name.startswith(PREFIX):
                continue
            try:
                owner = int(name[len(PREFIX):].split("-")[0])
            except ValueError:
                continue
            if owner != os.getpid() and not _alive(owner):
                with contextlib.suppress(OSError):
                    entry.rmdir()  # fails while a process is still in it: left for later


class MemoryCgroup:
    """One child's memory cgroup (see the module docstring)."""

    def __init__(self, path: Path, version: int):
        self.path = path
        self.version = version

    @classmethod
    def create(cls) -> MemoryCgroup | None:
        """A fresh cgroup below the driver's, or None where the host does not allow one."""
        found = _own_cgroup_dir()
        if found is None:
            return None
        parent, version = found
        if version == 2:
            controllers = (parent / "cgroup.subtree_control")
            try:
                if "memory" not in controllers.read_text().split():
                    return None  # not delegated: enabling it here would move our own processes
            except OSError:
                return None
        _sweep(parent)
        path = parent / f"{PREFIX}{os.getpid()}-{next(_counter)}"
        try:
            path.mkdir()
        except OSError:
            return None
        group = cls(path, version)
        if group.oom_kills() is None:  # no readable counter: the group is no use
            group.remove()
            return None
        return group

    def attach(self, pid: int) -> bool:
        """Move ``pid`` into the group; processes it starts afterwards are born in it."""
        try:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
            return True
        except OSError:
            return False

    def usage_bytes(self) -> int | None:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return _read_int(self.path / name)

    def set_limit(self, nbytes: int) -> bool:
        """A hard limit on the tree's memory. Refused (False) below what it already uses,
        where cgroup v2 would OOM-kill at once."""
        usage = self.usage_bytes()
        if usage is None or usage >= nbytes:
            return False
        name = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        try:
            (self.path / name).write_text(f"{nbytes}\n")
            return True
        except OSError:
            return False

    def oom_kills(self) -> int | None:
        """Processes of this group the kernel's OOM killer has killed (for any cause: the
        group's limit or the machine running out)."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return _read_key(self.path / name, "oom_kill")

    def peak_bytes(self) -> int | None:
        """The most memory the group held at once (resident memory and page cache)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return _read_int(self.path / name)

    def remove(self, wait_s: float = 2.0) -> bool:
        """Delete the group once its processes are gone (they may take a moment to leave
        after being reaped)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
