"""Overhead of the sandbox: median wall time of evaluating one trivial candidate in-process
vs through the sandbox (a freshly spawned child, and a child from a warm pool), side by side
in one run.

    .venv/bin/python benchmarks/sandbox_overhead.py [--repeats 10] [--cold-repeats 5]

The candidate is a one-layer torch module run through two cheap stages of the sandbox's test
task (build, then forward + backward), so the numbers are the sandbox's fixed cost per
evaluation, not the cost of a real stage. "in-process" runs the same harness (policy check,
module load, integrity checks, stages) in this process with torch already imported, as a
long-running driver without a sandbox would. "warm pool" measures the latency of one
evaluation when a ready child is waiting (the pool refills in the background between runs).
"cold, no memory cgroup" alternates with the cold spawns, with the child's own memory cgroup
(``sandbox.cgroup``) switched off: the cost of making, reading and removing it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluator.types import StageSpec  # noqa: E402
from sandbox.api import EvalRequest, SandboxLimits  # noqa: E402
from sandbox.harness import Harness  # noqa: E402
from sandbox.integrity import ModuleSnapshot  # noqa: E402
from sandbox.launcher import IsolationConfig, run_evaluation  # noqa: E402
from sandbox.pool import SandboxPool  # noqa: E402

CANDIDATE = '''
import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, **kw):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        return self.proj(x)
'''
REQUEST = EvalRequest(task="tests.sandbox.fake_task:FakeTask", task_options={"interface": "Mixer"},
                      code=CANDIDATE, stages=[StageSpec(name="mixer", timeout_s=60)])
LIMITS = SandboxLimits(load_timeout_s=60)


def in_process(snapshot: ModuleSnapshot) -> float:
    start = time.perf_counter()
    results = Harness(lambda event: None, snapshot=snapshot).run(REQUEST)
    wall = time.perf_counter() - start
    assert all(r.ok for r in results), results
    return wall


def cold(config: IsolationConfig | None = None) -> float:
    start = time.perf_counter()
    outcome = run_evaluation(REQUEST, LIMITS, isolation_config=config)
    wall = time.perf_counter() - start
    assert outcome.ok, outcome.first_failure
    return wall


def warm(pool: SandboxPool) -> float:
    if not pool.wait_warm(180):
        raise RuntimeError("the pool did not fill up")
    start = time.perf_counter()
    outcome = pool.evaluate(REQUEST, LIMITS)
    wall = time.perf_counter() - start
    assert outcome.ok, outcome.first_failure
    return wall


def summarize(name: str, samples: list[float], baseline: float | None) -> str:
    median = statistics.median(samples)
    added = "" if baseline is None else f"{(median - baseline) * 1000:+9.0f}"
    return (f"{name:<22}{len(samples):>4}{median * 1000:>11.0f}{min(samples) * 1000:>9.0f}"
            f"{max(samples) * 1000:>9.0f}{added:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--pool-size", type=int, default=1)
    args = parser.parse_args()

    import torch  # the in-process baseline has torch loaded already, like a warm driver

    snapshot = ModuleSnapshot()
    in_process(snapshot)  # warm-up: first-time imports of the task and torch kernels
    base = [in_process(snapshot) for _ in range(args.repeats)]
    cold_samples, bare_samples = [], []
    for _ in range(args.cold_repeats):
        cold_samples.append(cold())
        bare_samples.append(cold(IsolationConfig(memory_cgroup=False)))
    with SandboxPool(args.pool_size) as pool:
        warm(pool)  # the first pooled child also pays the task's first-time imports
        warm_samples = [warm(pool) for _ in range(args.repeats)]
        artifacts = run_evaluation(REQUEST, LIMITS).results[0].artifacts
        report = artifacts["isolation"]

    baseline = statistics.median(base)
    print(f"sandbox overhead: {platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, isolation mode "
          f"{report['mode']} (seccomp={report['seccomp']}, landlock={report['landlock']}), memory "
          f"cgroup {artifacts.get('memory_cgroup', {}).get('version', 'none')}")
    print(f"{'path':<22}{'n':>4}{'median ms':>11}{'min':>9}{'max':>9}{'added ms':>12}")
    print(summarize("in-process", base, None))
    print(summarize("sandbox, cold spawn", cold_samples, baseline))
    print(summarize("cold, no memory cgroup", bare_samples, baseline))
    print(summarize("sandbox, warm pool", warm_samples, baseline))


if __name__ == "__main__":
    main()
