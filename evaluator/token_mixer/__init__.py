"""The ``token-mixer`` task: design a causal sequence mixer, judged by measurement.

A candidate is a Python module defining ``class Mixer(nn.Module)`` (contract in
``INTERFACE``). This module is the task object the campaign sees: its options, the contract
shown to agents, the baseline zoo (``seeds/``), the fidelity ladder and the dispatch of each
stage to its implementation:

    rung 0 (CPU)     conformance -> causality -> recurrent -> complexity (constraint)
                     -> mqar (tiny) -> profile
    rung 1 (target)  mqar (full sweep) -> lm -> profile
    rung 2 (target)  as rung 1 with ``rung2_step_factor`` (4x) the training steps

The correctness stages are ``checks.py`` (conformance, recurrent), ``causality.py`` and
``complexity.py``; the training / measurement stages are ``mqar.py``, ``lm.py`` and
``profile.py``. Importing this module does not import torch (``disco tasks`` stays fast);
torch is imported by the methods that need it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluator.token_mixer.seeds import CATALOGUE, SEED_NAMES, load_seeds
from evaluator.types import (
    FailureKind, Objective, Program, Seed, StageFailure, StageResult, StageSpec, TargetSpec,
)

ALLOWED_IMPORTS: tuple[str, ...] = ("torch", "torch.nn", "torch.nn.functional", "math", "typing")

INTERFACE = """\
Write one Python module that defines a causal token mixer:

    class Mixer(nn.Module):
        def __init__(self, hidden_size: int, num_heads: int, **kw): ...
        def forward(self, x: torch.Tensor) -> torch.Tensor: ...
        # optional, for recurrent decoding:
        def step(self, x_t: torch.Tensor, state) -> tuple[torch.Tensor, object]: ...
        def state_size(self, seq_len: int) -> int: ...

Shapes: x and the returned y are (B, T, D) with D = hidden_size, for any B >= 1 and any
T >= 1 (T = 1 and T that is not a multiple of your chunk size included). num_heads divides D
in every setting the evaluator uses; the task's setting is hidden_size={hidden_size},
num_heads={num_heads}. Construction takes only (hidden_size, num_heads); every other argument
must be a keyword with a default (e.g. chunk_size=64).

Rules, all measured (nothing is judged by reading the code):
- Causal: y[:, t] may depend only on x[:, :t+1]. The gradient of y[:, :t+1] with respect to
  x[:, t+1:] must be exactly zero; changing x[:, t+1:] must not change y[:, :t+1]; and the
  outputs for x[:, :t] must equal the first t outputs for x (no dependence on the total
  length: never normalise by T or by statistics over the whole sequence).
- Samples of a batch are independent (no batch statistics); forward is deterministic (no
  dropout); outputs and all parameter gradients are finite; every parameter with
  requires_grad receives a gradient.
- At most {max_params} parameters at the task's setting.
- Cost at most ~T^{complexity_bound}: FLOPs and materialised tensor elements of one forward
  are counted at T = 256..4096 on the meta device and fitted on a log-log scale; quadratic
  attention-style T x T matrices fail. Chunk the sequence: a (C x C) product inside chunks of
  C tokens and a recurrent state carried across chunks.
- Precision: parameters are float32; a reduced campaign precision is applied by
  torch.autocast. Compute in the dtype you are given: a mixer that casts down internally
  (e.g. to bfloat16) while the campaign runs float32 fails.
- step(x_t, state): x_t is (B, D), state is None for the first token and afterwards whatever
  the previous call returned; returns (y_t of shape (B, D), new state). Run token by token it
  must reproduce forward (relative error < 1e-3 in float32). state_size(seq_len) is the number
  of state elements kept per sequence after seq_len tokens (tensors only); it must not
  under-state what step keeps.
- Imports: only {imports}. No I/O, no network, no subprocesses.

Scored by: MQAR associative recall accuracy (higher is better) and language-modelling
validation loss (lower), both trained in a small fixed model around your mixer, and the
mixer's own training throughput in tokens/s (higher) and parameter count (lower).
"""


class ProxyPreset(BaseModel):
    """What a training / measurement stage's ``StageSpec.options`` hold: a preset resolved
    against the target at run time (a CPU target gets the reduced sizes), a step factor for
    the longer rung, and the campaign's overrides of the stage's own options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["rung0", "rung1"] = "rung0"
    step_factor: float = Field(default=1.0, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)


class TokenMixerOptions(BaseModel):
    """The ``[task.options]`` table of a token-mixer campaign."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(default=64, gt=0)
    num_heads: int = Field(default=4, gt=0)
    max_params: int | None = Field(default=None, gt=0)  # None: 16 * hidden_size^2
    complexity_bound: float = Field(default=1.2, gt=0)
    rung2_step_factor: float = Field(default=4.0, gt=0)
    mqar: dict[str, Any] = Field(default_factory=dict)  # overrides of MQAROptions fields
    lm: dict[str, Any] = Field(default_factory=dict)  # overrides of LMOptions fields
    profile: dict[str, Any] = Field(default_factory=dict)  # overrides of ProfileOptions fields

    @model_validator(mode="after")
    def _heads_divide(self) -> TokenMixerOptions:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        return self

    @property
    def param_budget(self) -> int:
        return self.max_params if self.max_params is not None else 16 * self.hidden_size ** 2


def _option_error(exc: ValidationError, data: Mapping[str, Any], prefix: str = "") -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if not loc:  # a check across several keys
        where = f" {prefix.rstrip('.')}" if prefix else ""
        return f"token-mixer options{where}: {err['msg'].removeprefix('Value error, ')}"
    key = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "options"
    if err["type"] == "extra_forbidden":
        return f"token-mixer option {key!r} is unknown; allowed: {', '.join(_allowed(prefix))}"
    value = err.get("input", data.get(loc) if loc else None)
    return f"token-mixer option {key!r}: got {value!r}; {err['msg']}"


def _allowed(prefix: str) -> list[str]:
    if not prefix:
        return list(TokenMixerOptions.model_fields)
    return list(_stage_options_class(prefix.rstrip(".")).model_fields)


def _stage_options_class(stage: str) -> type[BaseModel]:
    """The options model of a training / measurement stage (imports torch)."""
    if stage == "mqar":
        from evaluator.token_mixer.mqar import MQAROptions
        return MQAROptions
    if stage == "lm":
        from evaluator.token_mixer.lm import LMOptions
        return LMOptions
    if stage == "profile":
        from evaluator.token_mixer.profile import ProfileOptions
        return ProfileOptions
    raise KeyError(stage)


def resolve_proxy_options(stage: str, spec: ProxyPreset, device_type: str) -> BaseModel:
    """Build the stage's options: the preset for this device, overrides, then the step factor."""
    cls = _stage_options_class(stage)
    factory: Callable[..., BaseModel] = cls
    if spec.preset == "rung1":
        preset = "rung1" if device_type == "cuda" else "cpu_fallback"
        factory = getattr(cls, preset, cls)
    options = factory(**spec.overrides)
    if spec.step_factor != 1.0:
        # the training budget is ``tokens`` where a stage has it and it is set, else ``steps``
        key = "tokens" if getattr(options, "tokens", None) is not None else "steps"
        if key in cls.model_fields:
            budget = max(1, round(getattr(options, key) * spec.step_factor))
            options = cls(**{**options.model_dump(), key: budget})
    return options


class TokenMixerTask:
    """The token-mixer task (see the module docstring); built from ``[task.options]``."""

    name = "token-mixer"
    description = ("Design a causal token mixer (the sequence-mixing layer of a language "
                   "model) that recalls well, models language well and runs fast, at a cost "
                   "linear in sequence length.")
    reference_seed = "linear_attention"
    # seeds evaluated and shown as references although they violate a campaign constraint
    reference_only_seeds: Mapping[str, tuple[str, ...]] = MappingProxyType(
        {e.name: e.violates for e in CATALOGUE if e.violates})

    def __init__(self, **options: Any) -> None:
        try:
            self.options = TokenMixerOptions(**options)
        except ValidationError as exc:
            raise ValueError(_option_error(exc, options)) from None
        for stage in ("mqar", "lm", "profile"):
            overrides = getattr(self.options, stage)
            if overrides:  # validated here (imports torch) only when a campaign sets any
                try:
                    _stage_options_class(stage)(**overrides)
                except ValidationError as exc:
                    raise ValueError(_option_error(exc, overrides, f"{stage}.")) from None

    # ------------------------------------------------------------------ driver side
    def interface(self) -> str:
        o = self.options
        return INTERFACE.format(hidden_size=o.hidden_size, num_heads=o.num_heads,
                                max_params=o.param_budget, complexity_bound=o.complexity_bound,
                                imports=", ".join(ALLOWED_IMPORTS))

    def seeds(self) -> list[Seed]:
        return load_seeds(self.reference_seed)

    def rungs(self) -> int:
        return 3

    def stages(self, rung: int) -> list[StageSpec]:
        o = self.options
        dims = {"hidden_size": o.hidden_size, "num_heads": o.num_heads}

        def proxy(stage: str, preset: str, factor: float = 1.0) -> dict[str, Any]:
            return ProxyPreset(preset=preset, step_factor=factor,  # type: ignore[arg-type]
                               overrides=dict(getattr(o, stage))).model_dump()

        if rung == 0:
            return [
                StageSpec(name="conformance", rung=0, timeout_s=60, device="any",
                          options={**dims, "max_params": o.param_budget}),
                StageSpec(name="causality", rung=0, timeout_s=60, device="any", options=dims),
                StageSpec(name="recurrent", rung=0, timeout_s=60, device="any", options=dims),
                StageSpec(name="complexity", rung=0, timeout_s=60, device="cpu", constraint=True,
                          options={**dims, "bound": o.complexity_bound}),
                StageSpec(name="mqar", rung=0, timeout_s=120, device="cpu",
                          options=proxy("mqar", "rung0")),
                StageSpec(name="profile", rung=0, timeout_s=60, device="cpu",
                          options=proxy("profile", "rung0")),
            ]
        if rung in (1, 2):
            factor = 1.0 if rung == 1 else o.rung2_step_factor  # timeouts grow with the steps
            return [
                StageSpec(name="mqar", rung=rung, timeout_s=600 * factor, device="any",
                          options=proxy("mqar", "rung1", factor)),
                StageSpec(name="lm", rung=rung, timeout_s=600 * factor, device="any",
                          options=proxy("lm", "rung1", factor)),
                StageSpec(name="profile", rung=rung, timeout_s=300, device="any",
                          options=proxy("profile", "rung1")),
            ]
        raise ValueError(f"token-mixer has rungs 0..{self.rungs() - 1}; got rung {rung}")

    def objectives(self, metrics: Mapping[str, float]) -> list[Objective]:
        # mqar_loss (held-out query cross-entropy) grades candidates that tie on accuracy at
        # chance or at the ceiling (benchmarks/rank_fidelity.py: it ranks better than accuracy).
        wanted = (("mqar_acc", "max"), ("mqar_loss", "min"), ("lm_val_loss", "min"),
                  ("train_tokens_per_s", "max"), ("params", "min"))
        return [Objective(name, direction, float(metrics[name]))  # type: ignore[arg-type]
                for name, direction in wanted
                if name in metrics and math.isfinite(float(metrics[name]))]

    # ------------------------------------------------------------------ child side
    def check_interface(self, module: Any) -> str | None:
        return check_mixer_interface(module)

    def preload(self, target: TargetSpec) -> tuple[str, ...]:
        """What a pooled sandbox child loads before its request (see ``Task``): torch, and for
        a GPU target the CUDA warm-up at the target's precision (``warmup.cuda_<dtype>``:
        compile machinery, CUDA context, a few captured steps of the MQAR frame)."""
        if target.device == "cuda":
            return ("torch", f"evaluator.token_mixer.warmup:cuda_{target.dtype}")
        return ("torch",)

    def plan(self, stages: list[StageSpec], target: TargetSpec) -> None:
        """Child side: the stages about to run in this process (see ``Task``)."""
        self._planned = list(stages)

    def run_stage(self, program: Program, stage: StageSpec, target: TargetSpec) -> StageResult:
        """Run one stage on ``program`` inside the sandbox child.

        A ``StageFailure`` becomes a failed ``StageResult``; any other exception propagates to
        the sandbox harness (RUNTIME / OOM).
        """
        t0 = time.perf_counter()
        planned = getattr(self, "_planned", [])
        later = planned[planned.index(stage) + 1:] if stage in planned else []
        try:
            metrics = _run(stage, program, target, later)
        except StageFailure as failure:
            return StageResult.failure(
                stage.name, failure.kind, failure.message, target=target.name, rung=stage.rung,
                wall_s=time.perf_counter() - t0, metrics=_finite(failure.metrics),
            )
        return StageResult(stage=stage.name, target=target.name, rung=stage.rung, ok=True,
                           metrics=_finite(metrics), wall_s=time.perf_counter() - t0)


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as plain floats; non-finite values are dropped (they do not survive JSON)."""
    out = {}
    for key, value in metrics.items():
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    return out


def _device_type(stage: StageSpec, target: TargetSpec) -> str:
    return "cpu" if stage.device == "cpu" else target.device


def _run(stage: StageSpec, program: Program, target: TargetSpec,
         later: Sequence[StageSpec] = ()) -> dict[str, float]:
    """Run ``stage``; ``later`` are the stages this process runs after it (``plan``)."""
    import torch

    from evaluator.token_mixer.model import resolve_dtype

    device_type = _device_type(stage, target)
    if device_type == "cuda" and not torch.cuda.is_available():
        raise StageFailure(FailureKind.INFRA,
                           f"target {target.name!r} asks for CUDA but this worker has no usable GPU")
    device = torch.device("cuda" if device_type == "cuda" else "cpu")
    dtype = resolve_dtype(target.dtype)
    make_mixer = program.module.Mixer
    args = (device, dtype, program.seed)
    name, opts = stage.name, stage.options
    if name == "conformance":
        from evaluator.token_mixer.checks import ConformanceOptions, run_conformance
        return run_conformance(make_mixer, ConformanceOptions(**opts), *args)
    if name == "causality":
        from evaluator.token_mixer.causality import CausalityOptions, run_causality
        return run_causality(make_mixer, CausalityOptions(**opts), *args)
    if name == "recurrent":
        from evaluator.token_mixer.checks import RecurrentOptions, run_recurrent
        return run_recurrent(make_mixer, RecurrentOptions(**opts), *args)
    if name == "complexity":
        from evaluator.token_mixer.complexity import ComplexityOptions, run_complexity
        return run_complexity(make_mixer, ComplexityOptions(**opts), *args)
    if name in ("mqar", "lm", "profile"):
        proxy = resolve_proxy_options(name, ProxyPreset(**opts), device_type)
    if name == "mqar":
        from evaluator.token_mixer.mqar import run_mqar
        return run_mqar(make_mixer, proxy, *args,  # type: ignore[arg-type]
                        prewarm=_lm_prewarm(later, make_mixer, device, dtype, program.seed, target))
    if name == "lm":
        from evaluator.token_mixer.lm import run_lm
        return run_lm(make_mixer, proxy, *args)  # type: ignore[arg-type]
    if name == "profile":  # timed side by side with the reference seed, for ratios
        from evaluator.token_mixer.profile import run_profile
        reference = _seed_mixer(TokenMixerTask.reference_seed)
        return run_profile(make_mixer, proxy, *args, reference_make_mixer=reference)  # type: ignore[arg-type]
    raise ValueError(f"token-mixer has no stage {name!r}")


def _lm_prewarm(later: Sequence[StageSpec], make_mixer: Any, device: Any, dtype: Any, seed: int,
                target: TargetSpec) -> Callable[[], object] | None:
    """What the MQAR stage calls to start compiling the next LM stage's shapes (when an LM
    stage follows in this process on the same device; ``lm.prewarm_lm``)."""
    lm = next((s for s in later if s.name == "lm"), None)
    if lm is None or _device_type(lm, target) != device.type:
        return None
    from evaluator.token_mixer.lm import LMOptions, prewarm_lm

    options = resolve_proxy_options("lm", ProxyPreset(**lm.options), device.type)
    assert isinstance(options, LMOptions)
    return lambda: prewarm_lm(make_mixer, options, device, dtype, seed)


def _seed_mixer(name: str) -> Callable[[int, int], Any]:
    """The ``Mixer`` class of a shipped seed (trusted package code, executed from its text)."""
    import types

    from evaluator.token_mixer.seeds import seed_source

    module = types.ModuleType(f"archdisco_seed_{name}")
    exec(compile(seed_source(name), f"<seed {name}>", "exec"), module.__dict__)  # noqa: S102
    return module.Mixer


def check_mixer_interface(module: Any) -> str | None:
    """None when ``module`` defines a usable ``Mixer``, else one message saying what to fix."""
    from torch import nn

    cls = getattr(module, "Mixer", None)
    if cls is None:
        return "the module defines no `Mixer`; define `class Mixer(nn.Module)`"
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        return "`Mixer` must be a class that subclasses torch.nn.Module"
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return "the signature of `Mixer.__init__` cannot be read"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if [p.name for p in positional[:2]] != ["hidden_size", "num_heads"]:
        got = ", ".join(p.name for p in params) or "nothing"
        return f"`Mixer.__init__` must take (hidden_size, num_heads, **kw) first; it takes ({got})"
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        return "`Mixer.__init__` must accept **kw (extra keyword options) after hidden_size, num_heads"
    required = [p.name for p in params[2:]
                if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if required:
        return (f"`Mixer.__init__` arguments {', '.join(required)} need defaults: only "
                "hidden_size and num_heads are passed")
    if getattr(cls, "forward", None) is getattr(nn.Module, "forward", None):
        return "`Mixer` must define forward(self, x)"
    shapes = {"forward": "(self, x)", "step": "(self, x_t, state)", "state_size": "(self, seq_len)"}
    for method, arity in (("forward", 1), ("step", 2), ("state_size", 1)):
        fn = getattr(cls, method, None)
        if fn is None:
            continue
        if not callable(fn):
            return f"`Mixer.{method}` must be a method"
        try:
            inspect.signature(fn).bind(None, *([None] * arity))
        except TypeError:
            return f"`Mixer.{method}` must be callable as {method}{shapes[method]}"
        except ValueError:
            continue
    return None


__all__ = ["INTERFACE", "SEED_NAMES", "TokenMixerOptions", "TokenMixerTask", "check_mixer_interface"]
