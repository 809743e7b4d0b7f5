"""Running untrusted candidate code: static policy, OS isolation, authenticated results.

Public API::

    evaluate(request, limits=None, *, task=None) -> EvalOutcome
    check(code, task=None) -> PolicyViolation | None
    SandboxPool(size)          # warm children; set_default_pool(pool) makes evaluate use it
    configure_pool(size, preload)  # start (or with None, stop) the default pool
    SandboxError               # platform failure: the caller records kind ``infra``

``evaluate`` checks the static policy in the driver, then runs the evaluation in a fresh
isolated child (from the default pool when one is set) and returns typed results. It never
raises because of anything the candidate does; it raises ``SandboxError`` only when the
sandbox itself fails (the child cannot be started, the harness crashes).

What is guaranteed (on Linux with the mechanisms the child reports in the ``isolation``
artifact of its ``load`` result; see docs/SECURITY.md for each fallback):
- Host integrity: the candidate cannot create or modify files outside its private working
  directory (read-only mount tree + private tmpfs scratch in a mount namespace; Landlock
  write rules; an unprivileged unique uid). Nothing it writes outlives the evaluation.
- Confidentiality: no secret environment variable reaches the child (allowlisted, scrubbed
  environment); with Landlock it can read only system directories, the Python installation
  and the project's package directories (not the project root, the database or $HOME).
- No network: a private network namespace (only a loopback interface, down) and a seccomp
  filter that refuses ``socket()`` for every address family.
- The driver is safe: the child runs as another uid (or in a user namespace with the driver
  invisible in its PID namespace, and Landlock's signal scope), so it can neither signal nor
  ptrace the driver. Output is captured in a bounded buffer by a draining thread.
- Nothing survives: the child is PID 1 of its own PID namespace; when the evaluation ends or
  times out the driver SIGKILLs its process group and the kernel kills everything left in the
  namespace (``setsid`` escapees included). Without namespaces, strays are hunted by uid and
  by an environment marker.
- Bounded resources: rlimits on address space (default: half of physical RAM), CPU seconds,
  processes, file size, open files and core dumps; a per-stage and a whole-evaluation wall
  clock enforced by the driver with SIGKILL (so native code that ignores signals is stopped).
- Classification: every failure has one kind of ``FailureKind``; ``timeout`` and ``oom`` come
  from the exit cause (driver deadline, SIGXCPU, the allocator's error type), not from text
  the candidate prints.
- Result integrity against output tricks: results travel only on a dedicated pipe, framed with
  an HMAC keyed per child; printing a fake result only adds to the log, and writing to the
  pipe without the key is detected (kind ``policy``).

What is not guaranteed:
- Metric integrity against code that escapes the static policy: the harness measures the
  candidate in the same process, so code with full interpreter access could patch the
  harness or read its key. The static policy (``sandbox.policy``) blocks the known routes and
  a run-time snapshot (``sandbox.integrity``) catches module rewiring that persists; both
  are best effort. Containment of the host does not depend on them.
- Memory accounting of tmpfs scratch space (bounded by the tmpfs size instead) and GPU
  memory. The kernel OOM killer's SIGKILL is told apart per child only where the child gets a
  memory cgroup of its own (``sandbox.cgroup``); elsewhere by the machine-wide count.
- Side channels (timing, CPU contention with other evaluations).
"""

from __future__ import annotations

import atexit

from evaluator.types import Task
from sandbox.api import EvalOutcome, EvalRequest, SandboxLimits
from sandbox.launcher import IsolationConfig, SandboxError, run_evaluation
from sandbox.policy import PolicyViolation, check
from sandbox.pool import DEFAULT_PRELOAD, SandboxPool

__all__ = [
    "EvalOutcome", "EvalRequest", "IsolationConfig", "PolicyViolation", "SandboxError",
    "SandboxLimits", "SandboxPool", "check", "configure_pool", "evaluate", "get_default_pool",
    "set_default_pool",
]

_default_pool: SandboxPool | None = None
_atexit_registered = False


def set_default_pool(pool: SandboxPool | None) -> SandboxPool | None:
    """Make ``evaluate`` use ``pool`` (None: spawn a fresh child per call); returns the
    previous default so callers can restore it."""
    global _default_pool
    previous, _default_pool = _default_pool, pool
    return previous


def get_default_pool() -> SandboxPool | None:
    return _default_pool


def configure_pool(size: int | None, preload: tuple[str, ...] | None = None) -> SandboxPool | None:
    """Start a default warm pool of ``size`` children (None or 0: no pool), closing the
    previous default pool. ``preload`` (default: torch) is what each child imports or calls
    before its request (a task's ``preload(target)``). The pool is closed (its idle children
    killed) at interpreter exit."""
    global _atexit_registered
    new = SandboxPool(size, preload=preload or DEFAULT_PRELOAD) if size else None
    previous = set_default_pool(new)
    if previous is not None:
        previous.close()
    if new is not None and not _atexit_registered:
        atexit.register(lambda: configure_pool(None))
        _atexit_registered = True
    return new


def evaluate(request: EvalRequest, limits: SandboxLimits | None = None, *,
             task: Task | None = None, pool: SandboxPool | None = None) -> EvalOutcome:
    """Run one evaluation in an isolated child and return its typed results.

    ``task`` (optional) lets the driver-side policy check honour the task's
    ``extra_allowed_imports``; the child checks again with the task it builds itself.
    ``pool`` overrides the default pool for this call.
    """
    limits = limits or SandboxLimits()
    violation = check(request.code, task)
    if violation is not None:
        return EvalOutcome(results=[violation.to_result(target=request.target.name)],
                           log_tail="", wall_s=0.0, exit_code=None)
    chosen = pool if pool is not None else _default_pool
    if chosen is not None:
        return chosen.evaluate(request, limits)
    return run_evaluation(request, limits)
