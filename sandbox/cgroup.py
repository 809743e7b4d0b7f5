"""A memory cgroup of its own for each sandbox child, where the host lets the driver make one.

The child's whole process tree is charged to it, so the driver can tell what the kernel's OOM
killer did *to this child* (its ``oom_kill`` count) instead of reading the machine-wide count,
which rises for any process, and can report the tree's peak memory (resident and page cache,
as the cgroup charges it). A hard limit on the tree is a test switch for now
(``IsolationConfig.cgroup_limit_bytes``): the rlimits stay the per-process limit a campaign
sets.

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


def memory_cgroup_dirs(mountinfo: str, own: str) -> list[tuple[Path, int]]:
    """The directories of a process's memory cgroup with the cgroup version, cgroup v1's
    ``memory`` hierarchy first (on a hybrid host the controller is bound there, not in v2),
    from the text of its ``/proc/<pid>/mountinfo`` and ``/proc/<pid>/cgroup``."""
    paths: dict[int, str] = {}
    for line in own.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            paths[1] = parts[2]
        elif parts[0] == "0" and parts[1] == "":
            paths[2] = parts[2]
    found: dict[int, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        version = {"cgroup": 1, "cgroup2": 2}.get(fstype)
        if version is None or version in found or version not in paths:
            continue
        if version == 1 and "memory" not in options:
            continue
        # the mount shows the hierarchy from ``root``: our cgroup's place below it
        rel = os.path.relpath(paths[version], root)
        if rel.startswith(".."):
            rel = "."  # a cgroup namespace hides the path above: the mount's root is ours
        found[version] = Path(point) / rel
    return [(found[v], v) for v in sorted(found)]


def _own_cgroup_dirs() -> list[tuple[Path, int]]:
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    return [(d, v) for d, v in memory_cgroup_dirs(mountinfo, own) if d.is_dir()]


def read_key(path: Path, key: str) -> int | None:
    """``key N`` out of a flat-keyed file (a cgroup's ``memory.events``, /proc/vmstat), or
    None where it cannot be read."""
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
    def create(cls, parents: list[tuple[Path, int]] | None = None) -> MemoryCgroup | None:
        """A fresh cgroup below the driver's (``parents``: where to try, by default this
        process's memory cgroups), or None where the host does not allow one."""
        for parent, version in _own_cgroup_dirs() if parents is None else parents:
            if version == 2:
                try:
                    if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                        continue  # not delegated: enabling it would need our processes moved
                except OSError:
                    continue
            _sweep(parent)
            path = parent / f"{PREFIX}{os.getpid()}-{next(_counter)}"
            try:
                path.mkdir()
            except OSError:
                continue
            group = cls(path, version)
            if group.oom_kills() is not None:
                return group
            group.remove()  # no readable counter: the group is no use
        return None

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
        return read_key(self.path / name, "oom_kill")

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
