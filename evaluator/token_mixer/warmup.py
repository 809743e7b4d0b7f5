"""Warm-up of a pooled sandbox child that will evaluate a token mixer on a GPU.

``TokenMixerTask.preload`` names ``cuda_<precision>`` for ``cuda`` targets; the sandbox child calls it
after its isolation is in place and before it receives a request, so no candidate code exists
in the process yet (``sandbox.runner``). A warm pool starts the next child while the current
evaluation runs (``sandbox.pool``), so this one-time process set-up leaves the evaluation's
critical path, where the GPU idles through it. Measured on an H200 with
``benchmarks/gpu_rung1.py cost softmax_attention --where`` (rung 1 in-process, fresh
process): importing ``torch._dynamo`` / ``torch._inductor`` on the first fused AdamW (5.3 s)
and the first ``torch.compile`` (3.2 s) were idle GPU time, as were the CUDA context and
library initialisation inside the first capture.

What it does: imports the stages' modules, initialises the CUDA context and cuBLAS (a bf16
GEMM under autocast), builds a capturable fused AdamW (which imports torch._dynamo and
torch._inductor) and compiles one tiny elementwise function with the options the mixers are
compiled with, which loads Triton and inductor's code generation. The compiled code is of a
function of this module's, in this child's private cache directory: nothing of it reaches a
candidate's compile except warm imports. Then it trains a few captured steps of the rung-1
MQAR frame around a stand-in mixer (a projection and causal SDPA) at the target's precision
(``_frame``), so the frame's and the attention kernels are loaded before the candidate's first
capture, and runs the rung-1 profile stage around the stand-in (``_profile``: cuDNN's
attention plans for the profile's shapes, and the first FLOP count of the process, which is
slow). Last, it draws the data of rung 1's first MQAR setting for seed 0
(``mqar.predraw``), which the device would otherwise idle through at the start of the MQAR
stage; a campaign with another seed or other MQAR data options draws its own as before.

The price: the waiting child holds a CUDA context (a few hundred MB of device memory) until
its request comes. It never raises: a GPU that fails here fails the stage later, with the
stage's own failure kind and message.
"""

from __future__ import annotations

import sys


def cuda(dtype: str = "bfloat16") -> None:
    """Warm this process for CUDA stages at precision ``dtype`` (see the module docstring)."""
    try:
        import torch

        from evaluator.token_mixer import lm, mqar, profile  # noqa: F401 - the stages' code
        from evaluator.token_mixer.model import COMPILE_OPTIONS, compile_environment, resolve_dtype
        from evaluator.token_mixer.training import build_optimizer

        if not torch.cuda.is_available():
            return
        compile_environment()
        device = torch.device("cuda")
        x = torch.randn(256, 256, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x = x @ x
        layer = torch.nn.Linear(256, 256, device=device)
        build_optimizer(layer, torch.zeros((), device=device), 0.0, (0.9, 0.98), device,
                        capturable=True)
        fn = torch.compile(_pointwise, dynamic=False, options=dict(COMPILE_OPTIONS))
        fn(x.float())
        _frame(device, resolve_dtype(dtype))
        _profile(device, resolve_dtype(dtype))
        # the default rung's first MQAR setting for the default campaign seed (0): the data do
        # not depend on the candidate (about 250 MB of host memory until the request takes them)
        mqar.predraw(mqar.MQAROptions.rung1(), seed=0)
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001 - the stage reports a broken GPU itself
        print(f"archdisco: CUDA warm-up skipped ({type(exc).__name__}: {exc})", file=sys.stderr)


def cuda_float32() -> None:
    cuda("float32")


def cuda_bfloat16() -> None:
    cuda("bfloat16")


def cuda_float16() -> None:
    cuda("float16")


def _frame(device, dtype, **overrides) -> None:  # type: ignore[no-untyped-def]
    """A short MQAR run of the rung-1 frame around a stand-in mixer, through the stage's own
    code: data drawn, model built, step captured in a CUDA graph and replayed, held-out
    evaluation. It loads the kernels of everything around the mixer (embedding, norms, MLP,
    head, cross-entropy, gradient clipping, fused AdamW) and cuBLAS's choices for the frame's
    shapes, which the first capture of a candidate would otherwise wait for. ``overrides``
    change the MQAR options (tests run it small on a CPU)."""
    from evaluator.token_mixer.model import use_sdpa_order
    from evaluator.token_mixer.mqar import MQAROptions, build_data, train_run

    options = MQAROptions.rung1(steps=8, train_examples=512, eval_batches=1, check_every=4,
                                lrs=(1e-3,), compile=False, **overrides)
    train, test = build_data(options, options.settings[0], seed=0, device=device)
    use_sdpa_order(True, device)  # as the MQAR stage runs it
    try:
        train_run(_stand_in, options, train, test, 1e-3, device, dtype, seed=0)
    finally:
        use_sdpa_order(False, device)


def _profile(device, dtype, **overrides) -> None:  # type: ignore[no-untyped-def]
    """The rung-1 profile stage, through its own code, around the stand-in mixer, with one
    timed repeat and a short decode. Its layer shapes are the candidate's: with torch's SDPA
    order, cuDNN attention builds an execution plan on the host at each new shape (about
    130 ms for a forward and its backward on an H200), and a candidate that calls SDPA with
    the usual head layout finds the plans built. It also makes the first FLOP count of the
    process (``FlopCounterMode``'s first use costs 1.5 s of host time on the CPU machine, the
    second milliseconds). ``overrides`` change the profile options (tests run it small)."""
    from evaluator.token_mixer.profile import ProfileOptions, run_profile

    base = dict(decode_contexts=(16,), decode_tokens=1, warmup=1, repeats=1, timing_warmup=1,
                timing_repeats=1)
    run_profile(_stand_in, ProfileOptions.rung1(**{**base, **overrides}), device, dtype, seed=0)


def _stand_in(hidden_size: int, num_heads: int):  # type: ignore[no-untyped-def]
    """The stand-in mixer: one projection and causal SDPA over its heads (the frame's kernels
    and the attention kernels candidates call most are the point, not the mixer)."""
    from torch import nn
    from torch.nn import functional as F

    class StandIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(hidden_size, hidden_size, bias=False)

        def forward(self, x):  # type: ignore[no-untyped-def]
            b, t, d = x.shape
            q = self.proj(x).view(b, t, num_heads, d // num_heads).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, q, q, is_causal=True)
            return y.transpose(1, 2).reshape(b, t, d)

    return StandIn()


def _pointwise(x):  # type: ignore[no-untyped-def]
    return x * x.sigmoid() + 1.0
