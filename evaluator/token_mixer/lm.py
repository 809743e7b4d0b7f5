"""Byte-level language-modelling proxy of the token-mixer task, on a corpus that exists offline.

The default corpus is the source of the installed Python standard library (``*.py`` files
under ``sysconfig.get_paths()["stdlib"]``, ``site-packages`` excluded); ``corpus_dir`` points
at any other directory of text files (``corpus_glob`` selects them). Files are split into
train and validation by a hash of their path relative to the corpus root, so the split never
depends on the file system's listing order, and read in hash order until
``max_corpus_bytes`` are loaded (bounded and fast; the byte arrays are cached in-process).
Different Python versions ship different standard libraries: compare ``lm_*`` numbers only
between runs with the same ``lm_corpus_crc``.

Training: the :class:`~evaluator.token_mixer.model.MixerLM` frame (vocabulary = 256 bytes),
AdamW with warm-up and cosine decay on random windows drawn deterministically from the seed;
validation on fixed, evenly spaced windows of the validation split (the same for every
candidate). Reported: ``lm_val_loss`` (nats per byte), ``lm_bpb`` (bits per byte),
``lm_tokens`` (training tokens seen), ``lm_train_s``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import os
import sysconfig
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from evaluator.token_mixer.model import (
    MixerCompiler, MixerFactory, MixerLM, ModelConfig, autocast_context, prewarm, seeded,
    synchronize, take_prewarmed, use_sdpa_order, wait_for_compilers,
)
from evaluator.token_mixer.training import CompileSwitch, OptimConfig, Trainer
from evaluator.types import FailureKind, StageFailure

log = logging.getLogger(__name__)
_SEPARATOR = b"\x00"  # between files: never occurs in source text
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class LMOptions(BaseModel):
    """Options of the LM stage. The defaults are a CPU-sized run of a few seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = Field(default=64, gt=0)
    n_layers: int = Field(default=2, gt=0)
    num_heads: int = Field(default=2, gt=0)
    mlp: str = Field(default="swiglu", pattern="^(swiglu|gelu)$")
    mlp_ratio: float = Field(default=2.0, gt=0.0)
    pos_emb: str = Field(default="learned", pattern="^(none|learned)$")
    token_shift: bool = True
    seq_len: int = Field(default=128, gt=1)
    batch_size: int = Field(default=16, gt=0)
    steps: int = Field(default=200, gt=0)
    tokens: int | None = Field(default=None, gt=0)  # when set, steps = ceil(tokens / (B * T))
    lr: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_frac: float = Field(default=0.1, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    grad_clip: float | None = 1.0
    val_batches: int = Field(default=8, gt=0)
    check_every: int = Field(default=50, gt=0)
    corpus_dir: str | None = None  # None = the installed Python standard library
    corpus_glob: str = "*.py"
    max_corpus_bytes: int = Field(default=4_000_000, gt=0)
    max_file_bytes: int = Field(default=65_536, gt=0)  # caps a file's share: more diverse text
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    cuda_graph: bool = True  # on CUDA, replay a captured graph of the step (training.py)
    compile: bool = True  # on CUDA, train the mixers through torch.compile (see run_lm)
    reduced: bool = False

    @model_validator(mode="after")
    def _check(self) -> LMOptions:
        if self.corpus_dir is not None and not Path(self.corpus_dir).is_dir():
            raise ValueError(f"corpus_dir {self.corpus_dir!r} is not a directory")
        return self

    @property
    def total_steps(self) -> int:
        if self.tokens is None:
            return self.steps
        return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))

    @classmethod
    def rung1(cls, **overrides: Any) -> LMOptions:
        """GPU setting: 4 layers of d_model 128, 512-byte context, ~33M training tokens."""
        base: dict[str, Any] = dict(
            d_model=128, n_layers=4, num_heads=2, mlp_ratio=4.0, seq_len=512, batch_size=64,
            steps=1000, lr=2e-3, val_batches=16, check_every=100, max_corpus_bytes=16_000_000,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def cpu_fallback(cls, **overrides: Any) -> LMOptions:
        """Rung 1 reduced for a CPU (reported as ``lm_reduced=1``)."""
        base: dict[str, Any] = dict(
            d_model=64, n_layers=2, seq_len=256, batch_size=16, steps=600, val_batches=8,
            reduced=True,
        )
        return cls(**{**base, **overrides})


# ----------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # uint8, files joined by a 0 byte
    val: torch.Tensor
    n_train_files: int
    n_val_files: int
    crc: int  # of both splits: identifies the corpus across runs


_CORPUS_CACHE: dict[tuple[str, str, int, float, int], Corpus] = {}


def _path_hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big")


def _list_files(root: Path, pattern: str) -> list[tuple[int, str]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            if fnmatch.fnmatch(name, pattern):
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                found.append((_path_hash(rel), rel))
    found.sort()
    return found


def load_corpus(
    corpus_dir: str | None = None, pattern: str = "*.py", max_bytes: int = 4_000_000,
    val_fraction: float = 0.1, max_file_bytes: int = 65_536,
) -> Corpus:
    """Bytes of the corpus, split by path hash, bounded by ``max_bytes`` (each file by
    ``max_file_bytes``); cached per process."""
    root = Path(corpus_dir) if corpus_dir is not None else Path(sysconfig.get_paths()["stdlib"])
    key = (str(root.resolve()), pattern, max_bytes, val_fraction, max_file_bytes)
    if key in _CORPUS_CACHE:
        return _CORPUS_CACHE[key]
    budget = {"val": int(max_bytes * val_fraction)}
    budget["train"] = max_bytes - budget["val"]
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    used = {"train": 0, "val": 0}
    for h, rel in _list_files(root, pattern):  # hash order: a deterministic shuffle
        split = "val" if h % 10_000 < val_fraction * 10_000 else "train"
        if used[split] >= budget[split]:
            if all(used[s] >= budget[s] for s in used):
                break
            continue
        try:
            data = (root / rel).read_bytes()
        except OSError:
            continue
        if not data:
            continue
        data = data[: min(max_file_bytes, budget[split] - used[split])] + _SEPARATOR
        parts[split].append(data)
        used[split] += len(data)
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"corpus {root} ({pattern}) has too few files for a train/val split")
    train, val = b"".join(parts["train"]), b"".join(parts["val"])
    corpus = Corpus(
        train=torch.frombuffer(bytearray(train), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val), dtype=torch.uint8),
        n_train_files=len(parts["train"]), n_val_files=len(parts["val"]),
        crc=zlib.crc32(val, zlib.crc32(train)),
    )
    _CORPUS_CACHE[key] = corpus
    return corpus


def _windows(data: torch.Tensor, offsets: torch.Tensor, seq_len: int) -> torch.Tensor:
    idx = offsets.unsqueeze(-1) + torch.arange(seq_len + 1, device=offsets.device)
    return data[idx].long()


# ----------------------------------------------------------------------------------- training


def evaluate_lm(
    model: MixerLM, val: torch.Tensor, options: LMOptions, device: torch.device, dtype: torch.dtype,
) -> float:
    """Mean next-byte loss (nats) over fixed, evenly spaced validation windows."""
    n = options.val_batches * options.batch_size
    span = val.numel() - options.seq_len - 1
    if span <= 0:
        raise ValueError(f"validation split ({val.numel()} bytes) shorter than seq_len {options.seq_len}")
    offsets = torch.linspace(0, span, n, dtype=torch.float64).long().to(device)
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    with torch.no_grad(), autocast_context(device, dtype):
        for i in range(0, n, options.batch_size):
            w = _windows(val, offsets[i:i + options.batch_size], options.seq_len)
            logits = model(w[:, :-1]).float()
            total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
    model.train()
    return total.item() / (n * options.seq_len)


def model_config(options: LMOptions) -> ModelConfig:
    """The byte-level LM frame of ``options``."""
    return ModelConfig(
        vocab_size=256, d_model=options.d_model, n_layers=options.n_layers,
        num_heads=options.num_heads, max_seq_len=options.seq_len,
        mlp=options.mlp, mlp_ratio=options.mlp_ratio,  # type: ignore[arg-type]
        pos_emb=options.pos_emb, token_shift=options.token_shift,  # type: ignore[arg-type]
    )


def _compile_key(make_mixer: MixerFactory, options: LMOptions, device: torch.device,
                 dtype: torch.dtype) -> tuple[Any, ...]:
    return ("lm", make_mixer, options.batch_size, options.seq_len, model_config(options),
            str(device), dtype)


def _compiles(options: LMOptions, device: torch.device) -> bool:
    return options.compile and device.type == "cuda"


def _start_compile(make_mixer: MixerFactory, options: LMOptions, device: torch.device,
                   dtype: torch.dtype, seed: int, register: bool) -> MixerCompiler:
    """Compile the mixers at the LM's training shapes on a worker thread (``MixerCompiler``);
    ``register`` leaves it for a later ``run_lm`` to collect (``model.prewarm``)."""
    with seeded(seed, device):
        scratch = MixerLM(model_config(options), make_mixer).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, 256, (options.batch_size, options.seq_len), generator=gen).to(device)
    compiler = MixerCompiler()
    if register:
        return prewarm(_compile_key(make_mixer, options, device, dtype), compiler, scratch, ids, dtype)
    compiler.start(scratch, ids, dtype)
    return compiler


def prewarm_lm(make_mixer: MixerFactory, options: LMOptions, device: torch.device,
               dtype: torch.dtype, seed: int) -> MixerCompiler | None:
    """Start compiling the mixers for a later ``run_lm`` with the same arguments (on CUDA with
    ``compile`` on; else None). An earlier stage calls this while it trains (``run_mqar``'s
    ``prewarm``), so the LM stage can start compiled. The corpus is loaded on another worker
    thread meanwhile (``load_corpus`` caches it in-process)."""
    if not _compiles(options, device):
        return None
    # the corpus too: reading it is seconds of host work, slower still beside a compile
    threading.Thread(target=load_corpus, name="archdisco-corpus", daemon=True, args=(
        options.corpus_dir, options.corpus_glob, options.max_corpus_bytes, options.val_fraction,
        options.max_file_bytes)).start()
    return _start_compile(make_mixer, options, device, dtype, seed, register=True)


def run_lm(
    make_mixer: MixerFactory, options: LMOptions, device: torch.device, dtype: torch.dtype,
    seed: int,
) -> dict[str, float]:
    """Train the byte-level LM around the mixer and report validation loss / bits per byte.

    On CUDA with ``compile`` (the default) the mixers train through ``torch.compile``: from
    the first step when an earlier stage compiled them already (``prewarm_lm``; the stage
    waits for that compile to finish, ``lm_compile_wait_s``), otherwise by compiling on a
    worker thread while the first steps train eagerly and switching once it is done
    (``CompileSwitch``, as the MQAR stage does; ``lm_eager_steps``). Gated DeltaNet at the
    rung-1 shapes on an H100: 13.9 s of compiled training against 30.3 s eager
    (docs/PERFORMANCE.md).

    Raises ``StageFailure(NAN)`` when the training or validation loss is not finite.
    """
    t0 = time.perf_counter()
    use_sdpa_order(True, device)  # flash attention first (model.TRAINING_SDPA_ORDER)
    corpus = load_corpus(options.corpus_dir, options.corpus_glob, options.max_corpus_bytes,
                         options.val_fraction, options.max_file_bytes)
    train, val = corpus.train.to(device), corpus.val.to(device)
    if train.numel() <= options.seq_len + 1:
        raise ValueError(f"training split ({train.numel()} bytes) shorter than seq_len {options.seq_len}")
    use_compile = _compiles(options, device)
    compiler = take_prewarmed(_compile_key(make_mixer, options, device, dtype)) if use_compile else None
    prewarmed = compiler is not None
    wait_s = wait_for_compilers()  # no capture (or timing) while a compiler launches kernels
    with seeded(seed, device):
        model = MixerLM(model_config(options), make_mixer).to(device)
    compiled = compiler is not None and compiler.ok
    if compiled:
        assert compiler is not None
        model.compile_mixers(compiler.backend)
    steps, b, t = options.total_steps, options.batch_size, options.seq_len
    gen = torch.Generator(device="cpu").manual_seed(seed)
    offsets = torch.randint(0, train.numel() - t - 1, (steps, b), generator=gen).to(device)
    metrics: dict[str, float] = {
        "lm_reduced": float(options.reduced), "lm_corpus_bytes": float(train.numel() + val.numel()),
        "lm_corpus_crc": float(corpus.crc),
    }

    def loss_fn(batch_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = _windows(train, batch_offsets, t)
        logits = model(w[:, :-1]).float()
        loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
        return loss, loss.new_zeros(())

    optim = OptimConfig(
        lr=options.lr, steps=steps, weight_decay=options.weight_decay, betas=options.betas,
        warmup_frac=options.warmup_frac, min_lr_ratio=options.min_lr_ratio,
        grad_clip=options.grad_clip,
    )
    trainer = Trainer(model, loss_fn, optim, device, dtype, offsets, options.cuda_graph)
    if use_compile and compiler is None:
        compiler = _start_compile(make_mixer, options, device, dtype, seed, register=False)
    switch = CompileSwitch(model, trainer, compiler, device, compiled)
    train_loss = math.nan
    switch_s = 0.0
    synchronize(device)
    t_train = time.perf_counter()
    for step in range(steps):
        trainer.step(step)
        switch.after_step()
        if (step + 1) % options.check_every == 0 or step + 1 == steps:
            train_loss = trainer.take_sums()[0] / ((step % options.check_every) + 1)
            log.debug("lm step=%d train_loss=%.4f", step + 1, train_loss)
            if not math.isfinite(train_loss):
                raise StageFailure(
                    FailureKind.NAN, f"LM training loss became non-finite by step {step + 1}",
                    metrics={**metrics, "lm_tokens": float((step + 1) * b * t)},
                )
            switch_s += switch.boundary(step + 1 < steps)
    synchronize(device)
    train_s = time.perf_counter() - t_train
    if compiler is not None:
        compiler.wait()  # (a compile that outlasted training: nothing may time beside it)
    val_loss = evaluate_lm(model, val, options, device, dtype)
    if not math.isfinite(val_loss):
        raise StageFailure(FailureKind.NAN, "LM validation loss is non-finite", metrics=metrics)
    metrics.update({
        "lm_val_loss": val_loss,
        "lm_bpb": val_loss / math.log(2),
        "lm_train_loss": train_loss,
        "lm_tokens": float(steps * b * t),
        "lm_train_s": train_s,
        "lm_tokens_per_s": steps * b * t / train_s,
        "lm_stage_s": time.perf_counter() - t0,
        "lm_cuda_graph": float(trainer.graphed),
    })
    if use_compile:
        metrics.update({
            "lm_compiled": float(switch.compiled),  # the mixers ended up training compiled
            "lm_prewarmed": float(prewarmed),  # compiled by an earlier stage
            "lm_compile_wait_s": wait_s,
            "lm_eager_steps": float(switch.eager_steps),
            "lm_switch_s": switch_s,
        })
    return metrics
