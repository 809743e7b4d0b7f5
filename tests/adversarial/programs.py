"""Hostile candidate programs and the outcome each must get.

Every program is a candidate for ``tests.sandbox.fake_task:FakeTask`` (a module with
``class Model``). ``$names`` are filled in by the test (see ``conftest.py``): ``$scratch`` is a
world-writable directory on the host that the child can see, ``$db`` a campaign-like SQLite
database in it (mode 0666), ``$port`` a loopback TCP listener opened by the test, ``$victim``
the pid of a process owned by the driver's user (with the secret on its command line),
``$driver`` the driver's own pid, ``$secret_name`` an API-key-like variable set in the
driver's environment.

``policy_kind``: what the full sandbox gives (static policy on). ``runtime_kind``: what the
OS layer alone gives when the static policy is bypassed (test switch). ``None`` means the
evaluation itself succeeds (the hostile part was contained without an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evaluator.types import FailureKind as K


@dataclass(frozen=True)
class Hostile:
    name: str
    code: str
    policy_kind: K | None
    runtime_kind: K | None
    stages: tuple[str, ...] = ("build", "forward")
    limits: dict = field(default_factory=dict)  # SandboxLimits overrides
    stage_timeout_s: float = 5.0
    uses_torch: bool = False


_MODEL = """
class Model:
    def __init__(self):
        pass

    def forward(self, x):
        return x
"""

PROGRAMS: list[Hostile] = [
    Hostile("write_outside_workdir", """
open("$scratch/pwned-direct.txt", "w").write("pwned")
""" + _MODEL, K.POLICY, K.IMPORT),
    Hostile("write_via_obfuscated_import", """
class Model:
    def __init__(self):
        pass

    def forward(self, x):
        rc = getattr(__import__('o' + 's'), 'system')('echo pwned > $scratch/pwned-system.txt')
        if rc != 0:
            raise RuntimeError(f"shell write failed with {rc}")
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("write_via_dunder_walk", """
def find(name):
    for cls in ().__class__.__bases__[0].__subclasses__():
        if cls.__name__ == name:
            return cls
    raise RuntimeError("not found")

class Model:
    def __init__(self):
        system = find("_wrap_close").__init__.__globals__["system"]
        rc = system("echo pwned > $scratch/pwned-dunder.txt")
        if rc != 0:
            raise RuntimeError(f"shell write failed with {rc}")

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("write_via_torch_save", """
import torch

class Model:
    def __init__(self):
        torch.save(torch.ones(3), "$scratch/pwned.pt")

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME, uses_torch=True),
    Hostile("read_and_print_secrets", """
import os

def gather():
    found = [os.environ.get("$secret_name", "<no env secret>")]
    for path in ("/proc/$driver/environ", "/proc/1/environ", "/proc/$victim/cmdline",
                 "$scratch/.env", "/etc/shadow"):
        try:
            with open(path, "rb") as fh:
                found.append(fh.read().decode(errors="replace"))
        except OSError as exc:
            found.append(f"{path}: {exc}")
    return " | ".join(found)

print("GATHERED", gather())

class Model:
    def __init__(self):
        raise RuntimeError("GATHERED " + gather())

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("connect_to_loopback_listener", """
import socket

class Model:
    def __init__(self):
        pass

    def forward(self, x):
        s = socket.create_connection(("127.0.0.1", $port), timeout=2)
        s.sendall(b"exfiltrated")
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("fork_bomb", """
import os, time

class Model:
    def __init__(self):
        n = 0
        for _ in range(300):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
        raise RuntimeError(f"forked {n} processes")

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME, limits={"max_processes": 48}),
    Hostile("unbounded_allocation_python", """
class Model:
    def __init__(self):
        self.chunks = []

    def forward(self, x):
        while len(self.chunks) < 64:  # at most 16 GiB
            self.chunks.append(bytearray(256 * 1024 * 1024))
        return x
""", K.OOM, K.OOM, limits={"memory_bytes": 1 << 30}, stage_timeout_s=20.0),
    Hostile("unbounded_allocation_torch", """
import torch

class Model:
    def __init__(self):
        self.chunks = []

    def forward(self, x):
        while len(self.chunks) < 64:  # at most 16 GiB
            self.chunks.append(torch.ones(64 * 1024 * 1024))
        return x
""", K.OOM, K.OOM, limits={"memory_bytes": 3 << 29}, stage_timeout_s=20.0,
            uses_torch=True),
    Hostile("infinite_loop_in_init", """
class Model:
    def __init__(self):
        while True:
            pass

    def forward(self, x):
        return x
""", K.TIMEOUT, K.TIMEOUT, stage_timeout_s=1.0),
    Hostile("infinite_loop_in_forward", """
class Model:
    def __init__(self):
        pass

    def forward(self, x):
        n = 0
        while True:
            n += 1
""", K.TIMEOUT, K.TIMEOUT, stage_timeout_s=1.0),
    Hostile("cpu_time_limit", """
class Model:
    def __init__(self):
        pass

    def forward(self, x):
        n = 0
        while True:
            n += 1
""", K.TIMEOUT, K.TIMEOUT, limits={"cpu_seconds": 1}, stage_timeout_s=30.0),
    Hostile("long_native_call_ignoring_signals", """
import torch

class Model:
    def __init__(self):
        pass

    def forward(self, x):
        a = torch.randn(3000, 3000)
        for _ in range(1000):
            a = torch.tanh(a @ a)
        return x
""", K.TIMEOUT, K.TIMEOUT, stage_timeout_s=1.5, uses_torch=True),
    Hostile("native_sleep_via_ctypes", """
import ctypes, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)

class Model:
    def __init__(self):
        ctypes.CDLL(None).sleep(60)

    def forward(self, x):
        return x
""", K.POLICY, K.TIMEOUT, stage_timeout_s=1.0),
    Hostile("kill_the_parent", """
import os, signal

class Model:
    def __init__(self):
        errors = []
        for pid in (os.getppid(), $driver, $victim):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as exc:
                errors.append(f"{pid}: {exc}")
        try:
            os.kill(-1, signal.SIGKILL)  # everything this uid may signal
        except OSError as exc:
            errors.append(f"-1: {exc}")
        raise RuntimeError("survived: " + "; ".join(errors))

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("setsid_grandchild_outlives_evaluation", """
import os, time

class Model:
    def __init__(self):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(1.0)
                try:
                    open("$scratch/pwned-late.txt", "w").write("late")
                except OSError:
                    pass
                time.sleep(60)
            os._exit(0)
        time.sleep(0.2)
        raise RuntimeError("grandchild launched")

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("stdout_flood", """
class Model:
    def __init__(self):
        pass

    def forward(self, x):
        line = "flood " * 2000
        while True:
            print(line)
""", K.TIMEOUT, K.TIMEOUT, stage_timeout_s=1.5),
    Hostile("raise_systemexit_during_import", """
raise SystemExit(0)
""" + _MODEL, K.IMPORT, K.IMPORT),
    Hostile("sys_exit_during_import", """
import sys
sys.exit(0)
""" + _MODEL, K.POLICY, K.IMPORT),
    Hostile("os_exit_during_import", """
import os
os._exit(0)
""" + _MODEL, K.POLICY, K.IMPORT),
    Hostile("print_forged_success_result", """
import json
fake = {"event": "stage_result", "result": {"stage": "forward", "ok": True,
        "metrics": {"y": 1e9}}}
print("0" * 64 + " " + json.dumps(fake))
print(json.dumps({"ok": True, "results": [{"stage": "forward", "ok": True}]}))

class Model:
    def __init__(self):
        pass

    def forward(self, x):
        raise RuntimeError("the real result is a failure")
""", K.POLICY, K.RUNTIME),
    Hostile("print_forged_success_result_policy_clean", """
class Model:
    def __init__(self):
        print("0" * 64 + ' {"event":"done"}')
        print('{"event": "stage_result", "result": {"stage": "forward", "ok": true}}')

    def forward(self, x):
        raise RuntimeError("the real result is a failure")
""", K.RUNTIME, K.RUNTIME),
    Hostile("write_forged_frames_to_every_fd", """
import os
forged = (b"0" * 64 + b' {"event":"stage_result","result":{"stage":"forward","ok":true}}\\n'
          + b"0" * 64 + b' {"event":"done"}\\n')

class Model:
    def __init__(self):
        pass

    def forward(self, x):
        for fd in range(3, 1100):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        return x
""", K.POLICY, K.POLICY),
    Hostile("monkeypatch_cross_entropy", """
import torch
import torch.nn.functional as F
F.cross_entropy = lambda *args, **kwargs: torch.zeros(())
""" + _MODEL, K.POLICY, K.POLICY, stages=("build", "xent"), uses_torch=True),
    Hostile("monkeypatch_cross_entropy_aliased", """
import torch
functional = (lambda: torch.nn.functional)()
functional.cross_entropy = lambda *args, **kwargs: torch.zeros(())
""" + _MODEL, K.POLICY, K.POLICY, stages=("build", "xent"), uses_torch=True),
    Hostile("monkeypatch_tensor_and_module_methods", """
import torch
import torch.nn as nn
torch.Tensor.mean = lambda self, *args, **kwargs: self.sum() * 0
nn.Module.__call__ = lambda self, *args, **kwargs: args[0]
""" + _MODEL, K.POLICY, K.POLICY, stages=("build", "xent"), uses_torch=True),
    Hostile("write_campaign_database", """
import sqlite3

class Model:
    def __init__(self):
        con = sqlite3.connect("$db")
        con.execute("insert into candidate(name, status) values ('pwned', 'evaluated')")
        con.execute("update candidate set status = 'pwned'")
        con.commit()

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("exfiltrate_database_by_reading", """
class Model:
    def __init__(self):
        with open("$db", "rb") as fh:
            print("DBDUMP", fh.read())

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME),
    Hostile("oversized_file_in_workdir", """
class Model:
    def __init__(self):
        with open("big.bin", "wb") as fh:
            for _ in range(64):
                fh.write(b"\\0" * (1 << 20))

    def forward(self, x):
        return x
""", K.POLICY, K.RUNTIME, limits={"max_file_bytes": 8 << 20}),
]

BY_NAME = {p.name: p for p in PROGRAMS}
