"""Framework overhead of the MQAR training loop: run_mqar's loop vs a minimal hand-written loop.

Both loops train the same model (the MixerLM frame around the same mixer, same seed) on the
same MQAR data with the same batch, learning rate and precision; each measures its median
step time the same way (windows of ``check_every`` steps closed by one device
synchronisation). The minimal loop does only what any training loop must: index a batch,
forward, loss at the query positions, backward, optimizer step. run_mqar adds the warm-up /
cosine schedule, gradient clipping, on-device loss / accuracy accumulators and the periodic
NaN check. The two alternate ``--rounds`` times in one process so drift hits both alike.

    python benchmarks/mqar_loop_overhead.py                      # CPU, rung-0 shapes
    python benchmarks/mqar_loop_overhead.py --preset rung1 --device cuda --dtype bfloat16 --sandbox

Each run trains the preset's step budget unless ``--steps`` says otherwise. A sandboxed run
is a fresh process, so on CUDA it compiles the mixers beside its first steps and trains them
eagerly until the compiler is done (``eager steps`` in the table); a run much shorter than a
campaign's (``--steps 300``) never gets to the compiled mixers.

Acceptance (issue 5): run_mqar's step time within 10% of the minimal loop's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluator.token_mixer.model import (  # noqa: E402
    MixerFactory, MixerLM, autocast_context, resolve_dtype, seeded, synchronize,
    use_sdpa_order,
)
from evaluator.token_mixer.mqar import MQAROptions, MQARSetting, build_data, run_mqar  # noqa: E402
from evaluator.token_mixer.seeds import seed_source  # noqa: E402



SDPA_CODE = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    \"\"\"Causal softmax attention through SDPA (used when no mixer file is given).\"\"\"

    def __init__(self, hidden_size: int, num_heads: int, **kw):
        super().__init__()
        self.h = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))
"""


def load_mixer(name: str | None) -> tuple[str, MixerFactory, str]:
    """(name, Mixer class, source) of a seed name (``deltanet``), a path to a candidate file,
    or None for SDPA attention."""
    if name is None:
        stem, code = "sdpa_attention", SDPA_CODE
    elif name.endswith(".py"):
        stem, code = Path(name).stem, Path(name).read_text()
    else:
        stem, code = name, seed_source(name)
    module = types.ModuleType(f"bench_mixer_{stem}")
    exec(compile(code, f"<{stem}>", "exec"), module.__dict__)  # a benchmark of trusted code
    return stem, module.Mixer, code


def sandboxed_step_ms(code: str, options: MQAROptions, device: torch.device, dtype: str) -> dict:
    """run_mqar as a campaign runs it: the token-mixer task's mqar stage in a sandboxed child
    (``options`` passed as the stage's overrides), returning the stage's metrics."""
    from evaluator.types import StageSpec, TargetSpec
    from sandbox.api import EvalRequest, SandboxLimits
    from sandbox.launcher import run_evaluation

    stage = StageSpec(name="mqar", rung=1, timeout_s=1800, device="any", options={
        "preset": "rung1" if device.type == "cuda" else "rung0",
        "overrides": options.model_dump(mode="json")})
    target = TargetSpec(name=device.type, device=device.type, dtype=dtype,  # type: ignore[arg-type]
                        resources={"GPU": 1.0} if device.type == "cuda" else {"CPU": 1.0})
    outcome = run_evaluation(EvalRequest(task="token-mixer", code=code, stages=[stage], target=target),
                             SandboxLimits(wall_timeout_s=3600))
    if not outcome.ok:
        raise RuntimeError(f"sandboxed mqar stage failed: {outcome.first_failure}\n{outcome.log_tail[-2000:]}")
    return outcome.results[-1].metrics


def minimal_loop(
    make_mixer: MixerFactory, options: MQAROptions, device: torch.device, dtype: torch.dtype,
    seed: int,
) -> float:
    """Median step time (ms) of the plainest loop over the same model, data and precision, and
    the same attention kernels (the MQAR stage runs SDPA with flash attention first)."""
    use_sdpa_order(True, device)
    setting = options.settings[0]
    train, _ = build_data(options, setting, seed, device)
    with seeded(seed, device):
        model = MixerLM(options.model_config_for(), make_mixer).to(device)
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(model.parameters(), lr=options.lrs[0], **kwargs)
    b, n = options.batch_size, train.inputs.shape[0]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randint(0, n, (options.steps, b), generator=gen).to(device)
    windows, t0 = [], None
    synchronize(device)
    t0 = time.perf_counter()
    for step in range(options.steps):
        idx = order[step]
        with autocast_context(device, dtype):
            h = model.hidden(train.inputs[idx])
            pos = train.query_pos[idx]
            logits = model.logits(h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))).float()
        loss = F.cross_entropy(logits.flatten(0, 1), train.query_val[idx].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % options.check_every == 0:
            synchronize(device)
            now = time.perf_counter()
            windows.append(1000.0 * (now - t0) / options.check_every)
            t0 = now
    return statistics.median(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--preset", default="rung0", choices=["rung0", "rung1", "cpu_fallback"])
    parser.add_argument("--mixer", default=None, help="seed name or candidate file (default: SDPA)")
    parser.add_argument("--setting", default=None, help="T,K (default: the preset's largest)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps a run (default: the preset's budget, as long as a campaign's run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--sandbox", action="store_true",
                        help="also run the stage as a campaign does, in a sandboxed child")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    base = {"rung0": MQAROptions, "rung1": MQAROptions.rung1,
            "cpu_fallback": MQAROptions.cpu_fallback}[args.preset]()
    args.steps = args.steps or base.steps
    if args.setting:
        t, k = (int(v) for v in args.setting.split(","))
        setting = MQARSetting(seq_len=t, num_kv_pairs=k)
    else:
        setting = max(base.settings, key=lambda s: s.seq_len * s.num_kv_pairs)
    check = min(base.check_every, max(10, args.steps // 10))
    options = MQAROptions(**{
        **base.model_dump(), "settings": [setting], "steps": args.steps, "lrs": [base.lrs[0]],
        "early_stop_acc": None, "stop_sweep_at": None, "check_every": check,
        "train_examples": base.train_examples or args.steps * base.batch_size,
    })
    name, make_mixer, code = load_mixer(args.mixer)
    print(f"# {name} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}),"
          f" {args.dtype}, {setting.tag}, d_model {options.d_model}, {options.n_layers} layer(s),"
          f" batch {options.batch_size}, {args.steps} steps x {args.rounds} rounds")
    # run_mqar variants: the loop alone (eager), + CUDA graph, + torch.compile (the default)
    loops: dict[str, MQAROptions] = {}
    if device.type == "cuda":
        loops["run_mqar (eager)"] = options.model_copy(update={"cuda_graph": False, "compile": False})
        loops["run_mqar (graph)"] = options.model_copy(update={"compile": False})
    loops["run_mqar"] = options  # as the stage runs by default
    variants: dict[str, list[float]] = {"minimal (eager)": [], **{k: [] for k in loops}}
    # sandboxed: the stage in a fresh child, as a campaign runs it; on CUDA also without
    # compile, which is the same loop as "run_mqar (graph)": the sandbox's own cost apart
    # from compiling beside the first steps (a fresh process compiles every time)
    boxed: dict[str, MQAROptions] = {}
    if args.sandbox:
        if device.type == "cuda":
            boxed["run_mqar (graph), sandboxed"] = loops["run_mqar (graph)"]
        boxed["run_mqar, sandboxed"] = options
    variants.update({k: [] for k in boxed})
    eager: dict[str, list[float]] = {k: [] for k in boxed}
    warm = min(50, args.steps)
    minimal_loop(make_mixer, options.model_copy(update={"steps": warm, "check_every": min(check, warm)}),
                 device, dtype, 0)  # warm-up: kernels, allocator, lazy imports
    flags: dict[str, float] = {}
    for _ in range(args.rounds):
        variants["minimal (eager)"].append(minimal_loop(make_mixer, options, device, dtype, 0))
        for label, opts in loops.items():
            m = run_mqar(make_mixer, opts, device, dtype, 0)
            variants[label].append(m["mqar_step_ms"])
            flags[label] = m["mqar_cuda_graph"]
        for label, opts in boxed.items():
            m = sandboxed_step_ms(code, opts, device, args.dtype)
            variants[label].append(m["mqar_step_ms"])
            flags[label] = m["mqar_cuda_graph"]
            if "mqar_eager_steps" in m:
                eager[label].append(m["mqar_eager_steps"])
    base_ms = statistics.median(variants["minimal (eager)"])
    print(f"{'loop':<30}{'median step ms':>16}{'ratio':>8}  graph   rounds (ms)")
    for label, values in variants.items():
        med = statistics.median(values)
        graph = {1.0: "yes", 0.0: "no"}.get(flags.get(label, 0.0), "part")
        note = (f"   eager steps while compiling: {' '.join(f'{v:.0f}' for v in eager[label])}"
                if eager.get(label) else "")
        print(f"{label:<30}{med:>16.3f}{med / base_ms:>8.3f}  {graph:>5}   "
              f"{' '.join(f'{v:.3f}' for v in values)}{note}")
    print("compile applies on CUDA only; acceptance: run_mqar (sandboxed) / minimal <= 1.10."
          " A sandboxed run compiles its mixers beside its first steps (eager steps above),"
          " which share the host with the compiler.")


if __name__ == "__main__":
    main()
