"""Static policy for candidate code: an AST check run in the driver before any process starts
and again inside the sandbox child before the candidate module is executed.

The policy has two jobs. First, reject early, with a message an agent can act on, code that
would fail or misbehave anyway (forbidden imports, file access). Second, protect the integrity
of the metrics: the harness measures candidates in the same process that runs them, so code
must not be able to reach the interpreter's machinery (``__import__``, ``eval``, frames, code
objects, ``__globals__`` / ``__subclasses__`` walks) or rewire the libraries the harness
measures with (``torch.nn.functional.cross_entropy = ...``, ``setattr(F, ...)``).

What it is not: a proof that the code is harmless. Python has too many doors for an AST
allowlist to be complete; containment of whatever gets through is the job of the OS layer
(``sandbox.isolation``), and module rewiring that slips past the static taint tracking is
caught at run time by ``sandbox.integrity``.

Rules (each violation names the line and what to do instead):
- imports: only the modules in ``ALLOWED_MODULES`` (and their submodules), absolute, no ``*``;
- names: no ``eval exec compile open globals vars locals __import__ input breakpoint help
  exit quit`` nor dunder names other than ``__name__ __doc__ __all__``;
  ``getattr/setattr/delattr`` only called directly, with a literal attribute name, never on
  a module (nor passed around as values); same for ``operator.attrgetter/methodcaller``;
- attributes: no dunder attribute other than ``__init__ __name__ __qualname__ __doc__``; no
  attribute named like a system module (``os``, ``sys``, ``subprocess``, ``builtins`` ...), a
  frame / code field (``f_globals``, ``tb_frame``, ``gi_frame`` ...) or a file API
  (``from_file``, ``tofile``, ``load_library`` ...); no private (``_x``) attribute reached
  from a module or through a call result; no denied torch API (``torch.load``, ``torch.save``,
  ``torch.hub``, ``torch.ops``, ``torch.library``, ``torch.utils.cpp_extension``,
  ``torch.compile``, global-state setters such as ``torch.set_num_threads`` ...);
- no assignment / deletion of an attribute of anything reached from an import (directly or
  through a simple alias), no ``str.format`` on a non-literal template, no replacement field
  with a dunder (``"{0.__class__}"``).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from evaluator.types import FailureKind, StageResult, Task

MAX_CODE_BYTES = 1_000_000

ALLOWED_MODULES: frozenset[str] = frozenset({
    "torch", "math", "typing", "functools", "itertools", "collections", "dataclasses",
    "numbers", "enum", "abc", "operator", "einops", "__future__",
})

DENIED_NAMES: dict[str, str] = {
    "eval": "write the computation as ordinary code",
    "exec": "write the computation as ordinary code",
    "compile": "write the computation as ordinary code (torch.compile is not available either)",
    "open": "candidates have no file access; keep data in tensors",
    "globals": "pass values explicitly",
    "vars": "access attributes by name",
    "locals": "pass values explicitly",
    "__import__": "use an import statement for an allowed module",
    "input": "candidates have no standard input",
    "breakpoint": "remove the debugging call",
    "help": "remove the call",
    "exit": "raise an exception instead",
    "quit": "raise an exception instead",
    "copyright": "remove the reference",
    "credits": "remove the reference",
    "license": "remove the reference",
}
ALLOWED_DUNDER_NAMES = frozenset({"__name__", "__doc__", "__all__"})
ALLOWED_DUNDER_ATTRS = frozenset({"__init__", "__name__", "__qualname__", "__doc__"})
# Attribute names that lead out of the language level (modules held as attributes of other
# modules, e.g. ``torch.os``), into frames / code objects, or to the file system. Denied on
# any object. The list of module attributes comes from walking every loaded torch module.
DENIED_ATTRS: frozenset[str] = frozenset({
    "os", "sys", "subprocess", "builtins", "bltns", "importlib", "ctypes", "socket", "shutil",
    "pathlib", "io", "pickle", "marshal", "inspect", "gc", "signal", "threading", "_thread",
    "multiprocessing", "mp", "python_multiprocessing", "reducer", "reduction", "tempfile",
    "glob", "types", "posix", "nt", "sqlite3", "codeop", "runpy", "pty", "mmap", "resource",
    "fcntl", "select", "selectors", "asyncio", "linecache", "tokenize", "traceback",
    "unittest", "atexit", "logging", "pkgutil", "zipfile", "tarfile", "gzip", "platform",
    "torchgen", "copyreg", "pickletools", "dis", "concurrent", "urllib", "http",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace", "tb_frame", "tb_next",
    "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame", "ag_code", "co_code",
    "co_consts", "mro", "from_file", "tofile", "fromfile", "memmap", "dump", "load_library",
    "export_chrome_trace", "export_stacks", "export_memory_timeline", "format_map",
})
# On anything reached from an import, every standard-library module name that is not itself
# allowed is denied too (``torch.nn.random``, ``F.time`` ...): those attributes are modules.
_STDLIB_NAMES: frozenset[str] = frozenset(getattr(sys, "stdlib_module_names", ()))
# Dotted paths (after alias resolution) that are denied, with the reason / alternative.
DENIED_PATHS: dict[str, str] = {
    "torch.load": "candidates have no file access",
    "torch.save": "candidates have no file access",
    "torch.from_file": "candidates have no file access",
    "torch.hub": "candidates cannot download code or weights",
    "torch.utils.cpp_extension": "native extensions cannot be built in the sandbox",
    "torch.utils.tensorboard": "candidates have no file access",
    "torch.ops": "use the public torch.* functions",
    "torch.classes": "use the public torch.* functions",
    "torch.library": "candidates cannot register operators",
    "torch.overrides": "candidates cannot override torch functions",
    "torch.jit.load": "candidates have no file access",
    "torch.jit.save": "candidates have no file access",
    "torch.export": "candidates have no file access",
    "torch.onnx": "candidates have no file access",
    "torch.package": "candidates have no file access",
    "torch.serialization": "candidates have no file access",
    "torch.multiprocessing": "candidates run in one process",
    "torch.distributed": "candidates run in one process",
    "torch.compile": "torch.compile is not available in the sandbox; write eager PyTorch",
    "torch.random": "the harness owns the random state",
    "torch.manual_seed": "the harness seeds every stage",
    "torch.seed": "the harness seeds every stage",
    "torch.set_rng_state": "the harness seeds every stage",
    "torch.set_num_threads": "the harness sets the thread count",
    "torch.set_num_interop_threads": "the harness sets the thread count",
    "torch.set_default_dtype": "the harness sets the dtype; use dtype= arguments",
    "torch.set_default_device": "use device= arguments",
    "torch.set_default_tensor_type": "use dtype= arguments",
    "torch.set_float32_matmul_precision": "the harness owns global numerics settings",
    "torch.use_deterministic_algorithms": "the harness owns global numerics settings",
    "torch.set_flush_denormal": "the harness owns global numerics settings",
    "torch.cuda.memory": "memory snapshots write files",
}
_ATTR_GETTERS = {"getattr": 2, "setattr": 2, "delattr": 2, "hasattr": 2}
_OPERATOR_GETTERS = frozenset({"operator.attrgetter", "operator.methodcaller"})
_FORMAT_FIELD_DUNDER = re.compile(r"\{[^{}]*__\w*__")


@dataclass(frozen=True)
class PolicyViolation:
    """Why the static policy rejected a candidate: ``kind`` is SYNTAX or POLICY."""

    kind: FailureKind
    line: int
    detail: str  # what is wrong and what to do instead
    more: int = 0  # further violations not spelled out

    @property
    def message(self) -> str:
        """The whole message, naming the line: ``line 3: ... (and 2 more violations)``."""
        extra = f" (and {self.more} more violation{'s' * (self.more > 1)})" if self.more else ""
        return f"line {self.line}: {self.detail}{extra}"

    def __str__(self) -> str:
        return self.message

    def to_result(self, *, target: str = "cpu", rung: int = 0) -> StageResult:
        """The failed implicit ``load`` stage this violation stands for."""
        return StageResult.failure("load", self.kind, self.message, target=target, rung=rung)


def check(code: str, task: Task | None = None) -> PolicyViolation | None:
    """None if ``code`` passes the static policy, else the first violation.

    A task may widen the import allowlist with an optional ``extra_allowed_imports``
    attribute (a tuple of top-level module names).
    """
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        return PolicyViolation(FailureKind.POLICY, 1,
                               f"the program is larger than {MAX_CODE_BYTES} bytes; shorten it")
    try:
        tree = ast.parse(code, filename="<candidate>", mode="exec")
    except SyntaxError as exc:
        detail = (exc.text or "").strip()
        where = f" near {detail[:80]!r}" if detail else ""
        return PolicyViolation(FailureKind.SYNTAX, exc.lineno or 1, f"{exc.msg}{where}")
    except (ValueError, MemoryError, RecursionError) as exc:
        return PolicyViolation(FailureKind.SYNTAX, 1, f"the program cannot be parsed: {exc}")
    allowed = ALLOWED_MODULES | frozenset(getattr(task, "extra_allowed_imports", ()) or ())
    found = sorted(_Checker(tree, allowed).violations())
    if not found:
        return None
    (line, _), message = found[0]
    return PolicyViolation(FailureKind.POLICY, line, message, more=len(found) - 1)


def imported_modules(code: str) -> list[str]:
    """The absolute module paths ``code`` imports (used by the harness to import them, and
    snapshot them, before the candidate runs). Assumes ``code`` parses."""
    out: list[str] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return [m for m in dict.fromkeys(out) if m != "__future__"]


def _denied_path(path: str) -> str | None:
    for prefix, why in DENIED_PATHS.items():
        if path == prefix or path.startswith(prefix + "."):
            return f"`{prefix}` is not allowed: {why}"
    return None


def _chain(node: ast.expr) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None when the chain does not start at a name."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, attrs[::-1]
    return None


def _root_name(node: ast.expr) -> str | None:
    """The name an attribute / subscript chain starts from (None through calls etc.)."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Starred):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _bound_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _bound_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _bound_names(target.value)


class _Checker:
    """One pass to learn import aliases and tainted names, one pass to judge every node."""

    def __init__(self, tree: ast.Module, allowed: frozenset[str]):
        self.tree = tree
        self.allowed = allowed
        self.aliases: dict[str, str] = {}  # local name -> dotted path of what was imported
        self.tainted: set[str] = set()  # names that may hold a module (or part of one)
        self.module_aliases: set[str] = set()  # names bound by `import x` / `import x as y`
        # ids of Name nodes used as an attribute base or callee (the allowed uses of a module)
        self._bases: set[int] = set()
        self._learn()

    # ----- pass 1: aliases and taint (flow-insensitive, to a fixed point) -----
    def _learn(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                        self.module_aliases.add(alias.asname)
                    else:
                        top = alias.name.split(".")[0]
                        self.aliases[top] = top
                        self.module_aliases.add(top)
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        bindings: list[tuple[list[str], ast.expr]] = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                self._bases.add(id(node.value))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                self._bases.add(id(node.func))
            if isinstance(node, ast.Assign):
                names = [n for t in node.targets for n in _bound_names(t)]
                bindings.append((names, node.value))
            elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr) and node.value:
                bindings.append((list(_bound_names(node.target)), node.value))
            elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                bindings.append((list(_bound_names(node.target)), node.iter))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                bindings.append((list(_bound_names(node.optional_vars)), node.context_expr))
        changed = True
        while changed:
            changed = False
            for names, value in bindings:
                if self._refers_to_import(value):
                    for name in names:
                        if name not in self.tainted and name not in self.aliases:
                            self.tainted.add(name)
                            changed = True
                        chain = _chain(value)
                        if chain and chain[0] in self.aliases and name not in self.aliases:
                            self.aliases[name] = ".".join([self.aliases[chain[0]], *chain[1]])

    def _foreign_module_name(self, attr: str) -> bool:
        return attr in _STDLIB_NAMES and attr not in self.allowed

    def _is_importish(self, name: str) -> bool:
        return name in self.aliases or name in self.tainted

    def _refers_to_import(self, node: ast.expr) -> bool:
        """Could evaluating ``node`` (without calling anything) yield an imported object?"""
        if isinstance(node, ast.Name):
            return self._is_importish(node.id)
        if isinstance(node, ast.Attribute | ast.Subscript | ast.Starred):
            return self._refers_to_import(node.value)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return any(self._refers_to_import(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return any(self._refers_to_import(v) for v in node.values if v is not None)
        if isinstance(node, ast.IfExp):
            return self._refers_to_import(node.body) or self._refers_to_import(node.orelse)
        if isinstance(node, ast.BoolOp):
            return any(self._refers_to_import(v) for v in node.values)
        if isinstance(node, ast.NamedExpr):
            return self._refers_to_import(node.value)
        return False

    def _resolve(self, node: ast.expr) -> str | None:
        chain = _chain(node)
        if chain is None or chain[0] not in self.aliases:
            return None
        return ".".join([self.aliases[chain[0]], *chain[1]])

    # ----- pass 2: judge -----
    def violations(self) -> Iterator[tuple[tuple[int, int], str]]:
        for node in ast.walk(self.tree):
            where = (getattr(node, "lineno", 1), getattr(node, "end_col_offset", 0) or 0)
            for message in self._judge(node):
                yield where, message

    def _judge(self, node: ast.AST) -> Iterable[str]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from self._judge_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            yield from self._judge_import_from(node)
        elif isinstance(node, ast.Name):
            yield from self._judge_name(node)
        elif isinstance(node, ast.Attribute):
            yield from self._judge_attribute(node)
        elif isinstance(node, ast.Call):
            yield from self._judge_call(node)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                yield from self._judge_store(target)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            yield from self._judge_store(node.target)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            yield from self._judge_store(node.optional_vars)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _FORMAT_FIELD_DUNDER.search(node.value):
                yield ("a format replacement field reaches a dunder attribute; format the "
                       "values you need explicitly")

    def _judge_module(self, module: str) -> Iterable[str]:
        top = module.split(".")[0]
        if top not in self.allowed:
            allowed = ", ".join(sorted(self.allowed - {"__future__"}))
            yield f"import of `{module}` is not allowed; candidates may import only: {allowed}"
            return
        if any(part.startswith("_") for part in module.split(".")[1:]):
            yield f"import of private module `{module}` is not allowed; use the public API"
        denied = _denied_path(module)
        if denied:
            yield denied

    def _judge_import_from(self, node: ast.ImportFrom) -> Iterable[str]:
        if node.level or not node.module:
            yield "relative imports are not allowed; a candidate is a single module"
            return
        yield from self._judge_module(node.module)
        for alias in node.names:
            if alias.name == "*":
                yield f"`from {node.module} import *` is not allowed; import names explicitly"
                continue
            if node.module == "__future__":
                continue
            if alias.name.startswith("_") or alias.name in DENIED_ATTRS:
                yield f"importing `{alias.name}` from `{node.module}` is not allowed"
            denied = _denied_path(f"{node.module}.{alias.name}")
            if denied:
                yield denied
            if f"{node.module}.{alias.name}" in _OPERATOR_GETTERS:
                yield (f"`{alias.name}` is not allowed; call getattr directly with a literal "
                       "name or access the attribute")

    def _judge_name(self, node: ast.Name) -> Iterable[str]:
        name = node.id
        if (isinstance(node.ctx, ast.Load) and name in self.module_aliases
                and id(node) not in self._bases):
            yield (f"the module `{name}` may only be used as `{name}.attribute`; modules "
                   "cannot be stored, passed or returned as values")
        if name in DENIED_NAMES:
            yield f"`{name}` is not allowed: {DENIED_NAMES[name]}"
        elif name in _ATTR_GETTERS and id(node) not in self._bases:
            yield (f"`{name}` must be called directly, as {name}(obj, 'literal_name'); it "
                   "cannot be stored or passed as a value")
        elif name.startswith("__") and name.endswith("__") and name not in ALLOWED_DUNDER_NAMES:
            yield f"the name `{name}` is not allowed in candidate code"

    def _judge_attribute(self, node: ast.Attribute) -> Iterable[str]:
        attr = node.attr
        if attr.startswith("__") and attr.endswith("__"):
            if attr not in ALLOWED_DUNDER_ATTRS:
                yield (f"the dunder attribute `.{attr}` is not allowed; use ordinary "
                       "attributes, isinstance() or type(x).__name__")
            return
        root = _root_name(node.value)
        importish = root is not None and self._is_importish(root)
        if attr in DENIED_ATTRS or (importish and self._foreign_module_name(attr)):
            yield f"the attribute `.{attr}` is not allowed in candidate code"
            return
        if attr.startswith("_") and (root is None or self._is_importish(root)):
            yield (f"the private attribute `.{attr}` is not allowed here; use the public API "
                   "(private attributes are fine on your own objects, e.g. self._cache)")
            return
        if attr == "format" and not isinstance(node.value, ast.Constant | ast.JoinedStr):
            yield "`.format` is allowed only on a string literal; use an f-string"
            return
        path = self._resolve(node)
        if path:
            denied = _denied_path(path)
            if denied:
                yield denied
            elif path in _OPERATOR_GETTERS and not self._is_called(node):
                yield f"`{path}` may only be called directly, with literal names"

    def _is_called(self, node: ast.expr) -> bool:
        return any(isinstance(p, ast.Call) and p.func is node for p in ast.walk(self.tree))

    def _judge_call(self, node: ast.Call) -> Iterable[str]:
        func = node.func
        if isinstance(func, ast.Name) and func.id in _ATTR_GETTERS:
            yield from self._judge_getattr(func.id, node)
        elif self._resolve(func) in _OPERATOR_GETTERS:
            for arg in node.args:
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    yield f"`{self._resolve(func)}` needs literal attribute names"
                    continue
                for part in arg.value.split("."):
                    yield from self._judge_attr_name(part, importish=False)

    def _judge_getattr(self, fn: str, node: ast.Call) -> Iterable[str]:
        if len(node.args) < 2 or node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            yield f"`{fn}` must be called as {fn}(obj, 'literal_name', ...)"
            return
        obj, name = node.args[0], node.args[1]
        importish = self._refers_to_import(obj)
        if importish and fn != "hasattr":
            yield (f"`{fn}` on a module or an imported object is not allowed; access the "
                   "attribute directly (e.g. F.relu)")
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            yield from self._judge_attr_name(name.value, importish=importish)
        elif fn != "hasattr":
            yield (f"`{fn}` needs a literal attribute name; use a dict or nn.ModuleDict "
                   "for dynamic lookup")

    def _judge_attr_name(self, attr: str, *, importish: bool) -> Iterable[str]:
        if attr.startswith("__") and attr.endswith("__"):
            if attr not in ALLOWED_DUNDER_ATTRS:
                yield f"the dunder attribute `{attr}` is not allowed"
        elif attr in DENIED_ATTRS or (importish and self._foreign_module_name(attr)):
            yield f"the attribute `{attr}` is not allowed in candidate code"
        elif attr.startswith("_") and importish:
            yield f"the private attribute `{attr}` is not allowed here"

    def _judge_store(self, target: ast.expr) -> Iterable[str]:
        """Assigning or deleting through an imported object rewires the libraries the
        harness measures with."""
        if isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                yield from self._judge_store(elt)
            return
        if isinstance(target, ast.Starred):
            yield from self._judge_store(target.value)
            return
        if isinstance(target, ast.Attribute | ast.Subscript):
            root = _root_name(target)
            if root is not None and self._is_importish(root):
                what = self._resolve(target) if isinstance(target, ast.Attribute) else None
                shown = f"`{what}`" if what else f"an attribute of `{root}`"
                yield (f"assigning to {shown} modifies an imported module or object; define "
                       "your own function or variable instead")
        if isinstance(target, ast.Name) and target.id in ("__builtins__", "__class__"):
            yield f"assigning to `{target.id}` is not allowed"
