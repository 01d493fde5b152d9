"""The package's shape, read from its source with `ast`: no import cycle among its modules (imports inside functions
count, `if TYPE_CHECKING:` blocks do not), no module over 700 lines, and family knowledge kept in the family table
(few comparisons of a family / architecture / model_type with a literal name outside families.py)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

PACKAGE = "gemma_inspect"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 700
MAX_FAMILY_BRANCHES = 10
FAMILY_NAMES = {"family", "arch", "model_type", "family_key"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions, methods, try blocks), except those under
    `if TYPE_CHECKING:` (which never run)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package modules an import statement runs: the module named, each package above it (its __init__ runs
    first) that is not one the importer already sits in, and for `from X import name` the submodule X.name when
    there is one."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        named = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    own = set()
    parts = module.split(".")
    for k in range(1, len(parts) + (1 if is_package else 0)):
        own.add(".".join(parts[:k]))
    out = set()
    for name in named:
        pieces = name.split(".")
        for k in range(1, len(pieces) + 1):
            prefix = ".".join(pieces[:k])
            if prefix in known and prefix not in own and prefix != module:
                out.add(prefix)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_nodes(tree):
            edges |= _targets(name, is_package, node, known)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module that imports itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component: a -> b -> ... -> a (shortest from its first)."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component  # pragma: no cover - a strongly connected component always has one


def cycles() -> list[str]:
    graph = import_graph()
    return [" -> ".join(a_cycle(graph, comp)) + f"   (component of {len(comp)}: {', '.join(comp)})"
            for comp in strongly_connected(graph)]


def long_modules() -> list[str]:
    out = []
    for name, path in _modules().items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            out.append(f"{path.relative_to(ROOT.parent)}: {n} lines")
    return out


def _names_family(node: ast.expr) -> bool:
    return ((isinstance(node, ast.Name) and node.id in FAMILY_NAMES)
            or (isinstance(node, ast.Attribute) and node.attr in FAMILY_NAMES))


def _is_literal_name(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    return False


def family_branches() -> list[str]:
    """file:line of every comparison of a family / arch / model_type / family_key with a literal name (or a
    tuple, list or set of them), outside families.py."""
    out = []
    for name, path in _modules().items():
        if name == f"{PACKAGE}.families":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if any((_names_family(a) and _is_literal_name(b)) or (_names_family(b) and _is_literal_name(a))
                   for a, b in zip(sides, sides[1:])):
                found.append((node.lineno, f"{path.relative_to(ROOT.parent)}:{node.lineno}"))
        out.extend(text for _line, text in sorted(found))
    return out


# ----------------------------------------------------------------------------- the checks themselves
def test_no_import_cycle():
    found = cycles()
    assert not found, "import cycles among the package's modules:\n  " + "\n  ".join(found)


def test_no_module_over_the_line_limit():
    found = long_modules()
    assert not found, f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(found)


def test_family_branches_outside_the_family_table_are_few():
    found = family_branches()
    assert len(found) <= MAX_FAMILY_BRANCHES, (f"{len(found)} comparisons of family / arch / model_type with a "
                                               f"literal name outside families.py (at most {MAX_FAMILY_BRANCHES}):"
                                               "\n  " + "\n  ".join(found))


# ----------------------------------------------------------------------------- the checkers find what they look for
def _graph_of(sources: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    root = tmp_path / PACKAGE
    for rel, text in sources.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text, encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    return import_graph()


def test_the_cycle_check_sees_imports_inside_functions_and_skips_type_checking(tmp_path, monkeypatch):
    graph = _graph_of({
        "__init__.py": "",
        "a.py": "def f():\n    from .b import x\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import y\nfrom . import a\n",
        "c.py": "from .a import f\n",
        "pkg/__init__.py": "",
        "pkg/d.py": "from ..c import f\n",
        "e.py": "from .pkg.d import g\n",
    }, tmp_path, monkeypatch)
    assert graph[f"{PACKAGE}.a"] == {f"{PACKAGE}.b"}
    assert graph[f"{PACKAGE}.b"] == {f"{PACKAGE}.a"}  # the TYPE_CHECKING import of c does not count
    assert graph[f"{PACKAGE}.e"] == {f"{PACKAGE}.pkg", f"{PACKAGE}.pkg.d"}  # the package's __init__ runs too
    assert graph[f"{PACKAGE}.pkg.d"] == {f"{PACKAGE}.c"}
    comps = strongly_connected(graph)
    assert comps == [[f"{PACKAGE}.a", f"{PACKAGE}.b"]]
    assert a_cycle(graph, comps[0]) == [f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.a"]
    assert cycles() == [f"{PACKAGE}.a -> {PACKAGE}.b -> {PACKAGE}.a   (component of 2: {PACKAGE}.a, {PACKAGE}.b)"]


def test_the_cycle_check_sees_a_package_init_that_imports_back(tmp_path, monkeypatch):
    graph = _graph_of({
        "__init__.py": "",
        "fmt/__init__.py": "def load():\n    from . import one\n",
        "fmt/one.py": "from ..ckpt import C\n",
        "ckpt.py": "def g():\n    from .fmt.io import read\n",
        "fmt/io.py": "",
    }, tmp_path, monkeypatch)
    assert cycles() == [f"{PACKAGE}.ckpt -> {PACKAGE}.fmt -> {PACKAGE}.fmt.one -> {PACKAGE}.ckpt   "
                        f"(component of 3: {PACKAGE}.ckpt, {PACKAGE}.fmt, {PACKAGE}.fmt.one)"]
    assert graph[f"{PACKAGE}.fmt.one"] == {f"{PACKAGE}.ckpt"}  # its own package is not an edge


def test_the_branch_count_sees_comparisons_with_family_names(tmp_path, monkeypatch):
    root = tmp_path / PACKAGE
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "families.py").write_text("family = 'x'\nok = family == 'gemma'\n")  # the table itself: not counted
    (root / "m.py").write_text(
        "def f(spec, arch, cfg):\n"
        "    if spec.family == 'gemma2':\n"  # 2
        "        pass\n"
        "    if arch in ('gemma', 'gemma3'):\n"  # 4
        "        pass\n"
        "    if 'gemma' != cfg.model_type:\n"  # 6
        "        pass\n"
        "    if spec.family == other:\n"  # not a literal: not counted
        "        pass\n"
        "    if spec.rules.qk_norm:\n"  # a capability: not counted
        "        pass\n"
        "    return spec.family_key not in ['a', 'b']\n")  # 12
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    assert family_branches() == [f"{PACKAGE}/m.py:2", f"{PACKAGE}/m.py:4", f"{PACKAGE}/m.py:6",
                                 f"{PACKAGE}/m.py:12"]


def test_the_line_count_sees_a_long_module(tmp_path, monkeypatch):
    root = tmp_path / PACKAGE
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "short.py").write_text("x = 1\n" * MAX_LINES)
    (root / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    assert long_modules() == [f"{PACKAGE}{os.sep}long.py: {MAX_LINES + 1} lines"]


# ----------------------------------------------------------------------------- layers and contracts
LEAVES = {  # module -> the package modules it may import (besides its own submodules)
    f"{PACKAGE}.tensorio": {f"{PACKAGE}.errors", f"{PACKAGE}.dtypes", f"{PACKAGE}.arrays"},
    f"{PACKAGE}.dtypes": set(),
    f"{PACKAGE}.safeio": {f"{PACKAGE}.errors"},
    f"{PACKAGE}.arrays": set(),
    f"{PACKAGE}.runtimes.types": set(),
}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_the_leaf_modules_import_nothing_above_them(leaf):
    """tensorio (the byte pipeline, shard plans, hashing, WriteOptions), the dtype tables, safe file reading and
    the runtimes' shared types sit below everything that uses them: what they reach is only what LEAVES allows."""
    graph = import_graph()
    below = {m for m in graph if m == leaf or m.startswith(leaf + ".")}
    reached = set().union(*(_reachable(graph, m) for m in below)) - below
    assert reached <= LEAVES[leaf], sorted(reached - LEAVES[leaf])


def test_checkpoint_and_the_tokenizer_do_not_reach_the_formats():
    """The formats import checkpoint and tokenizer; were either to import anything under formats/, the package's
    __init__ (which imports every format) would run inside them."""
    graph = import_graph()
    for module in (f"{PACKAGE}.checkpoint", f"{PACKAGE}.tokenizer", f"{PACKAGE}.spec"):
        assert not {m for m in _reachable(graph, module) if m.startswith(f"{PACKAGE}.formats")}, module


def test_every_format_declares_its_contract():
    """Each registered format module declares FORMAT (common.FormatInfo) under its registry name, with a native
    runtime the runtimes know; detection's tables derive from the declarations."""
    from gemma_inspect import formats
    from gemma_inspect.formats.common import FormatInfo
    from gemma_inspect.runtimes import RUNTIMES

    declared = formats.infos()
    assert list(declared) == list(formats.FORMATS)
    for name, info in declared.items():
        assert isinstance(info, FormatInfo) and info.name == name
        assert info.native_runtime is None or info.native_runtime in RUNTIMES
        assert formats.module(name).FORMAT is info
    assert [n for n, i in declared.items() if i.stores_quantization] == ["gguf"]
    assert {n: i.native_runtime for n, i in declared.items() if i.native_runtime} == {"hf": "transformers",
                                                                                        "keras": "keras"}
    assert formats.MEMBER_FILES == tuple(dict.fromkeys(m for i in declared.values() for m in i.member_files))
    assert ("model.safetensors", "model.safetensors.index.json") in formats.AMBIGUOUS_WEIGHTS
    assert formats.EXPECTED.startswith(declared["hf"].description + ", " + declared["keras"].description)
