"""The UT transform of the chunked delta rule: is the triangular solve what makes the
DeltaNet seeds slow on a GPU?

The DeltaNet family's chunked form needs, per chunk, T = (I + L)^{-1} for a unit
lower-triangular (C x C) matrix and W = T B_w, U = T B_v for two right-hand sides. The seeds
make two ``torch.linalg.solve_triangular`` calls. This script times forward + backward of that
against one stacked solve and against a block-doubling inverse (log2(C) levels of batched
matmuls) side by side at the rung-1 shapes, checks they agree, times the seeds' whole mixers,
and optionally prints a profiler table of one seed's step. Measured on an H100 (PERFORMANCE.md):
the solves are ~1.5 ms of a ~20 ms mixer step and the block inverse is 4x slower, so the seeds
keep the solves; the step is bound by elementwise kernels, which torch.compile fuses.

    python benchmarks/delta_rule_solve.py --device cuda                  # solver table
    python benchmarks/delta_rule_solve.py --device cuda --profile gated_deltanet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_rung1 import load_seed, time_ms  # noqa: E402


def solve_two(a: torch.Tensor, bw: torch.Tensor, bv: torch.Tensor):
    w = torch.linalg.solve_triangular(a, bw, upper=False, unitriangular=True)
    u = torch.linalg.solve_triangular(a, bv, upper=False, unitriangular=True)
    return w, u


def solve_one(a: torch.Tensor, bw: torch.Tensor, bv: torch.Tensor):
    wu = torch.linalg.solve_triangular(a, torch.cat([bw, bv], dim=-1), upper=False, unitriangular=True)
    return wu.split([bw.shape[-1], bv.shape[-1]], dim=-1)


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """Inverse of unit lower-triangular a (..., C, C), C a power of two, by block doubling:
    inv([[A11, 0], [A21, A22]]) = [[A11^-1, 0], [-A22^-1 A21 A11^-1, A22^-1]]."""
    c = a.shape[-1]
    batch = a.shape[:-2]
    inv = torch.ones(*batch, c, 1, 1, dtype=a.dtype, device=a.device)
    s = 1
    while s < c:
        m = c // (2 * s)
        blocks = a.reshape(*batch, m, 2 * s, m, 2 * s).diagonal(dim1=-4, dim2=-2)  # (..., 2s, 2s, m)
        a21 = blocks[..., s:, :s, :].movedim(-1, -3)  # (..., m, s, s)
        pairs = inv.reshape(*batch, m, 2, s, s)
        i11, i22 = pairs[..., 0, :, :], pairs[..., 1, :, :]
        lower = -(i22 @ a21 @ i11)
        inv = torch.cat([torch.cat([i11, torch.zeros_like(i11)], dim=-1),
                         torch.cat([lower, i22], dim=-1)], dim=-2)
        s *= 2
    return inv.reshape(a.shape)


def block_inverse(a: torch.Tensor, bw: torch.Tensor, bv: torch.Tensor):
    t = unit_lower_inverse(a)
    return t @ bw, t @ bv


def inputs(batch: int, heads: int, chunks: int, c: int, d: int, device: torch.device):
    """A realistic UT system: non-negative unit keys (silu features), beta in (0, 1)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    k = torch.nn.functional.silu(torch.randn(batch, heads, chunks, c, d, generator=gen))
    k = k / k.norm(dim=-1, keepdim=True)
    beta = torch.rand(batch, heads, chunks, c, 1, generator=gen)
    v = torch.randn(batch, heads, chunks, c, d, generator=gen)
    a = torch.eye(c) + ((beta * k) @ k.transpose(-1, -2)).tril(-1)
    return (a.to(device).requires_grad_(), (beta * k).to(device).requires_grad_(),
            (beta * v).to(device).requires_grad_())


def solver_table(args: argparse.Namespace, device: torch.device) -> None:
    cases = {
        "solve_triangular x2 (the seeds)": solve_two,
        "solve_triangular x1, stacked rhs": solve_one,
        "block-doubling inverse + matmul": block_inverse,
    }
    chunks = args.seq_len // args.chunk
    a, bw, bv = inputs(args.batch, args.heads, chunks, args.chunk, args.d_model // args.heads, device)
    ref_w, ref_u = solve_two(a.double(), bw.double(), bv.double())
    print(f"UT transform, fp32, a {tuple(a.shape)}, forward+backward, {describe(device)}")
    print(f"{'method':40} {'ms':>8} {'vs seeds':>10} {'max rel err (fp64 ref)':>24}")
    base = None
    for name, fn in cases.items():
        def once(fn=fn) -> None:
            sum(o.sum() for o in fn(a, bw, bv)).backward()
        ms = time_ms(once, device, args.repeats, args.inner)
        base = base or ms
        with torch.no_grad():
            w, u = fn(a, bw, bv)
            err = max(((w.double() - ref_w).norm() / ref_w.norm()).item(),
                      ((u.double() - ref_u).norm() / ref_u.norm()).item())
        print(f"{name:40} {ms:8.3f} {ms / base:10.2f} {err:24.2e}")


def seed_step(args: argparse.Namespace, device: torch.device) -> None:
    """Forward + backward of each delta-rule seed at the rung-1 frame's mixer shape, bf16."""
    print(f"\nseed mixer forward+backward, B {args.batch}, T {args.seq_len}, d_model {args.d_model}, "
          f"heads {args.heads}, bf16 autocast, {describe(device)}")
    for name in ("deltanet", "gated_deltanet"):
        mixer = load_seed(name).Mixer(args.d_model, args.heads).to(device)
        x = torch.randn(args.batch, args.seq_len, args.d_model, device=device, requires_grad=True)

        def fwd_bwd(x=x, mixer=mixer) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                y = mixer(x)
            y.sum().backward()
        ms = time_ms(fwd_bwd, device, args.repeats, args.inner)
        print(f"{name:18} {ms:8.3f} ms")


def profile(args: argparse.Namespace, device: torch.device) -> None:
    mixer = load_seed(args.profile).Mixer(args.d_model, args.heads).to(device)
    x = torch.randn(args.batch, args.seq_len, args.d_model, device=device, requires_grad=True)

    def once():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            y = mixer(x)
        y.float().sum().backward()
    for _ in range(3):
        once()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(5):
            once()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


def describe(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--profile", default=None, help="seed name: print a profiler table of its step")
    p.add_argument("--rows", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.profile:
        profile(args, device)
        return
    solver_table(args, device)
    seed_step(args, device)


if __name__ == "__main__":
    main()
