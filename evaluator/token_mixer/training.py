"""The optimisation step shared by the MQAR and LM proxies: AdamW, warm-up + cosine schedule,
gradient clipping, on-device accumulators, and (on CUDA) replay of a captured CUDA graph.

The proxies train small models, whose steps are bound by kernel-launch overhead on a GPU:
measured on an H100 at the rung-1 MQAR shapes (batch 256, T 256, d_model 128), eager steps
took 7-30 ms while the arithmetic needs well under 1 ms. Capturing the whole step (forward,
loss, backward, clipping, fused AdamW) once and replaying it removes that overhead. Capture
is attempted only on CUDA and not in float16 (GradScaler's host-side logic cannot be
captured); a candidate whose code cannot be captured (host synchronisation, host-to-device
copies or data-dependent shapes inside ``forward``) silently trains eagerly instead, which
``Trainer.graphed`` reports. A graph replays the kernels recorded at capture: a candidate
whose ``forward`` changes behaviour from call to call through Python state would be frozen at
its capture-time behaviour (the conformance stages require deterministic forwards).

``loss_fn(batch) -> (loss, correct)`` is called with a device tensor ``batch`` (indices or
offsets that select the step's examples; it must gather its data itself, so that the gather is
part of the graph). ``correct`` is any 0-d tensor to accumulate (e.g. correct predictions).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from evaluator.token_mixer.model import MixerCompiler, MixerLM, compiling

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
COMPILE_QUEUE = 2  # steps in flight on the device while a MixerCompiler works (CompileSwitch)


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    steps: int
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_frac: float = 0.1
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0


def warmup_cosine(steps: int, warmup_frac: float, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup_frac`` of the steps, cosine to ``min_ratio``."""
    warmup = max(1, int(round(warmup_frac * steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(
    model: nn.Module, lr: float | torch.Tensor, weight_decay: float, betas: tuple[float, float],
    device: torch.device, capturable: bool = False,
) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not norms, biases, gains, positions); the fused
    implementation on CUDA (one kernel for the whole update)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not name.startswith("pos.") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if device.type == "cuda":
        kwargs: dict[str, object] = {"fused": True, "capturable": capturable}
    else:
        kwargs = {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **kwargs)


class Trainer:
    """Runs optimisation steps of ``model`` on ``loss_fn``; see the module docstring.

    ``batches`` holds every step's batch selector on the device (``batches[i]`` is what
    ``loss_fn`` gets at step ``i``). A captured step reads its batch and its learning rate from
    device tables through a step counter on the device, so a step is one graph replay: the
    host does almost nothing per step (and holds the GIL for a moment only, which matters
    while another thread compiles).
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, config: OptimConfig, device: torch.device,
        dtype: torch.dtype, batches: torch.Tensor, cuda_graph: bool = True,
    ):
        if batches.shape[0] < config.steps:
            raise ValueError(f"batches holds {batches.shape[0]} steps, the schedule {config.steps}")
        self.model, self.loss_fn, self.config = model, loss_fn, config
        self.device, self.dtype = device, dtype
        self.schedule = warmup_cosine(config.steps, config.warmup_frac, config.min_lr_ratio)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.loss_sum = torch.zeros((), device=device)
        self.correct_sum = torch.zeros((), device=device)
        self.batches = batches
        self.batch = batches[0]  # the current step's batch (set by step / _graph_body)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._lr: torch.Tensor | None = None
        self._next = 0  # the step index the next call must have
        if cuda_graph and device.type == "cuda" and self.scaler is None:
            try:
                self._capture()
            except Exception as exc:  # not capturable: train eagerly
                log.info("CUDA graph capture failed (%s: %s); training eagerly",
                         type(exc).__name__, str(exc)[:200])
                self.graph, self._lr = None, None
                torch.cuda.synchronize(device)
        if self.graph is None:
            self.opt = build_optimizer(model, config.lr, config.weight_decay, config.betas, device)
            for p in self.params:
                p.grad = None

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _body(self) -> None:
        with self._autocast():
            loss, correct = self.loss_fn(self.batch)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.loss_sum += loss.detach()
        self.correct_sum += correct.detach()

    def _graph_body(self) -> None:
        """The captured step: this step's batch and learning rate from the device tables."""
        at = self._index.view(1)
        self.batch = self.batches.index_select(0, at).squeeze(0)
        assert self._lr is not None
        self._lr.copy_(self._lrs.index_select(0, at).squeeze(0))
        self._body()
        self._index += 1

    def _capture(self) -> None:
        """Build a capturable optimizer and the device tables, record the step, then zero the
        optimizer state the warm-up created, so training starts fresh."""
        steps = self.config.steps
        self._lrs = torch.tensor([self.config.lr * self.schedule(i) for i in range(steps)],
                                 dtype=torch.float32, device=self.device)
        self._index = torch.zeros((), dtype=torch.long, device=self.device)
        self._lr = torch.zeros((), device=self.device)
        self.opt = build_optimizer(self.model, self._lr, self.config.weight_decay,
                                   self.config.betas, self.device, capturable=True)
        self.graph = self._record()
        for value in self._optimizer_tensors():  # AdamW's moments and step counts start at 0
            value.zero_()
        torch.cuda.synchronize(self.device)

    def _record(self) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream, then capture one step. The warm-up really steps: the
        parameters, the optimizer state that exists, the accumulators and the step counter are
        put back afterwards (also when capturing fails)."""
        torch.cuda.synchronize(self.device)  # nothing in flight
        saved = [(v, v.detach().clone()) for v in
                 [*self.params, *self._optimizer_tensors(), self.loss_sum, self.correct_sum,
                  self._index]]
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.opt.zero_grad(set_to_none=True)
                    self._graph_body()
                    self._index.zero_()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_body()
            return graph
        except Exception:
            _leave_rng_capture(self.device)
            raise
        finally:
            torch.cuda.synchronize(self.device)
            with torch.no_grad():
                for value, copy in saved:
                    value.copy_(copy)
            torch.cuda.synchronize(self.device)

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        return [v for state in self.opt.state.values() for v in state.values()
                if isinstance(v, torch.Tensor)]

    def recapture(self) -> bool:
        """Record the step again after the model's code changed (e.g. its mixers were swapped
        for compiled ones), keeping the training state. False, with the previous graph kept,
        when the new code cannot be captured. Eager trainers have nothing to do."""
        if self.graph is None:
            return True
        try:
            self.graph = self._record()
        except Exception as exc:  # not capturable: keep the old graph
            log.info("CUDA graph recapture failed (%s: %s)", type(exc).__name__, str(exc)[:200])
            return False
        return True

    def step(self, index: int) -> None:
        """Step ``index`` (0-based: steps are taken in order); no host synchronisation."""
        if index != self._next:
            raise ValueError(f"step {index} called, step {self._next} expected")
        self._next += 1
        if self.graph is not None:
            self.graph.replay()
            return
        for group in self.opt.param_groups:
            group["lr"] = self.config.lr * self.schedule(index)
        self.batch = self.batches[index]
        self._body()
        self.opt.zero_grad(set_to_none=True)

    def take_sums(self) -> tuple[float, float]:
        """(loss sum, correct sum) since the last call; the one host synchronisation."""
        loss, correct = self.loss_sum.item(), self.correct_sum.item()
        self.loss_sum.zero_()
        self.correct_sum.zero_()
        return loss, correct


def _leave_rng_capture(device: torch.device) -> None:
    """A capture that fails part-way leaves the device's default generator in capture mode
    (torch skips the generator's epilogue when ending the capture raises), after which every
    random op on the device fails with "Offset increment outside graph capture". A clone of
    the generator's state starts outside capture, with the same seed and offset."""
    gen = torch.cuda.default_generators[device.index if device.index is not None
                                        else torch.cuda.current_device()]
    gen.graphsafe_set_state(gen.clone_state())


class CompileSwitch:
    """Moves a training loop from eager to compiled mixers once a ``MixerCompiler`` is done.

    The loop calls ``after_step()`` after every step and ``boundary()`` at every window
    boundary (after its host synchronisation). While any compiler of the process is at work
    on a CUDA device, ``after_step`` keeps at most ``queue`` steps in flight, so the
    synchronisations the compiler makes do not wait behind a deep queue of replays. At the
    first boundary after ``compiler`` is done, ``boundary`` swaps in the compiled mixers and
    records the step again (``Trainer.recapture``: parameters, AdamW state and accumulators
    are kept); when the compiled step cannot be captured the mixers go back to eager and the
    compiler is rejected. Without a compiler (or with one that failed) only the pacing applies.
    """

    def __init__(self, model: MixerLM, trainer: Trainer, compiler: MixerCompiler | None,
                 device: torch.device, compiled: bool = False, queue: int = COMPILE_QUEUE):
        self.model, self.trainer, self.compiler = model, trainer, compiler
        self.cuda, self.queue = device.type == "cuda", queue
        self.compiled = compiled  # the mixers train compiled (from the start, or since the switch)
        self.eager_steps = 0  # steps trained eagerly while ``compiler`` existed
        self._events: deque[torch.cuda.Event] = deque()
        self.pace = self.cuda and compiling()

    def after_step(self) -> None:
        self.eager_steps += self.compiler is not None and not self.compiled
        if self.pace:
            self._events.append(torch.cuda.Event())
            self._events[-1].record()
            if len(self._events) > self.queue:
                self._events.popleft().synchronize()

    def boundary(self, more_steps: bool) -> float:
        """Switch if the compiler is done and steps remain; the seconds the switch took."""
        t0 = time.perf_counter()
        compiler = self.compiler
        # (a capture must not overlap another compiler's kernel launches: wait for a later
        # boundary while one is still at work)
        if not self.compiled and compiler is not None and compiler.done() and not compiling():
            if compiler.ok and more_steps:
                self.model.compile_mixers(compiler.backend)
                if self.trainer.recapture():
                    self.compiled = True
                else:
                    self.model.eager_mixers()
                    compiler.reject("the compiled mixers cannot be captured in a CUDA graph")
        self.pace = self.cuda and compiling()
        if not self.pace:
            self._events.clear()
        return time.perf_counter() - t0
