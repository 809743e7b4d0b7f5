"""The static policy: what it accepts (every shipped seed), what it rejects and how it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluator.types import FailureKind
from sandbox import check
from sandbox.policy import PolicyViolation, imported_modules

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted(p for p in (ROOT / "evaluator" / "token_mixer" / "seeds").glob("*.py")
               if p.name != "__init__.py")
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "mixers").glob("*.py"))


@pytest.mark.parametrize("path", SEEDS + FIXTURES, ids=lambda p: p.name)
def test_every_shipped_mixer_passes(path: Path) -> None:
    assert check(path.read_text()) is None


def test_some_seeds_exist() -> None:
    assert len(SEEDS) >= 4, "the token-mixer seeds moved; update SEEDS"


ACCEPTED = [
    "import torch\nimport torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n"
    "        super().__init__()\n        self._cache = None\n        self.w = nn.Parameter(torch.ones(2))\n",
    "from __future__ import annotations\nimport math\nfrom typing import Optional\nx = math.sqrt(2)\n",
    "import torch.nn.functional as F\ndef f(x):\n    return F.gelu(x) if True else F.relu(x)\n",
    "import torch\nwith torch.no_grad():\n    y = torch.zeros(3)\n    y.requires_grad = False\n",
    "name = type(3).__name__\nmsg = f'{name}'\ns = '{} {}'.format(1, 2)\n",
    "import operator\nfrom functools import reduce\nx = reduce(operator.mul, [1, 2, 3])\n",
    "class A:\n    def __init__(self):\n        self.x = getattr(self, 'y', 0)\n        setattr(self, 'z', 1)\n",
]


@pytest.mark.parametrize("code", ACCEPTED)
def test_ordinary_code_is_accepted(code: str) -> None:
    assert check(code) is None


REJECTED = [
    # (code, line, fragment of the message)
    ("import os", 1, "import of `os` is not allowed"),
    ("import subprocess", 1, "import of `subprocess`"),
    ("import ctypes", 1, "import of `ctypes`"),
    ("import socket", 1, "import of `socket`"),
    ("import importlib", 1, "import of `importlib`"),
    ("from . import x", 1, "relative imports"),
    ("from torch import *", 1, "import *"),
    ("x = 1\ngetattr(__import__('o' + 's'), 'system')('id')", 2, "`__import__` is not allowed"),
    ("eval('1')", 1, "`eval` is not allowed"),
    ("exec('x = 1')", 1, "`exec` is not allowed"),
    ("compile('1', 'f', 'eval')", 1, "`compile` is not allowed"),
    ("open('/etc/passwd')", 1, "`open` is not allowed"),
    ("g = globals()", 1, "`globals` is not allowed"),
    ("v = vars()", 1, "`vars` is not allowed"),
    ("b = __builtins__", 1, "`__builtins__`"),
    ("x = ().__class__.__bases__", 1, "dunder attribute"),
    ("def f(g):\n    return g.__globals__", 2, "`.__globals__`"),
    ("def f(c):\n    return c.__subclasses__()", 2, "`.__subclasses__`"),
    ("def f(o):\n    return o.__dict__", 2, "`.__dict__`"),
    ("def f(o):\n    return getattr(o, '__class__')", 2, "dunder attribute `__class__`"),
    ("def f(o, n):\n    return getattr(o, n)", 2, "literal attribute name"),
    ("import torch.nn as nn\ng = getattr(nn.functional, 'relu')", 2, "`getattr` on a module"),
    ("import torch.nn.functional as F\nF.cross_entropy = None", 2,
     "assigning to `torch.nn.functional.cross_entropy`"),
    ("import torch\ntorch.nn.functional.cross_entropy = None", 2, "modifies an imported module"),
    ("from torch.nn import functional as F\nsetattr(F, 'cross_entropy', None)", 2,
     "`setattr` on a module"),
    ("import torch\nT = torch.Tensor\nT.sum = None", 3, "assigning to `torch.Tensor.sum`"),
    ("import torch\ndel torch.nn.functional.relu", 2, "modifies an imported module"),
    ("import torch\nfor m in [torch.nn.functional]:\n    m.relu = None", 3, "modifies"),
    ("import torch\nm = torch", 2, "may only be used as `torch.attribute`"),
    ("import torch\ntorch.os.system('id')", 2, "`.os` is not allowed"),
    ("import torch\ntorch.nn.modules.module.sys.modules", 2, "`.sys` is not allowed"),
    ("import torch\nx = torch.nn.random", 2, "`.random` is not allowed"),
    ("import torch\nx = torch.load('w.pt')", 2, "`torch.load` is not allowed"),
    ("import torch\ntorch.save(1, 'w.pt')", 2, "`torch.save` is not allowed"),
    ("from torch import load", 1, "`torch.load` is not allowed"),
    ("import torch.utils.cpp_extension", 1, "`torch.utils.cpp_extension` is not allowed"),
    ("import torch\ntorch.ops.load_library('x.so')", 2, "not allowed"),
    ("import torch\ntorch.hub.load('a', 'b')", 2, "`torch.hub` is not allowed"),
    ("import torch\ntorch.set_num_threads(8)", 2, "`torch.set_num_threads`"),
    ("import torch\nx = torch.from_file('/etc/passwd')", 2, "not allowed"),
    ("import torch\nx = torch._C", 2, "private attribute `._C`"),
    ("from torch import _C", 1, "importing `_C`"),
    ("import torch\nf = torch.compile", 2, "`torch.compile` is not allowed"),
    ("def f(x):\n    return '{0.__class__}'.format(x)", 2, "format replacement field"),
    ("def f(t, x):\n    return t.format(x)", 2, "`.format` is allowed only on a string literal"),
    ("import operator\ng = operator.attrgetter('os')", 2, "attribute `os` is not allowed"),
    ("import operator\nm = operator.attrgetter", 2, "may only be called directly"),
    ("f = getattr", 1, "`getattr` must be called directly"),
    ("exit(0)", 1, "`exit` is not allowed"),
    ("def f(e):\n    return e.__traceback__.tb_frame", 2, "dunder"),
    ("def f(g):\n    return g.gi_frame.f_globals", 2, "`.gi_frame` is not allowed"),
]


@pytest.mark.parametrize("code,line,fragment", REJECTED, ids=[r[0][:40] for r in REJECTED])
def test_forbidden_code_is_rejected_with_line_and_advice(code: str, line: int, fragment: str) -> None:
    violation = check(code)
    assert violation is not None, code
    assert violation.kind is FailureKind.POLICY
    assert violation.line == line
    assert fragment in violation.message
    assert str(violation).startswith(f"line {line}: ")


def test_syntax_errors_are_kind_syntax_with_the_line() -> None:
    violation = check("import torch\n\ndef f(x:\n    return x\n")
    assert violation is not None and violation.kind is FailureKind.SYNTAX
    assert violation.line == 3


def test_null_bytes_and_oversized_code() -> None:
    assert check("x = 1\0").kind is FailureKind.SYNTAX
    assert check("x = 1\n" * 200_000).kind is FailureKind.POLICY


def test_violation_counts_further_problems_and_becomes_a_load_result() -> None:
    violation = check("import os\nimport sys\nopen('x')\n")
    assert isinstance(violation, PolicyViolation)
    assert violation.line == 1 and violation.more == 2
    result = violation.to_result(target="cpu")
    assert result.stage == "load" and not result.ok
    assert result.failure_kind is FailureKind.POLICY and "and 2 more" in result.message


def test_task_can_widen_the_import_allowlist() -> None:
    class Task:
        extra_allowed_imports = ("numpy",)

    assert check("import numpy") is not None
    assert check("import numpy", Task()) is None  # type: ignore[arg-type]


def test_imported_modules_lists_what_the_harness_preimports() -> None:
    code = "from __future__ import annotations\nimport torch.nn as nn\nfrom math import pi\n"
    assert imported_modules(code) == ["torch.nn", "math"]
