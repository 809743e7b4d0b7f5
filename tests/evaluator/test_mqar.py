"""MQAR recall proxy: the generator follows Zoology's layout, and the training loop separates a
mixer that can recall (causal softmax attention) from one that cannot see other tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from evaluator.token_mixer.model import MixerCompiler, MixerLM
from evaluator.token_mixer.mqar import (
    IGNORE_INDEX, MQAROptions, _distinct_ints, build_data, generate_mqar, run_mqar, train_run,
)
from evaluator.types import FailureKind, StageFailure

CPU = torch.device("cpu")


class SoftmaxAttention(nn.Module):
    """Plain causal softmax attention (no positions of its own)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.h = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TokenWise(nn.Module):
    """Sees only its own token: cannot recall anything."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Exploding(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w * float("nan")


def test_generator_layout_matches_zoology() -> None:
    n, t, k, v = 64, 64, 8, 128
    data = generate_mqar(n, t, k, v, seed=3)
    x, y = data.inputs, data.labels
    assert x.shape == y.shape == (n, t)
    keys, values = x[:, 0:2 * k:2], x[:, 1:2 * k:2]
    assert ((keys >= 1) & (keys < v // 2)).all()  # keys: lower half, never 0
    assert ((values >= v // 2) & (values < v)).all()  # values: upper half
    for row in range(n):
        assert len(set(keys[row].tolist())) == k and len(set(values[row].tolist())) == k
    # exactly k labelled positions per row, each after the pairs at an even offset
    labelled = y != IGNORE_INDEX
    assert (labelled.sum(dim=1) == k).all()
    assert not labelled[:, :2 * k].any()
    pos = data.query_pos
    assert ((pos - 2 * k) % 2 == 0).all() and (pos < t).all()
    assert torch.equal(labelled.nonzero()[:, 1].view(n, k), pos)
    # the token at a query position is a key of the row, its label the value bound to it
    for row in range(n):
        bound = dict(zip(keys[row].tolist(), values[row].tolist()))
        for p in pos[row].tolist():
            assert bound[int(x[row, p])] == int(y[row, p])
    assert torch.equal(data.query_val, y.gather(1, pos))
    # non-query positions after the pairs hold random tokens from the whole vocabulary
    filler = ~labelled
    filler[:, :2 * k] = False
    assert x[filler].min() >= 0 and x[filler].max() < v and x[filler].unique().numel() > v // 2


def test_generator_is_deterministic_and_power_law() -> None:
    a = generate_mqar(256, 64, 4, 128, seed=7)
    b = generate_mqar(256, 64, 4, 128, seed=7)
    c = generate_mqar(256, 64, 4, 128, seed=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)
    # power law (a = 0.01): gaps concentrate near the key-value pairs, far more than uniform
    gaps = (a.query_pos - 8) // 2  # slot index in [0, 28)
    uniform_mean = (28 - 1) / 2
    assert gaps.float().mean() < 0.75 * uniform_mean
    no_noise = generate_mqar(8, 64, 4, 128, seed=7, random_non_queries=False)
    assert (no_noise.inputs[:, 8:][no_noise.labels[:, 8:] == IGNORE_INDEX] == 0).all()


@pytest.mark.parametrize("m", [9, 1000])  # dense (top-k of scores) and sparse (rejection) paths
def test_distinct_ints(m: int) -> None:
    gen = torch.Generator().manual_seed(0)
    out = _distinct_ints(500, 8, 5, 5 + m, gen)
    assert out.min() >= 5 and out.max() < 5 + m
    assert all(len(set(r)) == 8 for r in out.tolist())


def test_options_validate_and_round_trip() -> None:
    o = MQAROptions(settings=[[128, 16], {"seq_len": 64, "num_kv_pairs": 4}], vocab_size=256)
    assert [s.tag for s in o.settings] == ["T128_kv16", "T64_kv4"]
    assert MQAROptions(**o.model_dump()) == o  # the task rebuilds options from a dump
    with pytest.raises(ValidationError, match="extra"):
        MQAROptions(stepz=3)
    with pytest.raises(ValidationError, match="seq_len >= 64"):
        MQAROptions(settings=[[32, 16]])
    with pytest.raises(ValidationError, match="must exceed seq_len"):
        MQAROptions(settings=[[256, 16]], vocab_size=128)
    gpu, cpu = MQAROptions.rung1(), MQAROptions.cpu_fallback()
    assert any(s.seq_len == 256 and s.num_kv_pairs == 16 for s in gpu.settings)
    assert gpu.batch_size == 256 and gpu.steps >= 2000 and len(gpu.lrs) >= 2
    assert cpu.reduced and not gpu.reduced
    assert MQAROptions.rung1(steps=10).steps == 10


def test_softmax_attention_learns_recall_and_tokenwise_does_not() -> None:
    metrics = run_mqar(SoftmaxAttention, MQAROptions(), CPU, torch.float32, seed=0)
    assert metrics["mqar_acc"] >= 0.9, metrics
    assert metrics["mqar_acc_T64_kv16"] == metrics["mqar_acc"]
    assert metrics["mqar_best_lr_T64_kv16"] in MQAROptions().lrs
    assert metrics["mqar_steps"] > 0 and metrics["mqar_step_ms"] > 0
    assert metrics["mqar_train_s"] > 0 and metrics["mqar_reduced"] == 0.0
    # the same budget cannot teach a mixer that never looks at other tokens: it can at best
    # guess among the 16 values in the sequence (accuracy 1/16)
    short = MQAROptions(steps=150, lrs=(1e-2,))
    blind = run_mqar(TokenWise, short, CPU, torch.float32, seed=0)
    assert blind["mqar_acc"] < 0.2, blind


def test_deterministic_per_seed_and_bfloat16_runs() -> None:
    tiny = MQAROptions(steps=40, lrs=(3e-3,), eval_batches=2, check_every=10)
    a = run_mqar(TokenWise, tiny, CPU, torch.float32, seed=1)
    b = run_mqar(TokenWise, tiny, CPU, torch.float32, seed=1)
    assert a["mqar_acc"] == b["mqar_acc"]
    bf = run_mqar(SoftmaxAttention, tiny, CPU, torch.bfloat16, seed=1)
    assert math.isfinite(bf["mqar_acc"]) and 0.0 <= bf["mqar_acc"] <= 1.0


def test_nonfinite_at_every_lr_is_a_nan_failure() -> None:
    tiny = MQAROptions(steps=20, lrs=(1e-3, 1e-2), eval_batches=1, check_every=10)
    with pytest.raises(StageFailure) as info:
        run_mqar(Exploding, tiny, CPU, torch.float32, seed=0)
    assert info.value.kind is FailureKind.NAN
    assert "T64_kv16" in info.value.message


class HostSync(SoftmaxAttention):
    """Reads a value back to the host in forward: cannot be captured in a CUDA graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum().item() < 0:  # always false, but a host synchronisation
            return x
        return super().forward(x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_training_matches_eager_and_falls_back() -> None:
    gpu = torch.device("cuda")
    options = MQAROptions(settings=[(64, 4)], steps=600, lrs=(3e-3,))  # learnt in ~250 steps
    graphed = run_mqar(SoftmaxAttention, options, gpu, torch.bfloat16, seed=0)
    eager = run_mqar(SoftmaxAttention, options.model_copy(update={"cuda_graph": False}), gpu,
                     torch.bfloat16, seed=0)
    assert graphed["mqar_cuda_graph"] == 1.0 and eager["mqar_cuda_graph"] == 0.0
    assert graphed["mqar_acc"] >= 0.9 and eager["mqar_acc"] >= 0.9
    assert abs(graphed["mqar_acc"] - eager["mqar_acc"]) < 0.05
    fallback = run_mqar(HostSync, options, gpu, torch.float32, seed=0)
    assert fallback["mqar_cuda_graph"] == 0.0 and fallback["mqar_acc"] >= 0.9
    torch.randint(0, 9, (4,), device=gpu)  # the failed capture left the generator usable


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recapture_keeps_the_training_state() -> None:
    from evaluator.token_mixer.model import MixerLM
    from evaluator.token_mixer.training import OptimConfig, Trainer

    gpu = torch.device("cuda")
    opts = MQAROptions(settings=[(64, 4)])
    model = MixerLM(opts.model_config_for(), SoftmaxAttention).to(gpu)
    data = torch.randint(0, opts.vocab_size, (8, 64), device=gpu)

    def loss_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(data[idx])
        return F.cross_entropy(logits.flatten(0, 1), data[idx].flatten()), logits.sum()

    batches = torch.randint(0, 8, (10, 4), device=gpu)
    trainer = Trainer(model, loss_fn, OptimConfig(lr=1e-3, steps=10), gpu, torch.bfloat16, batches)
    assert trainer.graphed
    for i in range(5):
        trainer.step(i)
    trainer.take_sums()  # a host synchronisation: the steps have finished
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    moments = [v.clone() for v in trainer._optimizer_tensors()]
    model.compile_mixers()
    assert trainer.recapture()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)  # the warm-up was undone
    for now, then in zip(trainer._optimizer_tensors(), moments):
        torch.testing.assert_close(now, then, rtol=0, atol=0)
    trainer.step(5)
    trainer.take_sums()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mqar_on_cuda_compiles_in_the_background() -> None:
    options = MQAROptions(settings=[(64, 4), (64, 8)], steps=600, lrs=(3e-3,), check_every=20)
    gpu = torch.device("cuda")
    metrics = run_mqar(SoftmaxAttention, options, gpu, torch.bfloat16, seed=0)
    assert metrics["mqar_compile_s"] > 0  # (graphs may have been compiled by an earlier test)
    assert 0 <= metrics["mqar_eager_steps"] <= metrics["mqar_steps"]
    assert metrics["mqar_acc"] >= 0.9 and metrics["mqar_cuda_graph"] == 1.0


class Unfusable(SoftmaxAttention):
    """Calls something dynamo cannot trace into a graph: compile must fall back, not fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.detach().abs().sum()) < 0:  # data-dependent Python branch (a graph break)
            return x
        return super().forward(x)


def test_compiled_mixers_train_like_eager_and_evaluate_eagerly() -> None:
    from evaluator.token_mixer.model import MixerLM

    opts = MQAROptions(steps=2)
    for mixer in (SoftmaxAttention, Unfusable):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MixerLM(opts.model_config_for(), mixer)
        ids = torch.randint(0, opts.vocab_size, (2, 16))
        eager = model(ids)
        model.compile_mixers(backend="aot_eager")  # dynamo + autograd, no C++ toolchain needed
        calls = []
        for block in model.blocks:
            block.compiled_mixer.register_forward_pre_hook(lambda *a: calls.append(1))
        trained = model(ids)
        trained.sum().backward()
        torch.testing.assert_close(trained, eager)
        assert len(calls) == opts.n_layers
        assert all(p.grad is not None for p in model.parameters())
        assert not any(name.startswith("blocks.0.compiled") for name, _ in model.named_parameters())
        model.eval()
        with torch.no_grad():
            model(ids)
        assert len(calls) == opts.n_layers  # evaluation used the eager mixer


class LateCompiler(MixerCompiler):
    """Compiles (aot_eager: no C++ toolchain) before training starts but reports done only
    from the ``after``-th poll on, so the switch lands at a known window boundary."""

    def __init__(self, after: int):
        super().__init__(backend="aot_eager")
        self.polls, self.after = 0, after

    def start(self, scratch, ids, dtype) -> None:
        super().start(scratch, ids, dtype)
        super().wait()
        self.polls = 0  # count the training loop's polls only

    def done(self) -> bool:
        self.polls += 1
        return self.polls >= self.after and super().done()

    def wait(self) -> None:
        pass


def test_run_switches_to_compiled_mixers_at_a_window_boundary() -> None:
    options = MQAROptions(steps=60, check_every=10, lrs=(3e-3,), early_stop_acc=None)
    train, test = build_data(options, options.settings[0], seed=0, device=CPU)
    compiler = LateCompiler(after=3)
    run = train_run(SoftmaxAttention, options, train, test, 3e-3, CPU, torch.float32, 0, compiler)
    assert compiler.error is None and compiler.graphs >= 1
    assert run.eager_steps == 30 and run.steps == 60 and run.finite
    # the next run starts compiled; a compiler that failed leaves every run eager
    again = train_run(SoftmaxAttention, options, train, test, 3e-3, CPU, torch.float32, 0, compiler)
    assert again.eager_steps == 0
    compiler.reject("test")
    eager = train_run(SoftmaxAttention, options, train, test, 3e-3, CPU, torch.float32, 0, compiler)
    assert eager.eager_steps == 60
    # eager and compiled training take the same path (same loss to float tolerance)
    assert abs(again.loss - eager.loss) < 1e-3 * max(1.0, abs(eager.loss))


def test_a_compiler_error_keeps_the_runs_eager() -> None:
    from evaluator.token_mixer.model import MixerLM

    options = MQAROptions(steps=30, check_every=10, lrs=(3e-3,), early_stop_acc=None)
    train, test = build_data(options, options.settings[0], seed=0, device=CPU)
    compiler = MixerCompiler(backend="aot_eager")
    scratch = MixerLM(options.model_config_for(), SoftmaxAttention)
    compiler.start(scratch, torch.zeros(2, 64), torch.float32)  # float ids: the embedding raises
    compiler.wait()
    assert isinstance(compiler.error, RuntimeError) and not compiler.ok
    run = train_run(SoftmaxAttention, options, train, test, 3e-3, CPU, torch.float32, 0, compiler)
    assert run.finite and run.eager_steps == 30


def test_a_later_stage_compile_starts_after_the_last_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import evaluator.token_mixer.mqar as mqar

    options = MQAROptions(settings=((64, 16), (64, 8)), steps=20, check_every=10,
                          lrs=(3e-3, 1e-2), early_stop_acc=None, stop_sweep_at=None)
    log: list[str] = []
    class Logged(mqar.Run):
        def __init__(self, make_mixer, options, train, test, lr, *args, **kwargs):  # type: ignore[no-untyped-def]
            log.append(f"run {train.query_pos.shape[1]} pairs lr {lr:g}")
            super().__init__(make_mixer, options, train, test, lr, *args, **kwargs)

    monkeypatch.setattr(mqar, "Run", Logged)

    def run(compiler: MixerCompiler | None) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            mqar._run_settings(SoftmaxAttention, options, CPU, torch.float32, 0, compiler, pool,
                               lambda: log.append("prewarm"))

    run(LateCompiler(after=1))
    # after the capture of the last setting's last run: no capture follows
    assert log == ["run 16 pairs lr 0.003", "run 16 pairs lr 0.01", "run 8 pairs lr 0.003",
                   "run 8 pairs lr 0.01", "prewarm"]
    failed = LateCompiler(after=1)
    failed.start(MixerLM(options.model_config_for(), SoftmaxAttention), torch.zeros(2, 64), torch.float32)
    log.clear()
    run(failed)  # this stage's compile failed: the later one would too, so it never starts
    assert "prewarm" not in log and len(log) == 4
    log.clear()
    run(None)  # nothing compiles (a CPU stage)
    assert "prewarm" not in log


def test_a_cut_sweep_trains_only_its_best_run_to_the_end() -> None:
    from evaluator.token_mixer.mqar import _sweep

    options = MQAROptions(steps=40, check_every=10, lrs=(1e-3, 1e-2), early_stop_acc=None,
                          stop_sweep_at=None, sweep_cut=0.5)
    train, test = build_data(options, options.settings[0], seed=0, device=CPU)
    runs = _sweep(SoftmaxAttention, options, train, test, CPU, torch.float32, 0, None, None)
    assert [r.lr for r in runs] == [1e-3, 1e-2]
    assert sorted(r.steps for r in runs) == [20, 40]
    # the full sweep's runs at step 20 are the cut sweep's scores there
    at_cut = [train_run(SoftmaxAttention, options.model_copy(update={"steps": 40}), train, test, lr,
                        CPU, torch.float32, 0) for lr in options.lrs]
    leader = max(runs, key=lambda r: r.steps)
    loser = min(runs, key=lambda r: r.steps)
    full_leader = next(r for r in at_cut if r.lr == leader.lr)
    assert leader.loss == pytest.approx(full_leader.loss, rel=1e-4)  # same training path
    # the loser is reported as it stood at the cut, where it scored no better than the leader
    assert loser.window_step_ms and len(loser.window_step_ms) == 2
    assert leader.rank_key() >= loser.rank_key()
    uncut = _sweep(SoftmaxAttention, options.model_copy(update={"sweep_cut": 1.0}), train, test,
                   CPU, torch.float32, 0, None, None)
    assert [r.steps for r in uncut] == [40, 40]  # 1 (as None) trains every run to the end
    assert MQAROptions.rung1().sweep_cut == 0.5 and MQAROptions.cpu_fallback().sweep_cut is None


def test_a_cut_sweep_that_scores_the_stop_line_trains_only_that_run_on() -> None:
    from evaluator.token_mixer.mqar import _sweep

    options = MQAROptions(steps=40, check_every=10, lrs=(1e-3, 1e-2), early_stop_acc=None,
                          stop_sweep_at=0.0, sweep_cut=0.5)  # every score reaches the line
    train, test = build_data(options, options.settings[0], seed=0, device=CPU)
    runs = _sweep(SoftmaxAttention, options, train, test, CPU, torch.float32, 0, None, None)
    assert [(r.lr, r.steps) for r in runs] == [(1e-3, 40)]


def test_a_cut_waits_for_a_compile_by_training_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluator.token_mixer.mqar as mqar

    options = MQAROptions(steps=60, check_every=10, lrs=(1e-3, 1e-2, 3e-3), early_stop_acc=None,
                          stop_sweep_at=None, sweep_cut=0.25)
    train, test = build_data(options, options.settings[0], seed=0, device=CPU)
    polls = []
    monkeypatch.setattr(mqar, "compiling", lambda: polls.append(1) or len(polls) <= 2)
    runs = mqar._sweep(SoftmaxAttention, options, train, test, CPU, torch.float32, 0, None, None)
    # the first run trained on while "compiling" (two more windows: the cut moved from step 15
    # to 35), and the runs after it were cut at the same step
    assert sorted(r.steps for r in runs) == [35, 35, 60]


def test_generated_data_are_pinned_per_seed() -> None:
    """The data of a seed never change silently (campaigns compare candidates across runs and
    resumes): a checksum of one rung-1-shaped draw, taken when the generator was rewritten to
    redraw only rows with a repeat (the output was byte-identical to the whole-batch loop)."""
    import zlib

    d = generate_mqar(2000, 256, 64, 8192, seed=5)
    crc = 0
    for t in (d.inputs, d.labels, d.query_pos, d.query_val):
        crc = zlib.crc32(t.numpy().tobytes(), crc)
    assert crc == 3052920712



def test_evaluation_scores_do_not_depend_on_the_batch_size() -> None:
    from evaluator.token_mixer.model import MixerLM
    from evaluator.token_mixer.mqar import evaluate

    options = MQAROptions()
    _, test = build_data(options, options.settings[0], seed=0, device=CPU)
    torch.manual_seed(0)
    model = MixerLM(options.model_config_for(), SoftmaxAttention)
    small = evaluate(model, test, 16, CPU, torch.float32)
    large = evaluate(model, test, 1024, CPU, torch.float32)
    assert small[0] == large[0] and small[1] == pytest.approx(large[1], rel=1e-5)


def test_data_drawn_ahead_are_the_same_and_taken_once() -> None:
    """``predraw`` (a warm child's) gives ``generate_data`` the very tensors it would draw, for
    the same options and seed only, and only once."""
    from evaluator.token_mixer import mqar

    opts = MQAROptions(settings=((64, 4), (64, 8)), vocab_size=128, steps=10, batch_size=4,
                       eval_batches=2)
    fresh = mqar.generate_data(opts, opts.settings[0], seed=3)
    mqar.predraw(opts, seed=3)
    assert len(mqar._PREDRAWN) == 1
    assert mqar.generate_data(opts, opts.settings[0], seed=4) is not None  # other seed: drawn
    assert len(mqar._PREDRAWN) == 1
    ahead = mqar.generate_data(opts, opts.settings[0], seed=3)
    assert not mqar._PREDRAWN  # taken
    for a, b in zip(ahead, fresh):
        for name in ("inputs", "query_pos", "query_val"):
            assert torch.equal(getattr(a, name), getattr(b, name))


def test_each_setting_reports_the_declared_state_of_its_layers() -> None:
    """``mqar_state_<tag>``: layers x ``state_size(seq_len)`` at the frame's width, for
    comparisons at matched state size; none for a mixer that declares none or whose
    declaration fails."""

    class Cache(TokenWise):
        def state_size(self, seq_len: int) -> int:  # a KV cache of the frame's width
            return 2 * seq_len * self.proj.in_features

    class Broken(TokenWise):
        def state_size(self, seq_len: int) -> int:
            raise RuntimeError("no")

    tiny = MQAROptions(settings=((64, 4), (128, 8)), vocab_size=256, n_layers=2, d_model=32,
                       steps=20, lrs=(3e-3,), eval_batches=1, check_every=10)
    m = run_mqar(Cache, tiny, CPU, torch.float32, seed=0)
    assert m["mqar_state_T64_kv4"] == 2 * 2 * 64 * 32
    assert m["mqar_state_T128_kv8"] == 2 * 2 * 128 * 32
    for mixer in (TokenWise, Broken):
        metrics = run_mqar(mixer, tiny, CPU, torch.float32, seed=0)
        assert not any(k.startswith("mqar_state") for k in metrics)
