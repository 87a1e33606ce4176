"""Guards on the shape of `optimizer/`: no import cycles, no module over 400 lines.

The import graph is read with `ast`, not by importing: every `import` and `from ... import`
counts, at module level or inside a function (a function-level import that only hides a cycle is
still a cycle), except those under `if TYPE_CHECKING:`, which never run. Only edges to
`optimizer.*` modules are kept; `from optimizer.x import y` is an edge to `optimizer.x.y` when y is
a submodule, else to `optimizer.x`. Importing a submodule also runs its packages' `__init__`, but
that is no edge here: the `__init__`s import nothing but `optimizer/__init__.py`'s lazy public API,
which would otherwise put every module on a cycle through `optimizer`.

`python -m tests.unit.test_architecture` prints the cycles and the long modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import optimizer

PACKAGE_DIR = Path(optimizer.__file__).resolve().parent
MAX_LINES = 400

Graph = dict[str, set[str]]


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not `__init__`)."""
    root = package_dir.name
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that can run: all of them but the bodies of `if TYPE_CHECKING:`."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.orelse:
            yield from _imports(child)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _imports(child)


def _base_package(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of `level` dots starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return ".".join(parts[: len(parts) - (level - 1)])


def import_graph(package_dir: Path = PACKAGE_DIR) -> Graph:
    """Module -> the package's modules it imports (see the module docstring for what counts)."""
    files = module_files(package_dir)
    root = package_dir.name
    graph: Graph = {module: set() for module in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    start = _base_package(module, path.name == "__init__.py", node.level)
                    base = f"{start}.{base}" if base else start
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                if target != root and not target.startswith(root + "."):
                    continue
                while target not in files and "." in target:  # `import optimizer.x.Name` is unusual
                    target = target.rsplit(".", 1)[0]
                graph[module].add(target)
    return graph


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's components, each sorted, in sorted order (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def _shortest_cycle(graph: Graph, start: str, members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (ties: alphabetical)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def find_cycles(graph: Graph) -> list[list[str]]:
    """One shortest cycle through each module that is on a cycle, without repeats, in a stable order.

    A cycle is written from its alphabetically first module: ["a", "b", "a"].
    """
    cycles: list[list[str]] = []
    for component in _strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        members = set(component)
        for module in component:
            cycle = _shortest_cycle(graph, module, members)
            first = cycle.index(min(cycle[:-1]))
            rotated = [*cycle[first:-1], *cycle[:first], cycle[first]]
            if rotated not in cycles:
                cycles.append(rotated)
    return sorted(cycles)


def long_modules(package_dir: Path = PACKAGE_DIR, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(module, lines) for each module over `limit` lines, longest first."""
    lengths = [
        (module, len(path.read_text(encoding="utf-8").splitlines()))
        for module, path in module_files(package_dir).items()
    ]
    return sorted(((m, n) for m, n in lengths if n > limit), key=lambda item: (-item[1], item[0]))


def describe_cycles(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles in {PACKAGE_DIR.name}/:\n{describe_cycles(cycles)}"


def test_no_module_over_400_lines() -> None:
    long = long_modules()
    listing = "\n".join(f"{module}: {lines} lines" for module, lines in long)
    assert not long, f"modules over {MAX_LINES} lines (split them by what they hold):\n{listing}"


# the checker itself, on small packages written for the purpose


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_graph_counts_function_level_and_relative_imports_but_not_type_checking(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.sub import b\nimport os\n",
            "sub/__init__.py": "",
            "sub/b.py": "def f():\n    from ..c import X\n",
            "c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg import a\nelse:\n    from . import d\n"
            ),
            "d.py": "import pkg.sub.b\nfrom .sub import Name\n",
        },
    )
    assert import_graph(package) == {
        "pkg": set(),
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c"},
        "pkg.c": {"pkg.d"},
        "pkg.d": {"pkg.sub.b", "pkg.sub"},
    }


def test_cycles_are_found_and_written_from_their_first_module(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "z.py": "from pkg import a\n",
            "a.py": "def late():\n    from pkg.m import thing\n",
            "m.py": "import pkg.z\nfrom pkg import selfish\n",
            "selfish.py": "from . import selfish\n",
            "ok.py": "from pkg import a\n",
        },
    )
    cycles = find_cycles(import_graph(package))
    assert describe_cycles(cycles) == "pkg.a -> pkg.m -> pkg.z -> pkg.a\npkg.selfish -> pkg.selfish"


def test_long_modules_are_named_with_their_length(tmp_path: Path) -> None:
    package = _package(tmp_path, {"__init__.py": "", "short.py": "x = 1\n" * 3, "long.py": "x = 1\n" * 5})
    assert long_modules(package, limit=4) == [("pkg.long", 5)]


if __name__ == "__main__":
    print(describe_cycles(find_cycles(import_graph())) or "no import cycles")
    for name, length in long_modules():
        print(f"{name}: {length} lines")
