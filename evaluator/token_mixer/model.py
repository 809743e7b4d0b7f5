"""A small language model around a candidate token mixer, plus the precision / seeding helpers
shared by the MQAR, LM and profile stages (the optimisation step lives in ``training.py``).

The model is the fixed frame every candidate is judged in, so differences in the proxies come
from the mixer alone:

    embedding (+ optional learned absolute positions, + optional token shift W x_{t-1})
    -> n_layers x [RMSNorm -> mixer -> residual, RMSNorm -> MLP (SwiGLU or GELU) -> residual]
    -> RMSNorm -> head (tied to the embedding by default)

The mixer is built by ``make_mixer(hidden_size, num_heads)`` (a candidate's ``Mixer`` class is
passed as ``make_mixer``). Its own initialisation is left untouched. The token embedding is
initialised with std d^-1/2 (tied head: unit-scale initial logits); measured on the MQAR rung-0
setting, this moved DeltaNet's recall phase transition from ~600 to ~400 steps compared with
std 0.02. The optional token shift gives every mixer the previous token for free, so a short
MQAR run measures recall (binding a key to the value after it) rather than the time a mixer
needs to discover a previous-token circuit.

Precision rule (used by every stage in this package): parameters and optimizer state stay in
float32 and a reduced precision is applied with ``torch.autocast`` (mixed precision). A
candidate therefore sees bf16 / fp16 activations from autocast-eligible ops (linear, matmul,
SDPA) but its parameters remain fp32; this is how such models are trained in practice, and it
keeps AdamW stable at the tiny sizes of the proxies.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

MixerFactory = Callable[[int, int], nn.Module]
# inductor options of MixerLM.compile_mixers (see there)
COMPILE_OPTIONS: dict[str, object] = {"triton.autotune_pointwise": False}

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a ``torch.dtype`` or a Precision name ("float32", "bfloat16", "float16")."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` on ``device``; a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# SDPA backends in the order the training stages (MQAR, LM) try them: flash attention first.
# torch's default on Hopper puts cuDNN attention first, which builds an execution plan on the
# host at every new shape: 60 ms for a forward and 70 ms for its backward on an H200, while
# the GPU idles; flash attention's first call at a new (small) shape took 0.9 ms, once its
# first call of the process was made (docs/PERFORMANCE.md, stop 12). The training stages
# report accuracy and loss, which both kernels compute exactly; the profile stage, which
# times the mixer, keeps torch's order.
TRAINING_SDPA_ORDER = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
_default_sdpa_order: list[int] | None = None


def use_sdpa_order(training: bool, device: torch.device) -> None:
    """Set SDPA's backend priority for the whole process before a stage on a CUDA ``device``:
    ``TRAINING_SDPA_ORDER`` for a training stage, torch's own order for any other. Stages call
    it at their start, when no ``MixerCompiler`` of an earlier stage is at work with another
    order (inductor picks the attention kernel when it traces). A CPU device, or a torch
    without the priority API, leaves everything as it is.

    torch settles its own order at the first SDPA call on the GPU (cuDNN first on Hopper, where
    the initial order says flash first), and an order set before that call stays as set. So
    the first call here runs one tiny SDPA with torch's order before reading it."""
    global _default_sdpa_order
    get = getattr(torch._C, "_get_sdp_priority_order", None)
    put = getattr(torch._C, "_set_sdp_priority_order", None)
    if device.type != "cuda" or get is None or put is None:
        return
    if _default_sdpa_order is None:
        try:
            q = torch.zeros(1, 1, 16, 64, device=device, dtype=torch.bfloat16)
            with torch.no_grad():
                F.scaled_dot_product_attention(q, q, q, is_causal=True)
        except RuntimeError:  # a GPU without bf16 attention kernels: take the order as it reads
            pass
        _default_sdpa_order = [int(b) for b in get()]
    order = list(_default_sdpa_order)
    if training:
        from torch.nn.attention import SDPBackend
        first = [int(getattr(SDPBackend, name)) for name in TRAINING_SDPA_ORDER]
        order = first + [b for b in order if b not in first]
    put(order)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNGs for the block (mixer init uses them) without leaking the change
    to the caller."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    num_heads: int
    max_seq_len: int
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    mlp_ratio: float = 4.0  # GELU hidden = ratio * d; SwiGLU hidden = 2/3 of that (same params)
    pos_emb: Literal["none", "learned"] = "learned"
    # x_t += W x_{t-1} after the embedding: a fixed, causal local mix in the frame (see MixerLM)
    token_shift: bool = False
    tie_embeddings: bool = True


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class GELUMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


def _mlp(config: ModelConfig) -> nn.Module:
    hidden = int(config.mlp_ratio * config.d_model)
    if config.mlp == "swiglu":
        return SwiGLU(config.d_model, max(8, 8 * round(2 * hidden / 3 / 8)))
    return GELUMLP(config.d_model, hidden)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, make_mixer: MixerFactory):
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model)
        self.mixer = make_mixer(config.d_model, config.num_heads)
        self.norm2 = nn.RMSNorm(config.d_model)
        self.mlp = _mlp(config)
        # torch.compile'd view of self.mixer for training steps (MixerLM.compile_mixers); kept
        # out of the module tree so parameters and state_dict are unchanged
        object.__setattr__(self, "compiled_mixer", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixer = self.mixer
        if self.compiled_mixer is not None and self.training and torch.is_grad_enabled():
            mixer = self.compiled_mixer
        y = mixer(self.norm1(x))
        if y.shape != x.shape:
            raise RuntimeError(f"mixer returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
        x = x + y
        return x + self.mlp(self.norm2(x))


class MixerLM(nn.Module):
    """Decoder-only LM whose token mixer is the candidate.

    ``hidden(ids)`` returns the final-normed states (B, T, D); ``logits(h)`` applies the head to
    any (..., D) tensor, so stages that score a few positions (MQAR) project only those.
    """

    def __init__(self, config: ModelConfig, make_mixer: MixerFactory):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = (
            nn.Embedding(config.max_seq_len, config.d_model) if config.pos_emb == "learned" else None
        )
        self.shift = (
            nn.Linear(config.d_model, config.d_model, bias=False) if config.token_shift else None
        )
        self.blocks = nn.ModuleList(Block(config, make_mixer) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model)
        self.head = (
            None if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        nn.init.normal_(self.embed.weight, std=config.d_model ** -0.5)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
        if self.shift is not None:
            nn.init.normal_(self.shift.weight, std=config.d_model ** -0.5)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.pos is not None:
            seq_len = ids.shape[1]
            if seq_len > self.config.max_seq_len:
                raise ValueError(f"sequence length {seq_len} > max_seq_len {self.config.max_seq_len}")
            x = x + self.pos.weight[:seq_len]
        if self.shift is not None:
            x = x + self.shift(F.pad(x[:, :-1], (0, 0, 1, 0)))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.embed.weight if self.head is None else self.head.weight
        return F.linear(h, weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(ids))

    def compile_mixers(self, backend: str = "inductor") -> None:
        """Run the mixers of training steps through ``torch.compile`` (inductor; meant for CUDA).

        Candidate mixers are written in plain PyTorch, so a chunked mixer is a long chain of
        small elementwise kernels over (B, H, chunks, C, C) tensors, bound by memory traffic;
        fusing them is the largest speed-up left once the step replays as a CUDA graph (on an
        H100 at the rung-1 MQAR shapes, Gated DeltaNet 25.9 -> 10.7 ms a step,
        docs/PERFORMANCE.md). Evaluation (``eval()`` or no grad) keeps the eager mixer, so only
        one graph per training shape is compiled. Shapes are static (``dynamic=False``). A
        mixer that dynamo or inductor cannot compile runs eagerly (``suppress_errors``), and
        errors raised by the candidate's own code still surface as they would eagerly.
        Compiled code is cached per process and reused across models of the same class.
        """
        compile_environment()
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True
        # Pointwise kernels take inductor's heuristic launch config instead of benchmarking
        # several: compiling Gated DeltaNet's mixer on an H100 host took 22.6 s instead of
        # 31.4 s (on the MixerCompiler thread beside training, 30.9 s instead of 55 s), for a
        # slower step: 14.4 ms against 12.5 ms in the rung-1 MQAR run (docs/PERFORMANCE.md).
        options = dict(COMPILE_OPTIONS) if backend == "inductor" else None
        for block in self.blocks:
            object.__setattr__(block, "compiled_mixer", torch.compile(
                block.mixer, dynamic=False, backend=backend, options=options))

    def eager_mixers(self) -> None:
        """Undo ``compile_mixers``: training steps run the eager mixers again."""
        for block in self.blocks:
            object.__setattr__(block, "compiled_mixer", None)

    def mixer_parameters(self) -> int:
        return sum(p.numel() for b in self.blocks for p in b.mixer.parameters())


def compile_environment() -> None:
    """Cache directories for inductor and triton, set before torch._dynamo is first imported
    (it resolves its cache directory on import): the sandbox child has a scrubbed environment
    and an unnamed uid, so the defaults derived from the user name would not do."""
    import os
    import tempfile

    scratch = os.path.join(tempfile.gettempdir(), "archdisco-compile")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(scratch, "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(scratch, "triton"))


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far (0 when nothing compiled)."""
    dynamo = sys.modules.get("torch._dynamo.utils")
    return int(dynamo.counters["stats"]["unique_graphs"]) if dynamo is not None else 0


class MixerCompiler:
    """Compiles a candidate's mixers on a worker thread while the caller keeps training eagerly.

    ``torch.compile`` is host work: 32 s for the Gated DeltaNet seed's mixer on the H100 host,
    during which the device would idle (a third of the rung-1 MQAR stage's idle time,
    docs/PERFORMANCE.md). Instead, ``start`` compiles a throwaway copy of the model (same
    class, same training shapes, autocast and grad mode, so dynamo's guards match) by running
    one forward and backward on a worker thread; meanwhile the caller trains its own model
    with eager mixers. Once ``done``, the caller switches with ``MixerLM.compile_mixers``:
    dynamo keeps compiled code per mixer class, so the switch reuses it instead of compiling
    again. The switch step depends on how long compiling took (``mqar_eager_steps`` reports
    it). Mixers that fail to compile leave ``ok`` false and keep training eagerly.

    The worker launches kernels (the copy's forward and backward): nothing may capture a CUDA
    graph while it runs (``wait`` first). Both threads share the GIL; the training thread
    needs it once per step (a graph replay, ``training.Trainer``), so the two barely slow
    each other.
    """

    def __init__(self, backend: str = "inductor"):
        self.backend = backend
        self.error: BaseException | None = None
        self.graphs = 0
        self.wall_s = self.cpu_s = 0.0
        self._thread: threading.Thread | None = None

    def start(self, scratch: MixerLM, ids: torch.Tensor, dtype: torch.dtype) -> None:
        """Compile ``scratch``'s mixers by training it one step on ``ids`` (the training batch
        shape) under ``dtype`` autocast, on a worker thread."""
        if self._thread is not None:
            raise RuntimeError("MixerCompiler.start called twice")
        scratch.train()
        scratch.compile_mixers(self.backend)

        def work() -> None:
            t0, c0, before = time.perf_counter(), time.thread_time(), compiled_graphs()
            try:
                with autocast_context(ids.device, dtype):
                    h = scratch.hidden(ids)
                h.float().square().mean().backward()
                synchronize(ids.device)
            except BaseException as exc:  # noqa: BLE001 - reported through .error / .ok
                self.error = exc
            self.graphs = compiled_graphs() - before
            self.wall_s = time.perf_counter() - t0
            self.cpu_s = time.thread_time() - c0  # this thread's CPU time (GIL held or not)

        self._thread = threading.Thread(target=work, name="archdisco-compile", daemon=True)
        _STARTED.add(self)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        """Started and still at work."""
        return self._thread is not None and self._thread.is_alive()

    def done(self) -> bool:
        """Started and finished."""
        return self._thread is not None and not self._thread.is_alive()

    def wait(self) -> None:
        """Block until the worker has finished (no-op when never started)."""
        if self._thread is not None:
            self._thread.join()

    def reject(self, reason: str) -> None:
        """Mark the compiled code unusable (``ok`` turns false): the caller trains eagerly."""
        self.error = RuntimeError(reason)

    @property
    def ok(self) -> bool:
        """Finished without error. (``graphs`` may be 0: code compiled earlier in this process
        is reused, and a mixer dynamo cannot compile runs eagerly under ``suppress_errors``.)"""
        return self.done() and self.error is None


_STARTED: weakref.WeakSet[MixerCompiler] = weakref.WeakSet()
_PREWARMED: dict[Hashable, MixerCompiler] = {}


def compiling() -> bool:
    """Whether a ``MixerCompiler`` of this process is still at work."""
    return any(c.running for c in list(_STARTED))


def wait_for_compilers() -> float:
    """Block until no ``MixerCompiler`` of this process is at work (a CUDA graph may be
    captured, or kernels timed, only then); the seconds waited."""
    t0 = time.perf_counter()
    for compiler in list(_STARTED):
        compiler.wait()
    return time.perf_counter() - t0


def prewarm(key: Hashable, compiler: MixerCompiler, scratch: MixerLM, ids: torch.Tensor,
            dtype: torch.dtype) -> MixerCompiler:
    """Start ``compiler`` on ``scratch`` for a later stage, which collects it with
    ``take_prewarmed(key)``: a stage can compile the next stage's shapes while it trains."""
    compiler.start(scratch, ids, dtype)
    _PREWARMED[key] = compiler
    return compiler


def take_prewarmed(key: Hashable) -> MixerCompiler | None:
    """The compiler ``prewarm`` started under ``key`` (once), or None."""
    return _PREWARMED.pop(key, None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
