"""The CUDA warm-up a pooled sandbox child runs for token-mixer GPU targets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from evaluator.token_mixer import warmup


def test_a_failing_warm_up_says_so_and_never_raises(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("CUDA error: no kernel image is available")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "randn", broken)
    warmup.cuda()  # must not raise: the stage reports a broken GPU with its own failure kind
    assert "CUDA warm-up skipped (RuntimeError: CUDA error" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_warm_up_loads_the_compile_machinery_and_initialises_cuda() -> None:
    code = ("import sys, torch; from evaluator.token_mixer import warmup; warmup.cuda_bfloat16(); "
            "print(torch.cuda.is_initialized(), all(m in sys.modules for m in "
            "('torch._dynamo', 'torch._inductor.compile_fx', 'triton')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]
    assert "warm-up skipped" not in out.stderr, out.stderr[-2000:]  # the frame run went through


def test_the_frame_warm_up_runs_the_mqar_stage_code() -> None:
    """The frame part of the warm-up is the MQAR stage's own code around a stand-in mixer; on
    the CPU it runs the same path bar the graph capture (a drift in that code breaks here, not
    silently on a GPU worker, where the warm-up only prints that it was skipped)."""
    warmup._frame(torch.device("cpu"), torch.float32, batch_size=8, d_model=32,
                  settings=((64, 4),), vocab_size=256)
    # likewise the profile stage, with its FLOP count
    warmup._profile(torch.device("cpu"), torch.float32, d_model=32, num_heads=2, train_tokens=256,
                    train_seq_len=64, prefill_lens=(16,), state_seq_len=64,
                    timing_seq_lens=(16, 32), timing_batch=1, timing_d_model=16, timing_num_heads=2)


def test_sdpa_order_is_left_alone_on_a_cpu() -> None:
    from evaluator.token_mixer.model import use_sdpa_order

    get = getattr(torch._C, "_get_sdp_priority_order", None)
    if get is None:
        pytest.skip("this torch has no SDPA priority API")
    before = list(get())
    use_sdpa_order(True, torch.device("cpu"))
    assert list(get()) == before


_ORDER_SNIPPET = """
import torch, torch.nn.functional as F
from evaluator.token_mixer.model import use_sdpa_order
cuda = torch.device("cuda")
if {ours}:  # ours first, before any SDPA call of the process
    use_sdpa_order(True, cuda)
    print(list(torch._C._get_sdp_priority_order()))
    use_sdpa_order(False, cuda)
else:  # torch's own order, settled by a first SDPA call
    q = torch.zeros(1, 1, 16, 64, device=cuda, dtype=torch.bfloat16)
    F.scaled_dot_product_attention(q, q, q, is_causal=True)
    print([])
print(list(torch._C._get_sdp_priority_order()))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_stages_put_flash_attention_first_and_others_get_torchs_order() -> None:
    """``use_sdpa_order`` on a GPU: flash attention first for the training stages; for the
    others the order torch itself settles on at its first SDPA call (cuDNN first on Hopper),
    also when ours was set before any SDPA call of the process (fresh processes)."""
    import ast

    from torch.nn.attention import SDPBackend

    from evaluator.token_mixer.model import TRAINING_SDPA_ORDER

    def orders(ours: bool) -> list[list[int]]:
        out = subprocess.run([sys.executable, "-c", _ORDER_SNIPPET.format(ours=ours)],
                             capture_output=True, text=True, timeout=120)
        return [ast.literal_eval(line) for line in out.stdout.strip().splitlines()[-2:]] if out.returncode == 0 \
            else pytest.fail(out.stderr[-2000:])

    training, restored = orders(True)
    _, torchs = orders(False)
    assert training[:len(TRAINING_SDPA_ORDER)] == [int(getattr(SDPBackend, n)) for n in TRAINING_SDPA_ORDER]
    assert restored == torchs and sorted(training) == sorted(torchs)
