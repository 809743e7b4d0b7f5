"""Multi-query associative recall (MQAR): the recall proxy of the token-mixer task.

The data follow Zoology (Arora, Eyuboglu et al., 2023, "Zoology: Measuring and improving recall
in efficient language models"): each sequence starts with ``num_kv_pairs`` key-value pairs,
keys drawn without replacement from the lower half of the vocabulary (ids 1 .. V/2-1) and
values from the upper half (V/2 .. V-1); every key is queried once later in the sequence, at
even offsets after the pairs whose gaps follow a power law (weight of gap i proportional to
i^(a-1), a = 0.01, sampled without replacement); every other position holds a random token.
The label at a query position is the value bound to that key; every other label is -100.
Only query positions are scored, and accuracy is the fraction of query positions whose argmax
prediction is exactly the value.

Training: the :class:`~evaluator.token_mixer.model.MixerLM` frame around the candidate, AdamW
with linear warm-up and cosine decay, for each (seq_len, num_kv_pairs) setting and each
learning rate of a small sweep; the best learning rate per setting is kept (linear mixers are
very sensitive to it; rung 1 on a GPU cuts the sweep at half the budget, after which only the
best run trains on, ``sweep_cut``). Data are deterministic per seed (CPU generator, then moved
to the device), model initialisation is identical across the sweep, and the training loop keeps the
device busy: on CUDA the whole step is a replayed CUDA graph where the candidate allows it
(``training.py``), the candidate's mixers are trained through ``torch.compile`` (``compile``,
on CUDA only: ``MixerLM.compile_mixers``; the mixer keeps running eagerly where it cannot be
compiled, and ``mqar_compiled_graphs`` counts what was) after compiling on a worker thread
while the first run trains eagerly (``MixerCompiler``; ``mqar_eager_steps`` says how many
steps that was, so GPU runs are not bit-reproducible), and there is no host synchronisation
except every ``check_every`` steps, where the loss is checked for non-finite values and the
step time of the window is recorded. The frame's token shift is on by default (see
``model.py``).

Rung 0 (the defaults: T=64 with 16 pairs, one layer, 400 steps, LRs 1e-2 then 3e-3), measured
on one CPU thread per job for the seed zoo with seeds 0, 1, 2: softmax and sliding-window
attention >= 0.995 (early stop after 225-275 steps); DeltaNet 0.65 / 0.94 / 0.94; plain linear
attention 0.07 / 0.16 / 0.11; RetNet, GLA, Gated DeltaNet and Mamba2-SSD 0.013-0.019 (chance
is 1/64 for a value guess, 1/16 for a guess among the sequence's values). Those four pass the
recall transition only after 500-1200 steps, so rung 0 measures how fast recall is learned,
not only how much can be recalled. With 8 pairs instead of 16, linear attention reached
0.34 / 0.98 / 0.91 over the same seeds: too close to attention to separate them reliably.
(With 16 pairs in 64 tokens every query slot holds a query, so the power law has no effect
at rung 0; it matters at rung 1.)

Every setting reports its accuracy (``mqar_acc_<tag>``), its query loss, the learning rate
kept, and the state the model carried: ``mqar_state_<tag>``, the mixer's declared
``state_size(seq_len)`` at the frame's width times the number of layers (elements per
sequence), so runs can be compared at matched state size, as Zoology plots recall.

Presets: ``MQAROptions()`` is the tiny rung-0 CPU setting, ``MQAROptions.rung1()`` the GPU
setting, ``MQAROptions.cpu_fallback()`` a reduced rung-1 for machines without a GPU (reported
as ``mqar_reduced=1``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from evaluator.token_mixer.model import (
    MixerCompiler, MixerFactory, MixerLM, ModelConfig, autocast_context, compiled_graphs,
    compiling, seeded, synchronize, use_sdpa_order, wait_for_compilers,
)
from evaluator.token_mixer.training import CompileSwitch, OptimConfig, Trainer
from evaluator.types import FailureKind, StageFailure

IGNORE_INDEX = -100
# examples per forward of the held-out evaluation (at least the training batch): an eager
# forward is hundreds of kernel launches, each needing the GIL, which a compile running on
# another thread holds for up to 5 ms at a time (docs/PERFORMANCE.md, rung-1 cost); fewer,
# larger batches need fewer launches and give the same scores (sequences are independent)
EVAL_BATCH = 1024
# intra-op threads for drawing the first setting's data on a CUDA run, where the device idles
# until they exist (the harness gives a child one thread, one evaluation per core on a CPU)
DATA_THREADS = 4
log = logging.getLogger(__name__)


class MQARSetting(BaseModel):
    """One (sequence length, number of key-value pairs) point. TOML may write ``[256, 16]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq_len: int = Field(gt=0)
    num_kv_pairs: int = Field(gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return {"seq_len": value[0], "num_kv_pairs": value[1]}
        return value

    @property
    def tag(self) -> str:
        return f"T{self.seq_len}_kv{self.num_kv_pairs}"


class MQAROptions(BaseModel):
    """Everything the MQAR stage needs. The defaults are the rung-0 CPU setting: 2-4 s on one
    CPU thread for a mixer that learns the task (early stop), 5-13 s for one that runs both
    learning rates to the end (measured on the seed zoo, unloaded 2-core machine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: tuple[MQARSetting, ...] = (MQARSetting(seq_len=64, num_kv_pairs=16),)
    vocab_size: int = Field(default=128, gt=4)
    power_a: float = Field(default=0.01, gt=0.0, le=1.0)
    random_non_queries: bool = True
    # model frame
    d_model: int = Field(default=64, gt=0)
    n_layers: int = Field(default=1, gt=0)
    num_heads: int = Field(default=2, gt=0)
    mlp: str = Field(default="swiglu", pattern="^(swiglu|gelu)$")
    mlp_ratio: float = Field(default=2.0, gt=0.0)
    pos_emb: str = Field(default="learned", pattern="^(none|learned)$")
    token_shift: bool = True
    # optimisation
    batch_size: int = Field(default=16, gt=0)
    steps: int = Field(default=400, gt=0)
    lrs: tuple[float, ...] = (1e-2, 3e-3)
    weight_decay: float = Field(default=0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_frac: float = Field(default=0.1, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    grad_clip: float | None = 1.0
    # data: None = fresh examples for every step (steps * batch_size of them)
    train_examples: int | None = Field(default=None, gt=0)
    eval_batches: int = Field(default=16, gt=0)
    # loop control
    check_every: int = Field(default=25, gt=0)  # host sync / NaN check / timing window
    early_stop_acc: float | None = 0.995  # stop a run once a window's train accuracy reaches it
    stop_sweep_at: float | None = 0.99  # skip the remaining LRs once a run's eval accuracy does
    # fraction of the budget after which only the sweep's best run (held-out score) trains on
    # to the end; None or 1 = every learning rate trains its whole budget (see _sweep)
    sweep_cut: float | None = Field(default=None, gt=0.0, le=1.0)
    cuda_graph: bool = True  # on CUDA, replay a captured graph of the step (training.py)
    compile: bool = True  # on CUDA, train through torch.compile'd mixers (MixerLM.compile_mixers)
    reduced: bool = False  # set by cpu_fallback(): reported as mqar_reduced=1

    @model_validator(mode="after")
    def _check(self) -> MQAROptions:
        if not self.settings:
            raise ValueError("settings: at least one (seq_len, num_kv_pairs) setting is needed")
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs: need at least one positive learning rate, got {self.lrs}")
        for s in self.settings:
            if s.seq_len % 2:
                raise ValueError(f"settings: seq_len must be even, got {s.seq_len}")
            if 4 * s.num_kv_pairs > s.seq_len:
                raise ValueError(
                    f"settings: {s.num_kv_pairs} pairs need seq_len >= {4 * s.num_kv_pairs}, got {s.seq_len}"
                )
            if self.vocab_size <= s.seq_len:  # as Zoology asserts
                raise ValueError(f"vocab_size {self.vocab_size} must exceed seq_len {s.seq_len}")
            if s.num_kv_pairs > self.vocab_size // 2 - 1:
                raise ValueError(f"vocab_size {self.vocab_size} too small for {s.num_kv_pairs} distinct keys")
        return self

    @classmethod
    def rung1(cls, **overrides: Any) -> MQAROptions:
        """The GPU setting of rung 1: Zoology's vocabulary (8192), d_model 128, seq_len 256 with
        16 and 64 pairs, a two-point LR sweep cut at half the budget (``sweep_cut``: only the
        better run trains on from step 1000), 2000 steps at batch 256 per run (a run stops
        early once its training accuracy reaches 0.995, and the sweep stops once a run reaches
        0.99 on held-out data).

        Cost on an H100 through the sandbox, Gated DeltaNet (the slowest seed), mixers compiled
        beside the first run, LM shapes compiled beside the last: this stage took 98-132 s
        (4800-6400 steps; the whole rung 129-166 s, GPU busy 83-88%), against 147 s (8000 steps;
        200.1 s) with the full sweep (docs/PERFORMANCE.md). Cutting every run to 1500 steps
        instead dropped its 64-pair accuracy from 0.93 to 0.35 (below the transition), so the
        budget stays at 2000 steps.
        Earlier measurements with 16/32/64 pairs at 2000 steps, eager: softmax attention 0.9996
        / 0.9997 / 0.9995, DeltaNet 0.998 / 0.994 / 0.999, plain linear attention 0.986 / 0.598
        / 0.113."""
        base: dict[str, Any] = dict(
            settings=((256, 16), (256, 64)), vocab_size=8192, d_model=128,
            n_layers=2, num_heads=2, batch_size=256, steps=2000, lrs=(1e-3, 3e-3),
            train_examples=100_000, eval_batches=12, check_every=100, sweep_cut=0.5,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def cpu_fallback(cls, **overrides: Any) -> MQAROptions:
        """Rung 1 reduced for a CPU (``mqar_reduced=1``): the rung-0 frame with twice the steps
        and a second, harder setting."""
        base: dict[str, Any] = dict(
            settings=((64, 16), (128, 32)), vocab_size=256, steps=800, check_every=50,
            reduced=True,
        )
        return cls(**{**base, **overrides})

    def model_config_for(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            num_heads=self.num_heads, max_seq_len=max(s.seq_len for s in self.settings),
            mlp=self.mlp,  # type: ignore[arg-type]
            mlp_ratio=self.mlp_ratio,
            pos_emb=self.pos_emb,  # type: ignore[arg-type]
            token_shift=self.token_shift,
        )


# ----------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class MQARData:
    """MQAR sequences as Zoology defines them: ``inputs`` (N, T), the K query positions of each
    and the values expected there (N, K), which the training loop uses to score only those
    positions. ``labels`` (N, T; -100 off the queries) is derived on demand: training and
    scoring never need it, and leaving it out saves its generation and its copy to the device
    (200 MB at rung 1's 100k x 256)."""

    inputs: torch.Tensor
    query_pos: torch.Tensor
    query_val: torch.Tensor

    @property
    def labels(self) -> torch.Tensor:
        out = torch.full(self.inputs.shape, IGNORE_INDEX, dtype=torch.long, device=self.inputs.device)
        return out.scatter_(1, self.query_pos, self.query_val)

    def to(self, device: torch.device) -> MQARData:
        return MQARData(*(t.to(device) for t in (self.inputs, self.query_pos, self.query_val)))


def _distinct_ints(n: int, k: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) integers in [low, high), distinct within a row, uniformly random in order."""
    m = high - low
    if k > m:
        raise ValueError(f"cannot draw {k} distinct values from {m}")
    if m <= 4 * k:  # dense: random scores, top-k is a uniformly random ordered k-subset
        return torch.rand(n, m, generator=gen).topk(k, dim=1).indices + low
    out = torch.randint(low, high, (n, k), generator=gen)
    rows = torch.arange(n)
    while True:  # sparse: redraw rows with a repeat (uniform over distinct ordered tuples)
        s = out[rows].sort(dim=1).values  # only rows redrawn last round can have a repeat
        rows = rows[(s[:, 1:] == s[:, :-1]).any(dim=1)]
        if rows.numel() == 0:
            return out
        out[rows] = torch.randint(low, high, (rows.numel(), k), generator=gen)


def generate_mqar(
    num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, seed: int,
    power_a: float = 0.01, random_non_queries: bool = True,
) -> MQARData:
    """Generate ``num_examples`` MQAR sequences on the CPU, deterministically from ``seed``."""
    n, t, k, v = num_examples, seq_len, num_kv_pairs, vocab_size
    if t % 2 or 4 * k > t or v <= t or k > v // 2 - 1:
        raise ValueError(f"invalid MQAR shape: seq_len={t}, num_kv_pairs={k}, vocab_size={v}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    half = v // 2
    keys = _distinct_ints(n, k, 1, half, gen)
    values = _distinct_ints(n, k, half, v, gen)
    context = 2 * k
    space = (t - context) // 2  # query slots: even offsets after the key-value pairs
    # Power-law gaps sampled without replacement: Gumbel top-k draws k slots with the same law
    # as k successive weighted draws without replacement (what numpy's choice(replace=False) does).
    log_w = (power_a - 1.0) * torch.log(torch.arange(1, space + 1, dtype=torch.float64))
    u = torch.rand(n, space, generator=gen, dtype=torch.float64).clamp_(min=1e-300)
    gaps = (log_w - torch.log(-torch.log(u))).topk(k, dim=1).indices
    query_pos = context + 2 * gaps

    # every position the pairs and queries do not take holds noise (or 0): the pairs and the
    # queries are written over it, the same tensor a mask-and-select gave. With ``labels``
    # derived on demand, rung 1's first setting is drawn in half the time (one thread, CPU
    # machine: median 1.20 s against 2.33 s; docs/PERFORMANCE.md), host work the GPU waits for
    if random_non_queries:
        inputs = torch.randint(0, v, (n, t), generator=gen)
    else:
        inputs = torch.zeros(n, t, dtype=torch.long)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    inputs.scatter_(1, query_pos, keys)
    order = query_pos.argsort(dim=1)  # queries in sequence order (cosmetic; scoring ignores order)
    return MQARData(inputs, query_pos.gather(1, order), values.gather(1, order))


def _data_seed(seed: int, setting: MQARSetting, split: str) -> int:
    return zlib.crc32(f"mqar:{seed}:{setting.seq_len}:{setting.num_kv_pairs}:{split}".encode())


# ----------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RunResult:
    lr: float
    accuracy: float  # nan when the run went non-finite
    finite: bool
    steps: int
    wall_s: float
    window_step_ms: tuple[float, ...]
    graphed: bool = False  # trained by replaying a captured CUDA graph
    loss: float = math.nan  # mean cross-entropy at held-out query positions
    setup_s: float = 0.0  # model build, graph capture (and a switch to compiled mixers)
    eval_s: float = 0.0  # held-out evaluation after training
    eager_steps: int = 0  # steps trained with eager mixers while a compiler was at work
    wait_s: float = 0.0  # of setup_s: waiting for a compiler to finish before capturing
    capture_s: float = 0.0  # of setup_s: building the trainer (warm-up steps and capture)

    def rank_key(self) -> tuple[float, float]:
        """Best run: highest accuracy, then lowest held-out loss (separates runs that tie at
        chance or at the ceiling, where accuracy alone carries no ranking)."""
        return (self.accuracy, -self.loss)


def _query_logits(model: MixerLM, x: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    h = model.hidden(x)
    hq = h.gather(1, qpos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    return model.logits(hq).float()


def evaluate(
    model: MixerLM, data: MQARData, batch_size: int, device: torch.device, dtype: torch.dtype,
) -> tuple[float, float]:
    """(accuracy over query positions, mean query loss) of ``model`` on ``data`` (on device)."""
    model.eval()
    correct = torch.zeros((), device=device, dtype=torch.long)
    loss_sum = torch.zeros((), device=device)
    with torch.no_grad(), autocast_context(device, dtype):
        for i in range(0, data.inputs.shape[0], batch_size):
            qv = data.query_val[i:i + batch_size]
            logits = _query_logits(model, data.inputs[i:i + batch_size], data.query_pos[i:i + batch_size])
            correct += (logits.argmax(-1) == qv).sum()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), qv.flatten(), reduction="sum")
    model.train()
    total = data.query_val.numel()
    return correct.item() / total, loss_sum.item() / total


def train_run(
    make_mixer: MixerFactory, options: MQAROptions, train: MQARData, test: MQARData, lr: float,
    device: torch.device, dtype: torch.dtype, seed: int, compiler: MixerCompiler | None = None,
    after_setup: Callable[[], None] | None = None,
) -> RunResult:
    """Train one model at one learning rate on ``train`` (on device) for the whole budget (or
    until it stops early), score it on ``test``. See ``Run`` for ``compiler`` and
    ``after_setup``."""
    run = Run(make_mixer, options, train, test, lr, device, dtype, seed, compiler, after_setup)
    run.advance(options.steps)
    return run.result()


class Run:
    """One learning rate's training run, trained in pieces (``advance``) so that a sweep can
    pause it, compare it with the others and continue only the best (``sweep_cut``).

    With a ``compiler``, the mixers train compiled: from the first step when it has already
    compiled them; otherwise this run starts it (on a copy of the model, after the step is
    captured) and trains eagerly until it is done, then switches at a window boundary. While
    any compiler of the process works, the loop keeps at most ``training.COMPILE_QUEUE``
    steps queued on the device (``CompileSwitch``), so the device synchronisations the
    compiler makes do not wait behind a deep queue of replays. Sandboxed rung-1 runs of
    Gated DeltaNet on the H100, pointwise autotuning still on: compile 63.1 s beside training
    without the cap, 57.5 s in the next run with it (single runs, with other changes in
    between); most of the slow-down went only when autotuning went
    (``model.COMPILE_OPTIONS``: 30.9 s).

    ``after_setup`` is called once the step is captured and before training starts (the MQAR
    stage starts compiling the LM stage's shapes there, ``run_mqar``).
    """

    def __init__(
        self, make_mixer: MixerFactory, options: MQAROptions, train: MQARData, test: MQARData,
        lr: float, device: torch.device, dtype: torch.dtype, seed: int,
        compiler: MixerCompiler | None = None, after_setup: Callable[[], None] | None = None,
    ):
        t0 = time.perf_counter()
        self.options, self.test, self.lr, self.device, self.dtype = options, test, lr, device, dtype
        self.wait_s = wait_for_compilers()  # no capture while a compiler launches kernels
        with seeded(seed, device):
            model = MixerLM(options.model_config_for(), make_mixer).to(device)
        compiled = compiler is not None and compiler.ok
        if compiled:
            assert compiler is not None
            model.compile_mixers(compiler.backend)
        b = options.batch_size
        self.queries = b * train.query_pos.shape[1]  # scored positions per step
        n = train.inputs.shape[0]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        order = torch.cat([torch.randperm(n, generator=gen)
                           for _ in range(math.ceil(options.steps * b / n))])
        order = order[: options.steps * b].view(options.steps, b).to(device)

        def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            qv = train.query_val[idx]
            logits = _query_logits(model, train.inputs[idx], train.query_pos[idx])
            loss = F.cross_entropy(logits.flatten(0, 1), qv.flatten())
            return loss, (logits.detach().argmax(-1) == qv).sum()

        config = OptimConfig(
            lr=lr, steps=options.steps, weight_decay=options.weight_decay, betas=options.betas,
            warmup_frac=options.warmup_frac, min_lr_ratio=options.min_lr_ratio,
            grad_clip=options.grad_clip,
        )
        t_capture = time.perf_counter()
        self.trainer = Trainer(model, loss_fn, config, device, dtype, order, options.cuda_graph)
        self.capture_s = time.perf_counter() - t_capture
        if compiler is not None and not compiler.started:
            with seeded(seed, device):
                scratch = MixerLM(options.model_config_for(), make_mixer).to(device)
            compiler.start(scratch, train.inputs[order[0]], dtype)
        if after_setup is not None:
            after_setup()
        self.model = model
        self.switch = CompileSwitch(model, self.trainer, compiler, device, compiled)
        self.windows: list[float] = []
        self.step = 0
        self.finite = True
        self.stopped = False  # stopped early (accuracy reached early_stop_acc, or non-finite)
        self.eval_s = 0.0
        self._scored: tuple[int, float, float] | None = None  # (step, accuracy, loss)
        synchronize(device)
        self.setup_s = time.perf_counter() - t0
        self.wall_s = self.setup_s

    @property
    def over(self) -> bool:
        """Nothing left to train: the budget is spent or the run stopped."""
        return self.stopped or self.step >= self.options.steps

    def advance(self, until: int) -> None:
        """Train up to step ``until`` (at most the budget), with a window boundary there."""
        t0 = time.perf_counter()
        options, trainer = self.options, self.trainer
        until = min(until, options.steps)
        win_t, win_steps = time.perf_counter(), 0
        while not self.over and self.step < until:
            trainer.step(self.step)
            self.step += 1
            win_steps += 1
            self.switch.after_step()
            if win_steps == options.check_every or self.step == until:
                loss_sum, correct = trainer.take_sums()  # the one host sync of the window
                self.windows.append(1000.0 * (time.perf_counter() - win_t) / win_steps)
                if not math.isfinite(loss_sum):
                    self.finite, self.stopped = False, True
                    break
                train_acc = correct / (win_steps * self.queries)
                log.debug("mqar lr=%g step=%d loss=%.4f train_acc=%.4f step_ms=%.2f",
                          self.lr, self.step, loss_sum / win_steps, train_acc, self.windows[-1])
                if options.early_stop_acc is not None and train_acc >= options.early_stop_acc:
                    self.stopped = True
                    break
                # outside the timed windows
                self.setup_s += self.switch.boundary(self.step < options.steps)
                win_t, win_steps = time.perf_counter(), 0
        self.wall_s += time.perf_counter() - t0

    def score(self) -> tuple[float, float]:
        """(accuracy, loss) on the held-out set at the current step (nan when non-finite)."""
        if not self.finite:
            return math.nan, math.nan
        if self._scored is None or self._scored[0] != self.step:
            t0 = time.perf_counter()
            acc, loss = evaluate(self.model, self.test, max(self.options.batch_size, EVAL_BATCH),
                                 self.device, self.dtype)
            if not math.isfinite(loss):
                acc, loss = math.nan, math.nan
            self._scored = (self.step, acc, loss)
            spent = time.perf_counter() - t0
            self.eval_s += spent
            self.wall_s += spent
        return self._scored[1], self._scored[2]

    def result(self) -> RunResult:
        """The run as it stands: its held-out score at the current step."""
        acc, loss = self.score()
        finite = self.finite and math.isfinite(loss)
        return RunResult(self.lr, acc, finite, self.step, self.wall_s, tuple(self.windows),
                         self.trainer.graphed, loss, self.setup_s, self.eval_s,
                         self.switch.eager_steps, self.wait_s, self.capture_s)


def _sizes(options: MQAROptions) -> tuple[int, int]:
    """(training examples, held-out examples) of every setting."""
    return (options.train_examples or options.steps * options.batch_size,
            options.eval_batches * options.batch_size)


def _data_key(options: MQAROptions, setting: MQARSetting, seed: int) -> tuple[Any, ...]:
    """Everything the data of a setting depend on."""
    return (*_sizes(options), setting.seq_len, setting.num_kv_pairs, options.vocab_size,
            options.power_a, options.random_non_queries, seed)


# data drawn ahead of a request by ``predraw`` (a warm child), taken once by ``generate_data``
_PREDRAWN: dict[tuple[Any, ...], tuple[MQARData, MQARData]] = {}


def predraw(options: MQAROptions, seed: int) -> None:
    """Draw the first setting's data now, for a later ``generate_data`` with the same
    arguments (which takes them, once). The data depend on the options and the seed, not on
    the candidate, so a warm child draws the default rung's ahead of its request
    (``warmup.cuda``): the device would otherwise idle through the draw (``mqar_data_s``)."""
    setting = options.settings[0]
    with _host_threads(DATA_THREADS):
        _PREDRAWN[_data_key(options, setting, seed)] = generate_data(options, setting, seed)


def generate_data(options: MQAROptions, setting: MQARSetting, seed: int) -> tuple[MQARData, MQARData]:
    """Train and test sets of one setting, on the CPU; the test set has its own seed."""
    ahead = _PREDRAWN.pop(_data_key(options, setting, seed), None)
    if ahead is not None:
        return ahead
    n_train, n_test = _sizes(options)
    common = dict(
        seq_len=setting.seq_len, num_kv_pairs=setting.num_kv_pairs, vocab_size=options.vocab_size,
        power_a=options.power_a, random_non_queries=options.random_non_queries,
    )
    train = generate_mqar(n_train, seed=_data_seed(seed, setting, "train"), **common)
    test = generate_mqar(n_test, seed=_data_seed(seed, setting, "test"), **common)
    return train, test


def build_data(
    options: MQAROptions, setting: MQARSetting, seed: int, device: torch.device,
) -> tuple[MQARData, MQARData]:
    """``generate_data`` moved to ``device``."""
    train, test = generate_data(options, setting, seed)
    return train.to(device), test.to(device)


@contextlib.contextmanager
def _host_threads(n: int | None) -> Iterator[None]:
    """Run the block with up to ``n`` intra-op threads (as many as this process may run on);
    None leaves the count alone. The draws are the same for any thread count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(before, min(n, len(os.sched_getaffinity(0)))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_mqar(
    make_mixer: MixerFactory, options: MQAROptions, device: torch.device, dtype: torch.dtype,
    seed: int, prewarm: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Train on every setting with every learning rate (stopping a sweep early once one run
    reaches ``stop_sweep_at``) and report the best accuracy per setting and their mean.

    On CUDA the host work is kept off the device's critical path: the next setting's data are
    generated on a worker thread while the current one trains (CPU tensors only, so nothing
    touches the device during a graph capture), and the mixers compile on another worker while
    the first run trains eagerly (``MixerCompiler``).

    ``prewarm`` starts compiling the shapes of a later stage (``model.prewarm``; the task passes
    one that compiles the LM stage's). It is called once, after the capture of the last
    setting's last run, and only when this stage's own compile succeeded: no capture follows
    in this stage, so the compile runs beside the rest of its training, and the LM stage
    starts compiled instead of training eagerly (on the H100, Gated DeltaNet's LM stage took
    14.7 s instead of 31.7 s). A sweep that ends early (``stop_sweep_at``) never calls it,
    and the LM stage compiles for itself.

    Raises ``StageFailure(NAN)`` when every learning rate of a setting went non-finite.
    """
    use_sdpa_order(True, device)  # flash attention first (model.TRAINING_SDPA_ORDER)
    compiler = MixerCompiler() if options.compile and device.type == "cuda" else None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="archdisco-mqar-data") as pool:
        try:
            return _run_settings(make_mixer, options, device, dtype, seed, compiler, pool, prewarm)
        finally:
            if compiler is not None:
                compiler.wait()


def _if_compiled(compiler: MixerCompiler, then: Callable[[], object]) -> Callable[[], None]:
    """``then()`` if ``compiler`` finished without error by the time the hook runs."""
    def hook() -> None:
        if compiler.ok:
            then()
    return hook


def _sweep(
    make_mixer: MixerFactory, options: MQAROptions, train: MQARData, test: MQARData,
    device: torch.device, dtype: torch.dtype, seed: int, compiler: MixerCompiler | None,
    last_hook: Callable[[], None] | None,
) -> list[RunResult]:
    """The learning-rate sweep of one setting: its runs, in the order of ``options.lrs``.

    The sweep stops once a run scores ``stop_sweep_at`` on held-out data. With ``sweep_cut``,
    every run trains only to that fraction of the budget; the runs are scored there, and
    only the best (held-out accuracy, then loss) trains on to the end; once a run scores
    ``stop_sweep_at`` only that run trains on (if it was cut). The others are reported as
    they stood at the cut. A run that started a compile trains past the cut
    until the compile is done, since the next run could not be captured before (the others
    are then cut at the same step). ``last_hook`` is the ``after_setup`` of the last run of
    the sweep: no capture follows it in this sweep.
    """
    lrs = list(options.lrs)
    if options.sweep_cut is None or len(lrs) == 1:  # every run trains its whole budget
        cut = options.steps
    else:
        cut = max(1, round(options.sweep_cut * options.steps))
    started: list[Run] = []
    reached = False  # a run scored stop_sweep_at: the sweep ends, only that run trains on
    for j, lr in enumerate(lrs):
        more = j < len(lrs) - 1
        run = Run(make_mixer, options, train, test, lr, device, dtype, seed, compiler,
                  None if more else last_hook)
        started.append(run)
        run.advance(cut)
        while more and not run.over and compiling():
            run.advance(run.step + options.check_every)
        if not run.over:
            cut = max(cut, run.step)
        acc, _ = run.score()
        if options.stop_sweep_at is not None and acc >= options.stop_sweep_at:  # (nan: False)
            reached = True
            break
    paused = [r for r in started if not r.over]
    if reached:
        paused = paused[-1:] if started[-1] in paused else []  # the run that scored it
    if paused:
        max(paused, key=lambda r: _score_key(r.score())).advance(options.steps)
    return [r.result() for r in started]


def _score_key(score: tuple[float, float]) -> tuple[float, float]:
    acc, loss = score
    if not (math.isfinite(acc) and math.isfinite(loss)):
        return (-math.inf, -math.inf)
    return (acc, -loss)


def _declared_state(make_mixer: MixerFactory, options: MQAROptions) -> dict[str, float]:
    """``mqar_state_<tag>`` of every setting: the declared ``state_size(seq_len)`` of a mixer
    of the frame's width (built on the meta device: no memory, no time) times the layers.
    Empty when the mixer declares none or its code fails here (the stage's training reports a
    broken mixer; the recurrent stage checks the declaration against the state ``step``
    really carries)."""
    try:
        with torch.device("meta"):
            mixer = make_mixer(options.d_model, options.num_heads)
        state_size = getattr(mixer, "state_size", None)
        if not callable(state_size):
            return {}
        return {f"mqar_state_{s.tag}": float(options.n_layers * int(state_size(s.seq_len)))
                for s in options.settings}
    except Exception:  # noqa: BLE001 - candidate code
        return {}


def _run_settings(
    make_mixer: MixerFactory, options: MQAROptions, device: torch.device, dtype: torch.dtype,
    seed: int, compiler: MixerCompiler | None, pool: ThreadPoolExecutor,
    prewarm: Callable[[], object] | None,
) -> dict[str, float]:
    t0 = time.perf_counter()
    metrics: dict[str, float] = {"mqar_reduced": float(options.reduced)}
    best_accs: list[float] = []
    best_losses: list[float] = []
    windows: list[float] = []
    total_steps = nonfinite = graphed = runs = eager_steps = 0
    data_s = setup_s = eval_s = wait_s = capture_s = 0.0
    graphs_before = compiled_graphs()
    settings = list(options.settings)
    prefetch = device.type == "cuda"  # a CPU device needs its cores for the steps
    pending: Future | None = None
    for i, setting in enumerate(settings):
        t_data = time.perf_counter()
        if pending is not None:
            cpu_data = pending.result()
        else:  # the device waits for these: on CUDA, lend the draw a few more host threads
            with _host_threads(DATA_THREADS if prefetch else None):
                cpu_data = generate_data(options, setting, seed)
        train, test = (d.to(device) for d in cpu_data)
        data_s += time.perf_counter() - t_data
        if prefetch and i + 1 < len(settings):
            pending = pool.submit(generate_data, options, settings[i + 1], seed)
        hook = None
        if prewarm is not None and compiler is not None and i == len(settings) - 1:
            hook = _if_compiled(compiler, prewarm)
        best: RunResult | None = None
        for run in _sweep(make_mixer, options, train, test, device, dtype, seed, compiler, hook):
            total_steps += run.steps
            eager_steps += run.eager_steps
            runs += 1
            graphed += run.graphed
            windows.extend(run.window_step_ms)
            setup_s += run.setup_s
            wait_s += run.wait_s
            capture_s += run.capture_s
            eval_s += run.eval_s
            if not run.finite:
                nonfinite += 1
                continue
            if best is None or run.rank_key() > best.rank_key():
                best = run
        if best is None:
            raise StageFailure(
                FailureKind.NAN,
                f"MQAR {setting.tag}: loss went non-finite at every learning rate {list(options.lrs)}",
                metrics={**metrics, "mqar_steps": float(total_steps)},
            )
        metrics[f"mqar_acc_{setting.tag}"] = best.accuracy
        metrics[f"mqar_best_lr_{setting.tag}"] = best.lr
        metrics[f"mqar_loss_{setting.tag}"] = best.loss
        best_accs.append(best.accuracy)
        best_losses.append(best.loss)
    metrics.update(_declared_state(make_mixer, options))
    metrics["mqar_acc"] = sum(best_accs) / len(best_accs)
    metrics["mqar_loss"] = sum(best_losses) / len(best_losses)
    metrics["mqar_steps"] = float(total_steps)
    metrics["mqar_nonfinite_runs"] = float(nonfinite)
    metrics["mqar_cuda_graph"] = graphed / runs  # fraction of runs trained from a CUDA graph
    metrics["mqar_compiled_graphs"] = float(compiled_graphs() - graphs_before)
    metrics["mqar_step_ms"] = statistics.median(windows)
    metrics["mqar_train_s"] = time.perf_counter() - t0
    # where the stage's wall time went besides the steps (host work: the device idles there)
    metrics["mqar_data_s"] = data_s
    metrics["mqar_setup_s"] = setup_s
    metrics["mqar_eval_s"] = eval_s
    metrics["mqar_capture_s"] = capture_s  # of setup: building trainers (warm-up and capture)
    metrics["mqar_compile_wait_s"] = wait_s  # of setup: a compile still at work before a capture
    if compiler is not None:
        compiler.wait()
        metrics["mqar_eager_steps"] = float(eager_steps)  # trained before compiled mixers took over
        metrics["mqar_compile_s"] = compiler.wall_s  # on the worker thread, overlapping the steps
    return metrics
