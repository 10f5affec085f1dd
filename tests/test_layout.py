"""The package's layout: imports between fedactors' modules flow one way (issue 35 item 5).

The graph is read from the source with `ast`, nothing imported: an edge A -> B for every
`import B` / `from B import x` in A that names a fedactors module (`from fedactors import api`
names the module fedactors.api). What counts:

- every import, at the top of a module or inside a function: a lazy import is a dependency all
  the same (it only moves the moment the circle bites);
- except those under `if TYPE_CHECKING:`, which never run;
- and except the edges in KNOWN below, each with its reason; each must still exist (a stale one
  fails, so the list only shrinks).

A package's `__init__` is the node of its package; that importing fedactors.x.y first runs
fedactors/x/__init__.py is not an edge (else every package that re-exports its modules would be
a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fedactors"

# (importer, imported, why it is left): the circles this step does not open.
KNOWN = {
    **{("fedactors.cli", f"fedactors.cli.{name}"):
       "click's registration: the package defines the group `cli`, then imports the command modules last so "
       "that each attaches its command to it (the modules import `cli` from the package)"
       for name in ("results", "run", "runs", "strategies", "tasks")},
    ("fedactors.task", "fedactors.data.registry"):
        "`from fedactors.task import load_task` keeps working for users: a module __getattr__ (PEP 562) imports "
        "the registry when the name is asked for, after fedactors.task is whole; fedactors' own modules import "
        "it from fedactors.data.registry",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every fedactors module by dotted name, the compiled extension (_kernels) included by its stub."""
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    for stub in PACKAGE.rglob("*.pyi"):
        found.setdefault(module_name(stub), stub)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The fedactors modules `name` imports, each with the line of its first import."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target != name:
            out.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in known:
                        add(alias.name, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from .x import y
                    parts = package.split(".")
                    parts = parts[:len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([child.module] if child.module else []))
                for alias in child.names:
                    if f"{base}.{alias.name}" in known:  # from fedactors import api: the module
                        add(f"{base}.{alias.name}", child.lineno)
                    elif base in known:
                        add(base, child.lineno)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return out


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in sorted(known.items())}


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One circle of the graph as [a, b, ..., a], or None: depth-first search, in sorted order (stable output)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = dfs(start)
            if found:
                return found
    return None


def describe(cycle: list[str], edges: dict[str, dict[str, int]], known: dict[str, Path]) -> str:
    root = PACKAGE.parent
    return "\n".join(f"  {a} -> {b}   ({known[a].relative_to(root)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones():
    """The reader itself: a function-level import is an edge, one under TYPE_CHECKING is not."""
    edges = graph()
    assert "fedactors.model" in edges["fedactors.tasks.mnist"]  # imported inside cnn(), lazily
    assert "fedactors.runtime.client" not in edges["fedactors.runtime.pool"]  # only under `if TYPE_CHECKING:`
    assert "fedactors.aggregate" in edges["fedactors.runtime.coordinator"]  # `from fedactors import aggregate`


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Circles enough to show each tangle: find one, cut its last edge, look again."""
    edges = {a: dict(b) for a, b in edges.items()}
    found = []
    while (cycle := find_cycle(edges)) is not None and len(found) < 20:
        found.append(cycle)
        del edges[cycle[-2]][cycle[-1]]
    return found


def test_no_import_circles():
    """Imports flow one way: no module reaches itself through the modules it imports (KNOWN aside)."""
    edges = graph()
    for importer, imported in KNOWN:
        edges.get(importer, {}).pop(imported, None)
    found = circles(edges)
    assert not found, "import circles (a lazy import counts too, see tests/test_layout.py):\n" + "\n\n".join(
        describe(cycle, edges, modules()) for cycle in found)


def test_known_exceptions_are_still_imports():
    """KNOWN only shrinks: an exception whose import is gone is taken off the list."""
    edges = graph()
    stale = [edge for edge in KNOWN if edge[1] not in edges.get(edge[0], {})]
    assert not stale, f"KNOWN names imports that are gone; remove them from tests/test_layout.py: {stale}"


def test_public_import_paths_still_work():
    """What users import keeps its address after the split (README, examples, users' task files)."""
    import fedactors
    import fedactors.data
    import fedactors.task
    from fedactors.data.arrays import Arrays
    from fedactors.data.registry import builtin_tasks, load_task

    assert fedactors.task.Arrays is Arrays and fedactors.Arrays is Arrays
    assert fedactors.task.load_task is load_task and fedactors.task.builtin_tasks is builtin_tasks
    assert fedactors.task.as_int64 is fedactors.data.arrays.as_int64
    assert fedactors.Task is fedactors.task.Task
    assert load_task("mnist-cnn") is builtin_tasks()["mnist-cnn"]
    for name in ("MEAN", "STD", "load_mnist", "load_mnist_raw", "read_idx", "resolve_data_dir", "missing_files"):
        assert hasattr(fedactors.data, name), name


def _names_checked(path: Path, names: set[str], where: str) -> list[str]:
    """Where `path` tests a built-in algorithm's name: any string constant that is one of `names` (a docstring or
    a message is not the name alone), and a comparison of "fedavg" (also an aggregator's name) with a strategy."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings):
            found.append((node.lineno, f"{where}:{node.lineno}: {node.value!r}"))
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if (any(isinstance(p, ast.Constant) and p.value == "fedavg" for p in parts)
                    and "strategy" in ast.unparse(node)):
                found.append((node.lineno, f"{where}:{node.lineno}: {ast.unparse(node)}"))
    return [text for _, text in sorted(found)]


def test_no_algorithm_name_is_checked_outside_the_module_that_defines_it():
    """Issue 35: what a method does, composes with and is labelled by is in its file (its Spec), not in name tests
    across the package. FedAvg, the default, may be compared with where a run is told apart from the paper's."""
    from fedactors.algorithms import BUILTINS

    names = set(BUILTINS) - {"fedavg"}
    found = [hit for name, path in modules().items() if path.suffix == ".py"
             and not name.startswith("fedactors.algorithms")
             for hit in _names_checked(path, names, str(path.relative_to(PACKAGE.parent)))]
    assert not found, "built-in names tested outside fedactors/algorithms:\n" + "\n".join(found)


def test_the_name_check_finds_a_name_test(tmp_path):
    """The reader itself: a comparison with a built-in's name is found, the same name in a docstring is not."""
    path = tmp_path / "probe.py"
    path.write_text('"""scaffold"""\nif config.strategy == "scaffold":\n    pass\nif config.strategy != "fedavg":\n'
                    '    pass\nif config.aggregator != "fedavg":\n    pass\n')
    assert _names_checked(path, {"scaffold"}, "probe.py") == ["probe.py:2: 'scaffold'",
                                                               "probe.py:4: config.strategy != 'fedavg'"]
