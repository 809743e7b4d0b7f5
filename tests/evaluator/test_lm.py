"""Byte-level LM proxy: the offline corpus is split by path hash and bounded, training lowers
the validation loss, and a non-finite loss is a NAN failure."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from evaluator.token_mixer.lm import LMOptions, load_corpus, prewarm_lm, run_lm
from evaluator.token_mixer.model import MixerCompiler
from evaluator.types import FailureKind, StageFailure

CPU = torch.device("cpu")
TINY = dict(d_model=32, n_layers=1, seq_len=64, batch_size=8, val_batches=2, check_every=20)


class CausalMean(nn.Module):
    """Running mean over the past (a minimal causal mixer)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[:, None]
        return self.proj(x.cumsum(dim=1) / counts)


class Exploding(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x * self.w) * float("inf")


def test_stdlib_corpus_is_bounded_split_and_cached() -> None:
    corpus = load_corpus(max_bytes=300_000)
    assert corpus.train.dtype == torch.uint8
    assert 0 < corpus.val.numel() <= 31_000 and 0 < corpus.train.numel() <= 271_000
    assert corpus.n_train_files > corpus.n_val_files > 0
    assert load_corpus(max_bytes=300_000) is corpus  # cached in-process
    text = bytes(corpus.train[:2000].tolist())
    assert b"def " in text or b"import " in text  # it is Python source


def test_user_corpus_split_is_by_path_and_deterministic(tmp_path: Path) -> None:
    for i in range(60):
        (tmp_path / f"doc{i:02d}.txt").write_bytes(f"file {i:02d} ".encode() * 20)
    (tmp_path / "skip.bin").write_bytes(b"\xff" * 100)
    a = load_corpus(str(tmp_path), "*.txt", max_bytes=10**6, val_fraction=0.2)
    b = load_corpus(str(tmp_path), "*.txt", max_bytes=10**6, val_fraction=0.21)  # not cached
    assert torch.equal(a.train, b.train) or a.n_val_files != b.n_val_files
    assert a.n_train_files + a.n_val_files == 60 and a.n_val_files > 0
    train, val = bytes(a.train.tolist()), bytes(a.val.tolist())
    assert b"\xff" not in train + val
    for i in range(60):  # every file lands in exactly one split
        tag = f"file {i:02d} ".encode()
        assert (tag in train) != (tag in val)
    with pytest.raises(ValidationError, match="not a directory"):
        LMOptions(corpus_dir=str(tmp_path / "missing"))


def test_training_lowers_validation_loss_and_reports_bpb() -> None:
    untrained = run_lm(CausalMean, LMOptions(**TINY, steps=1), CPU, torch.float32, seed=0)
    trained = run_lm(CausalMean, LMOptions(**TINY, steps=150, lr=1e-2), CPU, torch.float32, seed=0)
    assert trained["lm_val_loss"] < untrained["lm_val_loss"] - 1.0, (untrained, trained)
    assert trained["lm_val_loss"] < math.log(256) - 1.0  # well below a uniform byte guess
    assert trained["lm_bpb"] == pytest.approx(trained["lm_val_loss"] / math.log(2))
    assert trained["lm_tokens"] == 150 * 8 * 64 and trained["lm_train_s"] > 0
    again = run_lm(CausalMean, LMOptions(**TINY, steps=150, lr=1e-2), CPU, torch.float32, seed=0)
    assert again["lm_val_loss"] == trained["lm_val_loss"]  # deterministic per seed


def test_tokens_budget_and_bfloat16() -> None:
    o = LMOptions(**TINY, tokens=8 * 64 * 10 + 1)
    assert o.total_steps == 11
    m = run_lm(CausalMean, o, CPU, torch.bfloat16, seed=0)
    assert m["lm_tokens"] == 11 * 8 * 64 and math.isfinite(m["lm_val_loss"])
    assert LMOptions.cpu_fallback().reduced and not LMOptions.rung1().reduced


def test_nonfinite_loss_is_a_nan_failure() -> None:
    with pytest.raises(StageFailure) as info:
        run_lm(Exploding, LMOptions(**{**TINY, "check_every": 5}, steps=5), CPU, torch.float32, seed=0)
    assert info.value.kind is FailureKind.NAN


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lm_on_cuda_uses_a_graph_and_learns() -> None:
    m = run_lm(CausalMean, LMOptions(**TINY, steps=150, lr=1e-2), torch.device("cuda"),
               torch.bfloat16, seed=0)
    assert m["lm_cuda_graph"] == 1.0 and m["lm_val_loss"] < math.log(256) - 1.0


class EagerBackendCompiler(MixerCompiler):
    """aot_eager (no C++ toolchain on the CPU machine), finished by the time ``start``
    returns, so a switch lands at the first window boundary; ``started_ones`` records every
    instance."""

    started_ones: list[EagerBackendCompiler] = []

    def __init__(self) -> None:
        super().__init__(backend="aot_eager")
        EagerBackendCompiler.started_ones.append(self)

    def start(self, scratch, ids, dtype) -> None:  # type: ignore[no-untyped-def]
        super().start(scratch, ids, dtype)
        self.wait()


@pytest.fixture
def cpu_compiles(monkeypatch: pytest.MonkeyPatch) -> list[EagerBackendCompiler]:
    """Let the LM stage compile on the CPU, through aot_eager."""
    import evaluator.token_mixer.lm as lm

    EagerBackendCompiler.started_ones = []
    monkeypatch.setattr(lm, "_compiles", lambda options, device: options.compile)
    monkeypatch.setattr(lm, "MixerCompiler", EagerBackendCompiler)
    return EagerBackendCompiler.started_ones


def test_lm_compiles_beside_training_and_switches(cpu_compiles: list[EagerBackendCompiler]) -> None:
    options = LMOptions(**{**TINY, "check_every": 5}, steps=60, lr=1e-2)
    m = run_lm(CausalMean, options, CPU, torch.float32, seed=0)
    assert len(cpu_compiles) == 1 and cpu_compiles[0].error is None
    assert m["lm_prewarmed"] == 0.0 and m["lm_compiled"] == 1.0
    # trained eagerly until the first window boundary after the compile, then compiled
    assert m["lm_eager_steps"] == 5.0
    eager = run_lm(CausalMean, options.model_copy(update={"compile": False}), CPU, torch.float32, seed=0)
    assert "lm_compiled" not in eager and len(cpu_compiles) == 1
    # the compiled mixers compute what the eager ones do
    assert m["lm_val_loss"] == pytest.approx(eager["lm_val_loss"], rel=1e-3)


def test_lm_starts_compiled_after_a_prewarm(cpu_compiles: list[EagerBackendCompiler]) -> None:
    options = LMOptions(**TINY, steps=20)
    compiler = prewarm_lm(CausalMean, options, CPU, torch.float32, seed=0)
    assert compiler is cpu_compiles[0]
    # another shape, another mixer or another dtype does not collect it
    other = run_lm(CausalMean, options.model_copy(update={"seq_len": 32}), CPU, torch.float32, seed=0)
    assert other["lm_prewarmed"] == 0.0 and len(cpu_compiles) == 2
    m = run_lm(CausalMean, options, CPU, torch.float32, seed=0)
    assert m["lm_prewarmed"] == 1.0 and m["lm_compiled"] == 1.0 and m["lm_eager_steps"] == 0.0
    assert len(cpu_compiles) == 2  # no compile of its own
    # collected once: the next run compiles for itself
    again = run_lm(CausalMean, options, CPU, torch.float32, seed=0)
    assert again["lm_prewarmed"] == 0.0 and len(cpu_compiles) == 3


def test_a_failed_prewarm_leaves_the_lm_eager(cpu_compiles: list[EagerBackendCompiler]) -> None:
    options = LMOptions(**TINY, steps=20)
    compiler = prewarm_lm(CausalMean, options, CPU, torch.float32, seed=0)
    assert compiler is not None
    compiler.wait()
    compiler.reject("test: the compiled step cannot be captured")
    m = run_lm(CausalMean, options, CPU, torch.float32, seed=0)
    assert m["lm_prewarmed"] == 1.0 and m["lm_compiled"] == 0.0 and m["lm_eager_steps"] == 20.0
    assert len(cpu_compiles) == 1 and math.isfinite(m["lm_val_loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lm_on_cuda_starts_compiled_after_a_prewarm() -> None:
    cuda = torch.device("cuda")
    options = LMOptions(**TINY, steps=150, lr=1e-2)
    compiler = prewarm_lm(CausalMean, options, cuda, torch.bfloat16, seed=0)
    assert compiler is not None
    m = run_lm(CausalMean, options, cuda, torch.bfloat16, seed=0)
    assert compiler.ok, compiler.error
    assert m["lm_prewarmed"] == 1.0 and m["lm_compiled"] == 1.0 and m["lm_eager_steps"] == 0.0
    assert m["lm_cuda_graph"] == 1.0 and m["lm_val_loss"] < math.log(256) - 1.0


def test_the_mqar_stage_is_handed_the_lm_stage_that_follows(cpu_compiles: list[EagerBackendCompiler]) -> None:
    from evaluator.token_mixer import TokenMixerTask, _lm_prewarm
    from evaluator.types import TargetSpec

    mqar, lm, profile = TokenMixerTask().stages(1)
    target = TargetSpec()
    assert _lm_prewarm([profile], CausalMean, CPU, torch.float32, 0, target) is None
    gpu = TargetSpec(name="gpu", device="cuda")  # the LM stage pinned to the CPU: nothing to share
    assert _lm_prewarm([lm.model_copy(update={"device": "cpu"}), profile], CausalMean,
                       torch.device("cuda"), torch.bfloat16, 0, gpu) is None
    start = _lm_prewarm([lm, profile], CausalMean, CPU, torch.float32, 0, target)
    assert start is not None and not cpu_compiles
    compiler = start()  # the rung's LM options as the LM stage resolves them (CPU form here)
    assert compiler is cpu_compiles[0]
    import evaluator.token_mixer.model as model

    compiler.wait()
    options = LMOptions.cpu_fallback()
    key = ("lm", CausalMean, options.batch_size, options.seq_len)
    assert [k[:4] for k in model._PREWARMED] == [key]
    model._PREWARMED.clear()
