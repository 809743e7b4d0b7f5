"""Entry point of a sandbox child: ``python -m sandbox.runner --request-fd N --result-fd M``.

Order of events (nothing from the candidate is read before isolation is complete):
1. close every inherited fd but stdio and the two pipes; move the result pipe to a high fd,
   close-on-exec; read the ``SpawnConfig`` line (HMAC key, isolation settings);
2. isolate (``sandbox.isolation``): namespaces, private read-only file system, unique uid,
   no_new_privs, seccomp, Landlock. With a PID namespace there are three processes: the
   first stays outside as a monitor, PID 1 inside only waits, the harness is PID 2 (both
   confined by the same no_new_privs / seccomp / Landlock layers); the
   harness's wait status travels back over a pipe and the monitor exits the same way (same
   signal or code), so the driver reads the real exit cause from its own ``wait4``;
3. import torch and the other preloads (a ``module:function`` preload is also called: the
   task's warm-up, e.g. CUDA initialisation), bind the harness's own references, take the
   module snapshot, send a signed ``ready`` frame (a warm pool child waits here);
4. read the ``LaunchRequest`` line, close the request pipe, apply the rlimits, set torch's
   thread count, run the harness, send ``done`` and exit with ``os._exit``.
Any failure of steps 1-4 that is not the candidate's is reported as an ``error`` frame (or a
nonzero exit before ``ready``), which the driver raises as ``SandboxError`` (kind ``infra``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import resource
import signal
import struct
import sys
import traceback
from collections.abc import Callable

from pydantic import BaseModel

from sandbox import isolation, syscalls
from sandbox.protocol import (DoneEvent, ErrorEvent, LaunchRequest, ReadyEvent, SpawnConfig,
                              encode_event, make_frame)

HIDDEN_FD_MIN = 900
EXIT_SETUP_FAILED = 70


class _LineReader:
    """Reads newline-terminated messages from the request pipe."""

    def __init__(self, fd: int):
        self.fd = fd
        self._buf = b""

    def line(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                raise EOFError("the driver closed the request pipe")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line


def _close_other_fds(keep: set[int]) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _hide(fd: int) -> int:
    """Move ``fd`` to a high, close-on-exec descriptor (out of reach of dup2 once
    RLIMIT_NOFILE is lowered below it)."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIDDEN_FD_MIN)
    except OSError:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def make_emitter(key: bytes, fd: int) -> Callable[[BaseModel], None]:
    """A signing writer for the result pipe. The key lives only in this closure; a process
    forked by candidate code never reports (it exits on its first attempt)."""
    owner = os.getpid()
    getpid, write, exit_now = os.getpid, os.write, os._exit
    encode, frame = encode_event, make_frame
    seq = [0]

    def emit(event: BaseModel) -> None:
        if getpid() != owner:
            exit_now(0)
        data = memoryview(frame(key, seq[0], encode(event)))
        seq[0] += 1
        while data:
            data = data[write(fd, data):]

    return emit


def _mirror(status: int) -> None:
    """Exit the way a waited-for process did: by the same signal (without a core dump), or
    with the same code."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if syscalls.AVAILABLE:
            with contextlib.suppress(OSError):
                syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # no handler can be set for these two
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # only if the signal did not end this process (then read as a code)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def _outer_monitor(init: int, status_r: int) -> None:
    """The first process, outside the PID namespace: relay the harness's wait status (sent by
    the namespace's init over a pipe) so the driver sees the real exit cause."""
    data = b""
    while len(data) < 4:
        try:
            chunk = os.read(status_r, 4 - len(data))
        except InterruptedError:
            continue
        if not chunk:
            break
        data += chunk
    init_status = _wait(init)
    _mirror(struct.unpack("i", data)[0] if len(data) == 4 else init_status)


def _init_monitor(harness: int, status_w: int) -> None:
    """PID 1 of the namespace: wait for the harness, report its status, exit (which makes the
    kernel kill whatever else is left in the namespace)."""
    status = _wait(harness)
    with contextlib.suppress(OSError):
        os.write(status_w, struct.pack("i", status))
    os._exit(0)


def _isolate(spawn: SpawnConfig, request_fd: int, result_fd: int) -> tuple[str, dict, list[str]]:
    notes: list[str] = []
    fields: dict[str, object] = {}
    mode = isolation.enter_namespaces(spawn, notes)
    status_w = -1
    if mode != "none":
        fields.update(pid_namespace=True, net_namespace=True, mount_namespace=True)
        status_r, status_w = os.pipe()
        init = os.fork()  # becomes PID 1 of the new PID namespace
        if init:
            os.close(status_w)
            os.close(request_fd)
            os.close(result_fd)
            _outer_monitor(init, status_r)
        os.close(status_r)
    owner = spawn.uid if (os.geteuid() == 0 and spawn.uid is not None) else os.geteuid()
    if mode == "none" and os.geteuid() == 0 and any(
            isolation.blocked_ancestor(p) for p in spawn.read_paths):
        owner = 0  # see isolation.drop_identity: uid 0 without capabilities
    if mode != "none":
        workdir = isolation.setup_filesystem(spawn, fields, notes, owner)
    else:
        if not spawn.workdir:
            raise OSError("no working directory was given for an unnamespaced child")
        workdir = isolation.prepare_host_workdir(spawn.workdir, owner)
    isolation.drop_identity(mode, spawn, fields, notes)
    os.chdir(workdir)
    os.environ["HOME"] = workdir
    os.environ["TMPDIR"] = isolation.SANDBOX_TMP if mode != "none" else workdir
    fields["workdir"] = workdir
    if mode != "none":
        # The harness runs as an ordinary process (PID 2) under an init that only waits, so
        # signals and rlimits (SIGXCPU) act on it normally; init's exit ends the namespace.
        # Each of the two hardens itself after the fork: Landlock rules name the process's
        # own /proc/<pid>/task where a GPU needs it writable (isolation.harden).
        harness = os.fork()
        if harness:
            os.close(request_fd)
            os.close(result_fd)
            isolation.harden(spawn, workdir, True, {}, [])
            _init_monitor(harness, status_w)
        os.close(status_w)
        if syscalls.AVAILABLE:
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    isolation.harden(spawn, workdir, mode != "none", fields, notes)
    return mode, fields, notes


def _preload(entry: str) -> None:
    """Import ``module``, or import ``module:function`` and call ``function()``: trusted
    package code that warms the process (imports, device set-up) before any request."""
    import importlib

    module, _, function = entry.partition(":")
    loaded = importlib.import_module(module)
    if function:
        getattr(loaded, function)()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sandbox.runner")
    parser.add_argument("--request-fd", type=int, required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    if syscalls.AVAILABLE:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != args.parent_pid:  # the driver died before we could notice
        os._exit(EXIT_SETUP_FAILED)
    _close_other_fds({0, 1, 2, args.request_fd, args.result_fd})
    result_fd = _hide(args.result_fd)
    request_fd = args.request_fd
    reader = _LineReader(request_fd)
    spawn = SpawnConfig.model_validate_json(reader.line())
    key = bytes.fromhex(spawn.key)
    emit: Callable[[BaseModel], None] | None = None
    try:
        mode, fields, notes = _isolate(spawn, request_fd, result_fd)
        emit = make_emitter(key, result_fd)  # after the fork: the harness is the owner
        report = isolation.build_report(mode, fields, notes)
        from sandbox.harness import Harness, HarnessError  # after isolation: imports torch deps
        from sandbox.integrity import ModuleSnapshot
        for entry in spawn.preload:
            _preload(entry)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(spawn.torch_threads)
        snapshot = ModuleSnapshot()
        snapshot.extend()
    except BaseException as exc:  # noqa: BLE001 - report, then exit
        detail = f"sandbox setup failed: {exc!r}\n{traceback.format_exc()[-2000:]}"
        (emit or make_emitter(key, result_fd))(ErrorEvent(message=detail))
        os._exit(EXIT_SETUP_FAILED)
    emit(ReadyEvent(isolation=report))
    try:
        launch = LaunchRequest.model_validate_json(reader.line())
        os.close(request_fd)
        isolation.apply_limits(launch.limits)
        Harness(emit, static_policy=launch.static_policy, snapshot=snapshot,
                torch_threads=launch.limits.torch_threads).run(launch.request)
    except HarnessError as exc:
        emit(ErrorEvent(message=str(exc)))
        os._exit(EXIT_SETUP_FAILED)
    except EOFError:
        os._exit(0)  # the driver gave this child back without using it
    except BaseException as exc:  # noqa: BLE001 - a harness bug; the candidate's are caught inside
        emit(ErrorEvent(message=f"harness failure: {exc!r}"))
        os._exit(EXIT_SETUP_FAILED)
    emit(DoneEvent())
    os._exit(0)


if __name__ == "__main__":
    main()
