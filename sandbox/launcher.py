"""Driver side of the sandbox: start an isolated child, hand it one request, watch it, kill it,
classify how it ended, clean up after it.

A ``Child`` is started (``spawn``), becomes ready once isolated and warm (``wait_ready``),
then serves exactly one ``evaluate`` call and is destroyed. The driver alone decides about
time: each ``stage_start`` frame arms that stage's ``timeout_s`` (the driver's own copy of
the request, not the child's claim), and the whole evaluation has a wall-clock limit; on
expiry the process group is SIGKILLed, which takes the PID namespace with it (and, in the
no-namespace fallback, every process of the child's unique uid or carrying its environment
marker is hunted down in /proc). Output (stdout + stderr) is drained by a thread into a
bounded tail buffer so that a flood can neither block the child nor fill the driver's memory.

How an evaluation ended, in order of precedence: a harness ``error`` frame -> SandboxError
(the caller maps it to ``infra``); a frame that fails verification -> ``policy``; the driver's
deadline -> ``timeout``; SIGXCPU (or SIGKILL after the CPU budget) -> ``timeout``; any other
signal -> ``killed``, or ``oom`` when the child died of SIGKILL while the kernel's OOM killer
struck it: counted in the child's own memory cgroup where the host allows one
(``sandbox.cgroup``), else by the machine-wide count (``oom_kill`` in /proc/vmstat), which
rises for any process (a namespaced child's monitor dies of the signal that killed the
harness, so an exit code of 137 is the candidate's own); an exit without a ``done`` frame ->
``import`` during load, else ``runtime``. Otherwise ``oom`` comes from the harness, which sees
the allocator's error type.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from evaluator.types import FailureKind, StageResult
from sandbox import isolation
from sandbox.api import EvalOutcome, EvalRequest, SandboxLimits
from sandbox.cgroup import MemoryCgroup, read_key
from sandbox.protocol import (DoneEvent, ErrorEvent, FrameReader, IsolationReport,
                              LaunchRequest, Mode, ReadyEvent, ResolvedLimits, SpawnConfig,
                              StageResultEvent, StageStartEvent, TamperError)
from sandbox.reaper import kill_strays, remove_files_of

PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
# Default memory limit: this fraction of physical RAM (issue 3: at most half). torch's CPU
# import needs ~0.6 GB of address space (measured: VmPeak 520-660 MB with torch 2.13 CPU).
DEFAULT_MEMORY_FRACTION = 0.5
MIN_MEMORY_BYTES = 1 << 30
WALL_SLACK_S = 10.0
EXIT_GRACE_S = 2.0


class SandboxError(RuntimeError):
    """The sandbox platform failed (not the candidate): the caller records ``infra``."""


class IsolationConfig(BaseModel):
    """How children are isolated. The defaults are what production uses; the switches exist
    so tests can exercise each fallback and each layer on its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "auto"
    simulate_unprivileged: bool = False
    seccomp: bool = True
    landlock: bool = True
    socket_layer: bool = True
    preload: tuple[str, ...] = ()
    extra_read_paths: tuple[str, ...] = ()
    spawn_timeout_s: float = 120.0
    tmpfs_bytes: int = 512 * 1024 * 1024
    memory_cgroup: bool = True  # a memory cgroup per child where the host allows (sandbox.cgroup)
    cgroup_limit_bytes: int | None = None  # a hard limit on the child's whole process tree


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def oom_kills() -> int | None:
    """Processes the kernel's OOM killer has killed since boot (``oom_kill`` in /proc/vmstat,
    Linux 4.13+), or None where the count cannot be read. The machine's memory running out
    ends a child with SIGKILL, which alone cannot be told from any other SIGKILL."""
    return read_key(Path("/proc/vmstat"), "oom_kill")


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def resolve_limits(request: EvalRequest, limits: SandboxLimits) -> tuple[ResolvedLimits, float]:
    """Concrete limits for one evaluation, and its whole wall-clock budget in seconds."""
    wall = limits.wall_timeout_s or (limits.load_timeout_s + WALL_SLACK_S
                                     + sum(s.timeout_s for s in request.stages))
    if limits.memory_bytes is not None:
        memory = limits.memory_bytes
    elif request.target.memory_limit_gb is not None:
        memory = int(request.target.memory_limit_gb * (1 << 30))
    else:
        memory = int(physical_memory_bytes() * DEFAULT_MEMORY_FRACTION)
    cpu = limits.cpu_seconds or int(math.ceil(wall * max(1, limits.torch_threads))) + 5
    resolved = ResolvedLimits(memory_bytes=max(memory, MIN_MEMORY_BYTES), cpu_seconds=cpu,
                              address_space=request.target.device != "cuda",
                              max_processes=limits.max_processes,
                              max_file_bytes=limits.max_file_bytes,
                              max_open_files=limits.max_open_files,
                              torch_threads=limits.torch_threads)
    return resolved, wall


class TailBuffer:
    """Keeps the last ``capacity`` bytes written to it, counting what it dropped."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.total = 0
        self._data = bytearray()
        self._lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            self._data += chunk[-self.capacity:]
            if len(self._data) > self.capacity:
                del self._data[: len(self._data) - self.capacity]

    def text(self) -> str:
        with self._lock:
            dropped = self.total - len(self._data)
            body = self._data.decode("utf-8", errors="replace")
        return f"[... {dropped} earlier bytes dropped ...]\n{body}" if dropped else body


def _pump(fd: int, tail: TailBuffer) -> None:
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            return
        if not chunk:
            return
        tail.add(chunk)


class Child:
    """One isolated sandbox process, used for exactly one evaluation."""

    def __init__(self, config: IsolationConfig | None = None, *, torch_threads: int = 1,
                 max_output_bytes: int = SandboxLimits().max_output_bytes):
        self.config = config or IsolationConfig()
        self.torch_threads = torch_threads
        self.tail = TailBuffer(max_output_bytes)
        self.report: IsolationReport | None = None
        self.uid: int | None = None
        self.marker = secrets.token_hex(12)
        self._key = secrets.token_bytes(32)
        self._reader = FrameReader(self._key)
        self._proc: subprocess.Popen[bytes] | None = None
        self._status: tuple[int, float] | None = None  # (exit code, CPU seconds)
        self._workdir = ""
        self._fds: dict[str, int] = {}
        self._pidfd = -1
        self._pump: threading.Thread | None = None
        self._used = False
        self._oom_kills: int | None = None  # the kernel's OOM-kill count when the request went out
        self._cgroup: MemoryCgroup | None = None  # this child's own memory cgroup, if any
        self._cgroup_limit: int | None = None  # the hard limit set on it, if any
        self.gpus: tuple[str | None, ...] = ()  # the GPU variables it was spawned with

    # ------------------------------------------------------------------ start
    def spawn(self) -> Child:
        self.gpus = isolation.gpu_assignment(os.environ)
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        self._workdir = tempfile.mkdtemp(prefix="archdisco-sbx-")
        env = isolation.scrubbed_environment(
            os.environ, pythonpath=[PROJECT_ROOT, *self._extra_path()],
            torch_threads=self.torch_threads, marker=self.marker)
        cmd = [sys.executable, "-P", "-s", "-B", "-m", "sandbox.runner",
               "--request-fd", str(req_r), "--result-fd", str(res_w),
               "--parent-pid", str(os.getpid())]
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out_w, stderr=out_w,
                pass_fds=(req_r, res_w), start_new_session=True, env=env, cwd="/")
        except OSError as exc:
            for fd in (req_r, req_w, res_r, res_w, out_r, out_w):
                os.close(fd)
            shutil.rmtree(self._workdir, ignore_errors=True)
            raise SandboxError(f"cannot start a sandbox child: {exc}") from exc
        for fd in (req_r, res_w, out_w):
            os.close(fd)
        self._fds = {"request": req_w, "result": res_r, "output": out_r}
        if self.config.memory_cgroup:  # before the spawn config: all it starts is born inside
            self._cgroup = MemoryCgroup.create()
            if self._cgroup is not None and not self._cgroup.attach(self._proc.pid):
                self._cgroup.remove()
                self._cgroup = None
        self._pump = threading.Thread(target=_pump, args=(out_r, self.tail), daemon=True,
                                      name=f"sandbox-output-{self._proc.pid}")
        self._pump.start()
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(self._proc.pid)
        root = os.geteuid() == 0
        self.uid = isolation.UID_BASE + self._proc.pid if root else None
        spawn = SpawnConfig(
            key=self._key.hex(), mode=self.config.mode, uid=self.uid,
            simulate_unprivileged=self.config.simulate_unprivileged and root,
            seccomp=self.config.seccomp, landlock=self.config.landlock,
            socket_layer=self.config.socket_layer, workdir=self._workdir,
            read_paths=isolation.default_read_paths([PROJECT_ROOT, os.getcwd()])
            + list(self.config.extra_read_paths),
            tmpfs_bytes=self.config.tmpfs_bytes, preload=list(self.config.preload),
            torch_threads=self.torch_threads)
        self._send(spawn.model_dump_json().encode() + b"\n")
        return self

    @staticmethod
    def _extra_path() -> list[str]:
        prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
        out = []
        for entry in sys.path:
            real = os.path.realpath(entry) if entry else ""
            if real and os.path.isdir(real) and not any(
                    real == p or real.startswith(p + os.sep) for p in prefixes):
                out.append(real)
        return out

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fds["request"], view):]
        except OSError as exc:
            raise SandboxError(f"the sandbox child stopped reading its request: {exc}") from exc

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _exited(self) -> bool:
        """Has the child's first process exited? (Checked without reaping it, so that
        ``wait4`` can still collect its resource usage.)"""
        if self._proc is None or self._status is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _await_exit(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._exited():
            time.sleep(0.002)

    def alive(self) -> bool:
        return self._proc is not None and not self._exited()

    def wait_ready(self, timeout: float | None = None) -> IsolationReport:
        """Block until the child is isolated and warm; SandboxError if it fails to get there."""
        deadline = time.monotonic() + (timeout or self.config.spawn_timeout_s)
        with selectors.DefaultSelector() as sel:
            sel.register(self._fds["result"], selectors.EVENT_READ)
            while self.report is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.discard()
                    raise SandboxError("the sandbox child was not ready after "
                                       f"{timeout or self.config.spawn_timeout_s:g} s")
                if not sel.select(left):
                    continue
                data = os.read(self._fds["result"], 1 << 16)
                if not data:
                    code = self._finish(kill=False)
                    self.discard()
                    raise SandboxError(f"the sandbox child exited during setup (code {code}): "
                                       f"{self.tail.text()[-1500:]}")
                try:
                    events = self._reader.feed(data)
                except TamperError as exc:
                    self.discard()
                    raise SandboxError(f"corrupt frame during setup: {exc}") from exc
                for event in events:
                    if isinstance(event, ReadyEvent):
                        self.report = event.isolation
                    elif isinstance(event, ErrorEvent):
                        self.discard()
                        raise SandboxError(event.message)
        return self.report

    # ------------------------------------------------------------------ one evaluation
    def evaluate(self, request: EvalRequest, limits: SandboxLimits | None = None, *,
                 static_policy: bool = True) -> EvalOutcome:
        if self._used:
            raise SandboxError("a sandbox child serves exactly one evaluation")
        self._used = True
        limits = limits or SandboxLimits()
        report = self.report or self.wait_ready()
        resolved, wall = resolve_limits(request, limits)
        self.tail.capacity = limits.max_output_bytes
        start = time.monotonic()
        limit = self.config.cgroup_limit_bytes
        if self._cgroup is not None and limit is not None and self._cgroup.set_limit(limit):
            self._cgroup_limit = limit
        self._oom_kills = self._oom_count()
        try:
            self._send(LaunchRequest(request=request, limits=resolved,
                                     static_policy=static_policy).model_dump_json().encode()
                       + b"\n")
            os.close(self._fds.pop("request"))
            watch = _Watch(request, limits, start, wall)
            self._watch(watch)
            # Kill at once only when the driver decided the child must stop; after EOF or
            # ``done`` give it a moment to exit on its own, so its real status is reported.
            code = self._finish(kill=bool(watch.timed_out or watch.tamper))
            oom = self._oom_killed()  # read before _cleanup removes the child's cgroup
            memory = self._memory_report()
        except BaseException:
            self.discard()
            raise
        self._cleanup()
        if watch.error is not None:
            raise SandboxError(f"the sandbox harness failed: {watch.error}")
        results = list(watch.results)
        if not watch.done and not (watch.complete(request) and watch.current is None
                                   and not (watch.tamper or watch.timed_out)):
            results.append(self._ending(watch, resolved, code, oom))
        if results and results[0].stage == "load":
            artifacts = {**results[0].artifacts, "isolation": report.model_dump(mode="json")}
            if memory:
                artifacts["memory_cgroup"] = memory
            results[0] = results[0].model_copy(update={"artifacts": artifacts})
        return EvalOutcome(results=results, log_tail=self.tail.text(),
                           wall_s=time.monotonic() - start, exit_code=code)

    def _watch(self, watch: _Watch) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._fds["result"], selectors.EVENT_READ, "result")
            if self._pidfd >= 0:
                sel.register(self._pidfd, selectors.EVENT_READ, "exit")
            exited_at: float | None = None
            while not (watch.done or watch.error or watch.tamper or watch.timed_out):
                now = time.monotonic()
                deadline = watch.deadline()
                if now >= deadline:
                    watch.expire(now)
                    return
                # Without a pidfd, poll the process now and then.
                wait = min(deadline - now, 0.2 if self._pidfd < 0 else deadline - now)
                if exited_at is not None:  # the child is gone; drain what is left, briefly
                    wait = min(wait, max(0.0, exited_at + 0.5 - now))
                    if wait <= 0:
                        return
                ready = sel.select(wait)
                if self._pidfd < 0 and exited_at is None and self._exited():
                    exited_at = time.monotonic()
                for key, _ in ready:
                    if key.data == "exit":
                        sel.unregister(self._pidfd)
                        exited_at = time.monotonic()
                        continue
                    data = os.read(self._fds["result"], 1 << 16)
                    if not data:
                        return
                    try:
                        events = self._reader.feed(data)
                    except TamperError as exc:
                        watch.tamper = str(exc)
                        return
                    for event in events:
                        watch.on_event(event)

    def _ending(self, watch: _Watch, resolved: ResolvedLimits, code: int, oom: bool) -> StageResult:
        """The failure for the stage that was running when the child stopped (``oom``: the
        kernel's OOM killer struck meanwhile)."""
        stage = watch.current or watch.next_stage()
        cpu = self._status[1] if self._status else 0.0
        sig = -code if code < 0 else None  # the monitor dies of the harness's signal (runner)
        if watch.tamper:
            kind, message = FailureKind.POLICY, watch.tamper + " (forged or corrupted result)"
        elif watch.timed_out == "stage":
            kind = FailureKind.TIMEOUT
            message = f"stage {stage!r} exceeded its {watch.timeouts[stage]:g} s wall-clock limit"
        elif watch.timed_out == "wall":
            kind = FailureKind.TIMEOUT
            message = f"the evaluation exceeded its {watch.wall:g} s wall-clock limit"
        elif sig is not None and (sig == signal.SIGXCPU
                                  or (sig == signal.SIGKILL and cpu >= resolved.cpu_seconds)):
            kind = FailureKind.TIMEOUT
            message = f"CPU time limit of {resolved.cpu_seconds} s reached in stage {stage!r}"
        elif sig == signal.SIGKILL and oom:
            kind = FailureKind.OOM
            cause = (f"its processes reached their {self._cgroup_limit / (1 << 30):.3g} GiB limit"
                     if self._cgroup_limit else "the machine ran out of memory")
            message = (f"the kernel's OOM killer ended the child in stage {stage!r}: {cause} "
                       "(lower the stage's sizes, run fewer evaluations per machine, or set the "
                       "target's memory_limit_gb so allocations fail inside the child instead)")
        elif sig is not None:
            kind = FailureKind.KILLED
            message = f"the child was killed by {_signal_name(sig)} in stage {stage!r}"
        elif stage == "load":
            kind = FailureKind.IMPORT
            message = (f"the process exited with code {code} while the candidate was being "
                       "imported (sys.exit / os._exit in module code?)")
        else:
            kind = FailureKind.RUNTIME
            message = f"the process exited with code {code} during stage {stage!r}"
        spec = watch.specs.get(stage)
        return StageResult.failure(stage, kind, message, target=watch.target,
                                   rung=spec.rung if spec else 0, log_tail=self.tail.text()[-4000:],
                                   wall_s=time.monotonic() - watch.stage_started)

    def _oom_count(self) -> int | None:
        """The kernel's OOM kills so far: of this child's cgroup where it has one, else of
        the whole machine (``oom_kills``)."""
        return self._cgroup.oom_kills() if self._cgroup is not None else oom_kills()

    def _oom_killed(self) -> bool:
        """The kernel's OOM killer struck while this child evaluated (``_oom_count``)."""
        before, after = self._oom_kills, self._oom_count()
        return before is not None and after is not None and after > before

    def _memory_report(self) -> dict[str, int | None]:
        """What the child's memory cgroup saw (empty without one): the process tree's peak
        memory, resident and page cache, and the OOM kills in it."""
        if self._cgroup is None:
            return {}
        return {"peak_bytes": self._cgroup.peak_bytes(), "oom_kills": self._cgroup.oom_kills(),
                "limit_bytes": self._cgroup_limit, "version": self._cgroup.version}

    # ------------------------------------------------------------------ teardown
    def _kill_strays(self) -> None:
        kill_strays(uid=self.uid, marker=f"{isolation.MARKER_ENV}={self.marker}")

    def _finish(self, *, kill: bool) -> int:
        """Reap the child (after a grace period when it finished on its own), then kill
        whatever it left behind."""
        if self._proc is None:
            return 0
        if self._status is None:
            if not kill:
                self._await_exit(EXIT_GRACE_S)
            namespaced = self.report is not None and self.report.mode != "none"
            if not self._exited() and namespaced and self.uid is not None:
                # Kill the namespace's processes (all run as the unique uid) first, so that
                # the monitor outside reaps PID 1 and exits by itself: nothing is orphaned.
                self._kill_strays()
                self._await_exit(1.0)
            # The group id stays reserved until the leader is reaped, so this cannot hit a
            # stranger; SIGKILL of the leader (or of PID 1 inside) ends the PID namespace.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            if not namespaced:
                self._kill_strays()
            try:
                _, status, usage = os.wait4(self._proc.pid, 0)
                code = os.waitstatus_to_exitcode(status)
                self._status = (code, usage.ru_utime + usage.ru_stime)
            except ChildProcessError:
                self._status = (self._proc.returncode or 0, 0.0)
            self._proc.returncode = self._status[0]
            self._kill_strays()  # setsid escapees (no-namespace fallback), belt and braces
        return self._status[0]

    def _cleanup(self) -> None:
        for name in list(self._fds):
            with contextlib.suppress(OSError):
                os.close(self._fds.pop(name))
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = -1
        if self._pump is not None:
            self._pump.join(timeout=1.0)
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = ""
        if self._cgroup is not None and self._status is not None:  # its processes are reaped
            self._cgroup.remove()
            self._cgroup = None
        if self.uid is not None and self.report is not None and self.report.mode == "none":
            remove_files_of(self.uid, ("/tmp", "/var/tmp", "/dev/shm"))

    def discard(self) -> None:
        """Kill and clean up a child that will not (or can no longer) be used."""
        with contextlib.suppress(Exception):
            self._finish(kill=True)
        self._cleanup()


class _Watch:
    """The driver's view of one evaluation in progress: stage clock, results, anomalies."""

    def __init__(self, request: EvalRequest, limits: SandboxLimits, start: float, wall: float):
        self.specs = {s.name: s for s in request.stages}
        self.timeouts = {"load": limits.load_timeout_s, **{s.name: s.timeout_s for s in request.stages}}
        self.order = ["load", *[s.name for s in request.stages]]
        self.target = request.target.name
        self.wall = wall
        self.wall_deadline = start + wall
        self.current: str | None = "load"
        self.stage_started = start
        self.stage_deadline: float | None = start + limits.load_timeout_s
        self.results: list[StageResult] = []
        self.done = False
        self.error: str | None = None
        self.tamper: str | None = None
        self.timed_out: str | None = None

    def deadline(self) -> float:
        if self.stage_deadline is None:
            return self.wall_deadline
        return min(self.stage_deadline, self.wall_deadline)

    def expire(self, now: float) -> None:
        stage_first = self.stage_deadline is not None and self.stage_deadline <= self.wall_deadline
        self.timed_out = "stage" if stage_first and self.current else "wall"

    def complete(self, request: EvalRequest) -> bool:
        """Did every stage that was going to run report (the harness only failed to say
        ``done``)?"""
        if len(self.results) == len(self.order):
            return True
        last = self.results[-1] if self.results else None
        if last is None or last.ok:
            return False
        spec = self.specs.get(last.stage)
        return not (request.continue_on_constraint and spec is not None and spec.constraint)

    def next_stage(self) -> str:
        return self.order[min(len(self.results), len(self.order) - 1)]

    def on_event(self, event: BaseModel) -> None:
        if isinstance(event, StageStartEvent):
            if event.stage not in self.timeouts or event.stage != self.next_stage():
                self.tamper = f"unexpected stage_start for {event.stage!r}"
                return
            self.current = event.stage
            self.stage_started = time.monotonic()
            self.stage_deadline = self.stage_started + self.timeouts[event.stage]
        elif isinstance(event, StageResultEvent):
            if event.result.stage != self.current:
                self.tamper = f"a result for {event.result.stage!r} arrived during {self.current!r}"
                return
            self.results.append(event.result)
            self.current = None
            self.stage_deadline = None
        elif isinstance(event, DoneEvent):
            self.done = True
        elif isinstance(event, ErrorEvent):
            self.error = event.message
        else:
            self.tamper = f"unexpected {type(event).__name__} during an evaluation"


def run_evaluation(request: EvalRequest, limits: SandboxLimits | None = None, *,
                   isolation_config: IsolationConfig | None = None,
                   static_policy: bool = True) -> EvalOutcome:
    """Evaluate in a freshly started child (no pool). ``static_policy=False`` is a test
    switch: it skips the AST policy in the child so tests can show what the OS layer alone
    contains. It is reachable only from driver-side Python, never from candidate code."""
    limits = limits or SandboxLimits()
    child = Child(isolation_config, torch_threads=limits.torch_threads,
                  max_output_bytes=limits.max_output_bytes).spawn()
    return child.evaluate(request, limits, static_policy=static_policy)
