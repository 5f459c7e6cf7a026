"""trainers/ imports without a cycle: every module's `import` statements, read from its source,
form a graph with no loop, so no module ever meets another half-initialized, and no import is
deferred into a function to break one (lazy imports there are for start-up cost only); and every
module imports alone, first, in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "trainers"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(node: ast.AST, lazy: bool):
    """The import statements run when the module is imported (lazy: those inside functions too)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif _is_type_checking(child):
            continue
        elif lazy or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports(child, lazy)


def edges(name: str, lazy: bool = False) -> set[str]:
    """The trainers modules `name` imports. A package's own __init__, which Python runs before any
    of its modules, is an edge only where a module imports from it by name."""
    out = set()
    for stmt in _imports(ast.parse(MODULES[name].read_text()), lazy):
        if isinstance(stmt, ast.Import):
            targets = [alias.name for alias in stmt.names]
        else:
            assert stmt.level == 0, f"{name}: relative import"
            # `from trainers.tasks import modular` names a module; `import TaskData` an attribute.
            targets = [
                f"{stmt.module}.{a.name}" if f"{stmt.module}.{a.name}" in MODULES else stmt.module
                for a in stmt.names
            ]
        out |= {t for t in targets if t in MODULES and t != name}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_none_where_there_is_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_scan_reads_module_level_imports_and_tells_lazy_ones_apart():
    assert {"trainers.fields", "trainers.import_path"} <= edges("trainers.own_code")
    assert "trainers.tasks" in edges("trainers.tasks.modular")  # the package, imported by name
    source = ast.parse(
        "import a\nif TYPE_CHECKING:\n    import b\nclass C:\n    import c\ndef f():\n    import d\n"
    )
    assert [s.names[0].name for s in _imports(source, lazy=False)] == ["a", "c"]
    assert [s.names[0].name for s in _imports(source, lazy=True)] == ["a", "c", "d"]


@pytest.mark.parametrize("lazy", [False, True], ids=["module_level", "with_lazy_imports"])
def test_the_trainers_import_graph_has_no_cycle(lazy):
    graph = {name: edges(name, lazy) for name in MODULES}
    assert len(graph) > 30 and graph["trainers.spec"] >= {
        "trainers.tasks",
        "trainers.models",
        "trainers.own_code",
    }
    assert find_cycle(graph) is None


# A fresh process per module, forked from one that holds the third-party libraries only (importing
# torch afresh ~35 times would take minutes): each child imports its trainers module first.
ALONE = """
import importlib, os, sys, traceback
import numpy, pydantic, torch  # noqa: F401 - third-party only
assert not any(m == "trainers" or m.startswith("trainers.") for m in sys.modules)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow  # ~20 s of CPU: every child initializes the trainers package
def test_each_trainers_module_imports_alone_in_a_fresh_process():
    names = [n for n in MODULES if not n.endswith("__main__")]
    out = subprocess.run(
        [sys.executable, "-c", ALONE, *names], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.strip() == "failed: []"


# orchestrator/'s layers, lowest first: a module imports from its own layer or lower ones only,
# lazily inside a function too, so that the tree tells the architecture (DESIGN.md): pure analyses,
# the study's typed config, the stores, the sweep that drives runs, the report, the cluster glue
# and the command line on top.
LAYERS = ["analysis", "study", "store", "sweep", "report", "cluster", "cli"]


def orchestrator_imports_against_the_layers() -> list[str]:
    out = []
    for path in sorted((REPO / "orchestrator").rglob("*.py")):
        parts = path.relative_to(REPO / "orchestrator").parts
        layer = parts[0].removesuffix(".py") if len(parts) > 1 or parts[0] == "cli.py" else None
        if layer is None:  # orchestrator/__init__.py
            continue
        for stmt in _imports(ast.parse(path.read_text()), lazy=True):
            modules = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module or ""]
            for module in modules:
                target = module.split(".")
                upward = (
                    target[0] == "orchestrator"
                    and len(target) > 1
                    and target[1] in LAYERS
                    and LAYERS.index(target[1]) > LAYERS.index(layer)
                )
                if upward:
                    out.append(f"{path.relative_to(REPO)}:{stmt.lineno} imports {module}")
    return out


def test_orchestrator_imports_only_its_own_layer_or_lower_ones():
    assert orchestrator_imports_against_the_layers() == []
