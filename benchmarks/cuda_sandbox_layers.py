"""Which sandbox layer stops the CUDA driver? cuInit in a forked child under one layer at a time.

    python benchmarks/cuda_sandbox_layers.py      # on a GPU host, as root (needs libcuda.so.1)

Each row forks a child that sets no_new_privs, applies one variant of the sandbox's seccomp
filter (``sandbox.seccomp``: the full filter, the filter with only one refused call) or of its
Landlock rules (``sandbox.landlock``: everything readable, writes allowed in one place), then
calls ``cuInit(0)`` through ctypes and prints the CUresult (0 = success, 304 =
CUDA_ERROR_OPERATING_SYSTEM). This is how the two GPU relaxations of the sandbox were found
(docs/SECURITY.md, "GPU hosts"); the last rows are the rules the sandbox now applies.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import isolation, landlock, seccomp, syscalls  # noqa: E402


def cuinit_under(setup: Callable[[], None]) -> str:
    """CUresult of cuInit in a forked child after ``setup()`` (or the exception it raised)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: confine, then start the driver
        os.close(read)
        try:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
            setup()
            result = str(ctypes.CDLL("libcuda.so.1").cuInit(0))
        except Exception as exc:  # noqa: BLE001 - reported as the row's result
            result = f"error: {exc!r}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


def seccomp_with(refused: tuple[str, ...] | None, allow_unix: bool = False) -> Callable[[], None]:
    """The sandbox's filter, cut to the ``refused`` calls (None: all of them). ``clone`` always
    stays: the filter only refuses it with namespace flags."""
    def setup() -> None:
        if refused is not None:
            kept = {k: v for k, v in seccomp._SYSCALLS.items() if k in refused or k == "clone"}
            seccomp._SYSCALLS.clear()
            seccomp._SYSCALLS.update(kept)
        seccomp.install(allow_unix_sockets=allow_unix)
    return setup


def landlock_with(read: list[str], write: list[str]) -> Callable[[], None]:
    """Landlock with ``read`` readable and /tmp, /dev/shm and ``write`` writable ("{self}" in a
    path is the child's own pid), the GPU nodes usable."""
    gpus = isolation.gpu_devices()
    return lambda: landlock.restrict(
        read, ["/tmp", "/dev/shm", *(w.format(self=os.getpid()) for w in write)], gpus)


def main() -> None:
    harness_reads = isolation.default_read_paths([os.getcwd()]) + ["/proc"]
    rows: list[tuple[str, Callable[[], None]]] = [
        ("nothing", lambda: None),
        ("seccomp: full filter", seccomp_with(None)),
        *((f"seccomp: only {name} refused", seccomp_with((name,)))
          for name in seccomp._SYSCALLS if name != "clone"),
        ("landlock: harness reads", landlock_with(harness_reads, [])),
        ("landlock: read everything", landlock_with(["/"], [])),
        *((f"landlock: read everything, write {d}", landlock_with(["/"], [d]))
          for d in ("/proc", "/dev", "/sys", "/run", "/var", "/etc", "/usr")),
        ("landlock: read everything, write /proc/<own pid>/task", landlock_with(["/"], ["/proc/{self}/task"])),
        ("landlock: read everything, write /proc/<own pid>/comm", landlock_with(["/"], ["/proc/{self}/comm"])),
        ("sandbox now: seccomp with AF_UNIX allowed", seccomp_with(None, allow_unix=True)),
        ("sandbox now: landlock harness reads, write /proc", landlock_with(harness_reads, ["/proc"])),
    ]
    print(f"cuInit per layer variant (Landlock ABI {landlock.abi_version()}, pid {os.getpid()})")
    for name, setup in rows:
        print(f"{name:70} {cuinit_under(setup)}", flush=True)


if __name__ == "__main__":
    main()
