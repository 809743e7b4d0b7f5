"""A warm pool of sandbox children, so an evaluation does not pay for process start, isolation
set-up and ``import torch`` (together ~1-1.5 s on the reference machine).

Each pooled child is started, isolated and warmed up (torch and the other ``preload`` modules
imported, a task's warm-up functions called, the module snapshot taken) and then blocks
reading its request pipe. ``evaluate`` takes one ready child, gives it the request and
discards it afterwards: a child still serves exactly one evaluation, so one candidate can
never see another's leftovers. A background thread keeps ``size`` children ready, so the
next child warms up while the current evaluation runs. A ready child spawned under other GPU
variables than the process has now (``CUDA_VISIBLE_DEVICES``: Ray sets it per task) is
discarded instead of used.

The refill thread is also the parent thread of every pooled child (``PR_SET_PDEATHSIG``
fires when the thread that forked a child exits), so it lives as long as the pool.
"""

from __future__ import annotations

import collections
import os
import threading
import time

from sandbox.api import EvalOutcome, EvalRequest, SandboxLimits
from sandbox.isolation import gpu_assignment
from sandbox.launcher import Child, IsolationConfig, SandboxError

DEFAULT_PRELOAD = ("torch",)


class SandboxPool:
    """``size`` warm children; thread-safe ``evaluate``; use as a context manager or close()."""

    def __init__(self, size: int = 2, *, isolation_config: IsolationConfig | None = None,
                 torch_threads: int = 1, max_failures: int = 3,
                 preload: tuple[str, ...] = DEFAULT_PRELOAD):
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        base = isolation_config or IsolationConfig(preload=preload)
        self.size = size
        self.config = base
        self.torch_threads = torch_threads
        self._ready: collections.deque[Child] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._failures = 0
        self._max_failures = max_failures
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._refill, name="sandbox-pool", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ refill thread
    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                child = Child(self.config, torch_threads=self.torch_threads).spawn()
                child.wait_ready()
            except SandboxError as exc:
                with self._cond:
                    self._failures += 1
                    self._last_error = str(exc)
                    self._cond.notify_all()
                    if self._failures >= self._max_failures:
                        return
                time.sleep(min(2.0, 0.2 * self._failures))
                continue
            with self._cond:
                if self._closed:
                    child.discard()
                    return
                self._failures = 0
                self._ready.append(child)
                self._cond.notify_all()

    # ------------------------------------------------------------------ use
    def acquire(self, timeout: float | None = None) -> Child:
        """A ready child (waiting for one if needed); SandboxError if none comes."""
        deadline = time.monotonic() + (timeout if timeout is not None
                                       else self.config.spawn_timeout_s)
        with self._cond:
            while True:
                while self._ready:
                    child = self._ready.popleft()
                    self._cond.notify_all()
                    if child.alive() and child.gpus == gpu_assignment(os.environ):
                        return child
                    child.discard()
                if self._closed:
                    raise SandboxError("the sandbox pool is closed")
                if self._failures >= self._max_failures or not self._thread.is_alive():
                    raise SandboxError(f"the sandbox pool cannot start children: "
                                       f"{self._last_error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxError("no warm sandbox child became ready in time")
                self._cond.wait(left)

    def evaluate(self, request: EvalRequest, limits: SandboxLimits | None = None, *,
                 static_policy: bool = True) -> EvalOutcome:
        child = self.acquire()
        return child.evaluate(request, limits, static_policy=static_policy)

    @property
    def ready_count(self) -> int:
        with self._cond:
            return len(self._ready)

    def wait_warm(self, timeout: float = 120.0) -> bool:
        """Block until the pool is full (for benchmarks and tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < self.size:
                left = deadline - time.monotonic()
                if left <= 0 or self._failures >= self._max_failures:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            children = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        for child in children:
            child.discard()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
