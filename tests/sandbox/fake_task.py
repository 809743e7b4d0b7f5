"""A minimal task for the sandbox's own tests, addressed as
``tests.sandbox.fake_task:FakeTask``, so sandbox tests do not depend on the token-mixer task.

A candidate defines ``class Model`` with ``__init__(self)`` and ``forward(self, x)``.
Stages (options in ``StageSpec.options``):
- ``build``: instantiate ``Model()``;
- ``forward``: call ``forward(options["x"])`` (default 3) and report ``y`` when it is a number;
- ``xent``: cross-entropy, through ``torch.nn.functional``, of fixed logits (the model plays
  no part): a candidate that rewires ``cross_entropy`` changes what this stage measures;
- ``mixer``: builds ``Mixer(hidden_size=32, num_heads=4)`` (a token-mixer seed) and runs
  forward and backward once;
- ``threads``: reports torch's intra-op thread count;
- ``planned``: reports how many stages the harness announced through ``plan`` and where this
  one stands among them;
- ``warmed``: reports how many times ``warm`` (a preload function) ran in this process;
- ``gpus``: reports ``CUDA_VISIBLE_DEVICES`` of the child (-1 when unset);
- ``constraint``: fails with kind ``complexity`` when ``options["fail"]`` is true;
- ``boom``: raises ``StageFailure(options["kind"])`` so tests can check kinds pass through;
- ``sigkill``: the child sends itself SIGKILL (as the kernel's OOM killer would);
- ``exit``: the child exits at once with ``options["code"]`` (``os._exit``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from evaluator.types import (FailureKind, Objective, Program, Seed, StageFailure, StageResult,
                             StageSpec, TargetSpec)

TRIVIAL = '''
class Model:
    def __init__(self):
        self.scale = 2.0

    def forward(self, x):
        return self.scale * x
'''


WARMED = [0]


def warm() -> None:
    """A preload function (``tests.sandbox.fake_task:warm``)."""
    WARMED[0] += 1


class FakeTask:
    name = "fake"
    description = "sandbox test task"

    def __init__(self, **options: Any):
        self.options = options
        self._model: Any = None
        self._planned: list[StageSpec] = []

    def plan(self, stages: list[StageSpec], target: TargetSpec) -> None:
        self._planned = list(stages)

    def preload(self, target: TargetSpec) -> tuple[str, ...]:
        return ("torch", "tests.sandbox.fake_task:warm")

    def interface(self) -> str:
        return "class Model: __init__(self); forward(self, x) -> number"

    def seeds(self) -> list[Seed]:
        return [Seed(name="trivial", code=TRIVIAL, motivation="test")]

    def rungs(self) -> int:
        return 1

    def stages(self, rung: int) -> list[StageSpec]:
        return [StageSpec(name="build", timeout_s=5), StageSpec(name="forward", timeout_s=5)]

    def check_interface(self, module: Any) -> str | None:
        wanted = self.options.get("interface", "Model")
        if not isinstance(getattr(module, wanted, None), type):
            return f"the module must define class {wanted}"
        return None

    def run_stage(self, program: Program, stage: StageSpec, target: TargetSpec) -> StageResult:
        kind = stage.options.get("kind_of_stage", stage.name)
        metrics: dict[str, float] = {}
        if kind == "build":
            self._model = program.module.Model()
        elif kind == "forward":
            if self._model is None:
                self._model = program.module.Model()
            y = self._model.forward(stage.options.get("x", 3))
            if isinstance(y, (int, float)):
                if not math.isfinite(y):
                    raise StageFailure(FailureKind.NAN, f"forward returned {y}")
                metrics["y"] = float(y)
        elif kind == "xent":
            import torch
            import torch.nn.functional as F

            logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
            target_idx = torch.tensor([1, 0])
            metrics["loss"] = float(F.cross_entropy(logits, target_idx))
        elif kind == "mixer":  # a token-mixer seed: forward + backward on random input
            import torch

            layer = program.module.Mixer(hidden_size=32, num_heads=4)
            x = torch.randn(2, 16, 32, requires_grad=True)
            y = layer(x)
            y.square().mean().backward()
            if y.shape != x.shape or not bool(torch.isfinite(x.grad).all()):
                raise StageFailure(FailureKind.CONFORMANCE, f"bad output {tuple(y.shape)}")
            metrics["params"] = float(sum(p.numel() for p in layer.parameters()))
        elif kind == "threads":
            import torch

            metrics["torch_threads"] = float(torch.get_num_threads())
        elif kind == "planned":
            metrics["planned"] = float(len(self._planned))
            metrics["position"] = float(self._planned.index(stage))
        elif kind == "warmed":
            metrics["warmed"] = float(WARMED[0])
        elif kind == "gpus":
            import os

            metrics["gpus"] = float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))
        elif kind == "constraint":
            if stage.options.get("fail"):
                raise StageFailure(FailureKind.COMPLEXITY, "constraint violated", {"exponent": 2.0})
        elif kind == "sigkill":  # dies as the kernel's OOM killer (or anyone) would end it
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "exit":
            import os

            os._exit(int(stage.options.get("code", 1)))
        elif kind == "boom":
            raise StageFailure(FailureKind(stage.options.get("kind", "nan")), "boom")
        return StageResult(stage=stage.name, target=target.name, rung=stage.rung, ok=True,
                           metrics=metrics)

    def objectives(self, metrics: Mapping[str, float]) -> list[Objective]:
        return [Objective("y", "max", metrics.get("y", 0.0))]
