"""Material for LLM-campaign tests: the token-mixer task cut to its reference seed, real mixer
modules an LLM might write (a good one, one that crashes in forward, its repair), and the
replies that carry them in the researcher / debugger / analyst formats.

The task subclass keeps the real stages (the sandbox child builds the task by its name,
``token-mixer``); only the seed zoo is cut to ``linear_attention`` so a test campaign spends
its few seconds on the LLM's proposals rather than on eight baselines.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluator.token_mixer import TokenMixerTask
from evaluator.types import Seed

ONE_SEED_TASK = "tests.discovery.llm_script:OneSeedTokenMixer"

# Tiny stage settings (also the CLI tests', via conftest.py): tests of plumbing, not of the
# quality of the proxies.
FAST_TASK_OPTIONS = """
[task.options.mqar]
steps = 40
lrs = [0.01]
eval_batches = 2
check_every = 20
[task.options.profile]
repeats = 1
warmup = 0
prefill_lens = [64]
decode_contexts = [64]
"""
# Small mixers too for the LLM tests.
TASK_OPTIONS = "\n[task.options]\nhidden_size = 32\nnum_heads = 2" + FAST_TASK_OPTIONS


class OneSeedTokenMixer(TokenMixerTask):
    """token-mixer with only its reference seed."""

    def seeds(self) -> list[Seed]:
        return [s for s in super().seeds() if s.name == self.reference_seed]


def seed_code(name: str = "linear_attention") -> str:
    return next(s.code for s in TokenMixerTask().seeds() if s.name == name)


GATED_CONV = '''\
"""Gated causal depthwise convolution over the last four tokens."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, kernel_size: int = 4, **kw):
        super().__init__()
        self.kernel_size = kernel_size
        self.proj = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, gate = self.proj(x).chunk(2, dim=-1)
        u = F.pad(u.transpose(1, 2), (self.kernel_size - 1, 0))  # left padding only: causal
        y = self.conv(u).transpose(1, 2)
        return self.out(y * torch.sigmoid(gate))
'''

# Linear attention by prefix sums of k v^T; the last reshape names the heads twice (a bug).
PREFIX_SUM_BUGGY = '''\
"""Linear attention through prefix sums of the k v^T outer products (elu + 1 features)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, eps: float = 1e-6, **kw):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.eps = eps
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        state = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=1)  # (B, T, H, d, d)
        norm = torch.cumsum(k, dim=1)
        num = (q.unsqueeze(-2) @ state).squeeze(-2)
        den = (q * norm).sum(-1, keepdim=True)
        y = (num / (den + self.eps)).reshape(b, t, self.num_heads, d)
        return self.out(y)
'''
PREFIX_SUM_FIXED = PREFIX_SUM_BUGGY.replace(
    ".reshape(b, t, self.num_heads, d)", ".reshape(b, t, d)"
).replace("the k v^T outer products", "the k v^T outer products, heads merged")
assert PREFIX_SUM_FIXED != PREFIX_SUM_BUGGY


def proposal_reply(name: str, motivation: str, code: str) -> str:
    """The reply shape issue 4 requires the researcher to accept."""
    return f"Name: {name}\nMotivation: {motivation}\n\n```python\n{code}```\n"


def insight_reply(change: str, effect: str = "measured in the sandbox", lesson: str = "keep it") -> str:
    return json.dumps({"change": change, "effect": effect, "lesson": lesson})


NO_CODE = "I would try a gated delta rule with a learned decay; it should recall better."


def write_config(path: Path, name: str, n: int, extra: str = "", budget: str = "") -> Path:
    """A one-seed token-mixer campaign, sequential (max_in_flight 1: a deterministic script).
    ``extra``: TOML tables ([proposer], [llm.*]); ``budget``: more [budget] keys."""
    path.write_text(
        f'name = "{name}"\n{extra}\n[task]\nname = "{ONE_SEED_TASK}"\n'
        f'[budget]\nmax_evaluations = {n}\nmax_wall_minutes = 5\n{budget}'
        f'[runner]\nkind = "inline"\nmax_in_flight = 1\n{TASK_OPTIONS}'
    )
    return path
