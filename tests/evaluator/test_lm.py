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

from evaluator.token_mixer.lm import LMOptions, load_corpus, run_lm
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
