"""The project's packages import downwards only, and no file imports itself in a circle.

The layers, lowest first: common -> contract -> model -> export -> serving -> beam_jobs ->
benchmarks. tfserving_dev stands beside serving (serving's test backends may start it) and
imports nothing from serving. The graph is read from the source with `ast`, so that nothing
is imported (and no TensorFlow loaded) to check it; every import counts, at the top of a
file or inside a function.
"""
from __future__ import annotations

import ast
import pathlib


ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = {"common": 0, "contract": 1, "model": 2, "export": 3, "serving": 4,
          "tfserving_dev": 4, "beam_jobs": 5, "benchmarks": 6}
# Same-layer arrows that are allowed: serving's backends start the development server.
BESIDE = {("serving", "tfserving_dev")}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: pathlib.Path, packages) -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a import b` counts as a.b when a.b is
    a module of the project, else as a)."""
    files = {_module_name(p, root): p for pkg in packages
             for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".")
                    anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                         for alias in node.names]
            else:
                continue
            for name in names:
                # the longest prefix that is a project module
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in graph.items():
        src = source.split(".")[0]
        for target in targets:
            dst = target.split(".")[0]
            if src == dst or (src, dst) in BESIDE:
                continue
            if LAYERS[dst] >= LAYERS[src]:
                bad.append(f"{source} -> {target}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_import_points_down_a_layer():
    assert floor_violations(import_graph(ROOT, LAYERS)) == []


def test_no_file_imports_itself_in_a_circle():
    # Function-level imports count too: a circle hidden inside functions is still a circle.
    assert cycles(import_graph(ROOT, LAYERS)) == []


def test_the_checks_see_an_arrow_up_and_a_circle(tmp_path):
    # A known-bad tree written here: tfserving_dev importing serving (the arrow up), and two
    # contract modules importing each other, once relatively.
    for folder, files in {
        "serving": {"__init__.py": "", "errors.py": "import grpc\n"},
        "tfserving_dev": {"__init__.py": "",
                          "rest.py": "from serving.errors import GRPC_TO_HTTP\n"},
        "contract": {"__init__.py": "", "a.py": "from . import b\n",
                     "b.py": "def f():\n    import contract.a\n"},
    }.items():
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text)
    graph = import_graph(tmp_path, ("serving", "tfserving_dev", "contract"))
    assert floor_violations(graph) == ["tfserving_dev.rest -> serving.errors"]
    assert cycles(graph) == [["contract.a", "contract.b"]]
