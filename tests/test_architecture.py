"""Structure rules of jtl's source, checked from the source itself (ast), not by convention.

- The module import graph of ``jtl/`` (every ``import``, at module level or inside a
  function) has no cycle.
- No loss-piece name appears as a string literal in ``jtl/train`` outside the modules that
  define pieces: the task, model and step code read the pieces' declarations instead.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jtl"
PIECE_MODULES = {"jtl.train.pieces", "jtl.train.adapt_pieces"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """jtl modules that module ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_jtl_import_graph_is_acyclic():
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # A package's __init__ runs before any of its modules; edges *from* __init__ files
        # re-export their modules and are not import-order dependencies of the modules.
        graph[name] = {m for m in _imports(name, path, known) if not m == name.rpartition(".")[0]}
    graph = {n: deps for n, deps in graph.items() if not modules[n].name == "__init__.py"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_piece_name_in_train_code():
    from jtl.train.pieces import PIECES

    offenders = []
    for path in sorted((PACKAGE / "train").glob("*.py")):
        if _module_name(path) in PIECE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PIECES:
                offenders.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_are_small(module):
    """Small modules (under 400 lines), as the project's guide asks."""
    lines = len(_modules()[module].read_text().splitlines())
    assert lines < 400, f"{module}: {lines} lines"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_scripts_are_small_front_ends(script):
    """Scripts are command lines over jtl (library code lives in jtl/): under 400 lines each."""
    lines = len((ROOT / "scripts" / script).read_text().splitlines())
    assert lines < 400, f"scripts/{script}: {lines} lines"


def test_tests_import_no_script():
    """No test imports a module of scripts/, by import or by loading its file (a subprocess is fine)."""
    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                names = []
                if isinstance(node, ast.Attribute) and node.attr in ("spec_from_file_location", "run_path"):
                    offenders.append(f"{path.name}:{node.lineno} loads a file as a module")
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in scripts | {"scripts"}]
    assert not offenders, offenders
