"""No import circles in headscreen/ or pipelines/, lazy (function-level) imports counted.

Every module's imports are read with `ast` (module level, inside functions and classes, inside `try`/`if`),
not by importing anything. An edge goes from a module to the module it names: `import a.b.c` and
`from a.b import c` (c a submodule) name a.b.c; `from a.b import name` names a.b (its __init__). Relative
imports are resolved against the importing package. Imports under `if TYPE_CHECKING:` never run and are
left out. A parent package's __init__, which Python runs before a submodule, is not an edge of its own:
a package that re-exports its submodules (headscreen/spectral/__init__.py) would otherwise be a circle with
each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("headscreen", "pipelines")


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package is its __init__.py)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node in the tree, skipping `if TYPE_CHECKING:` bodies (their `else` is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict) -> str | None:
    """The deepest known module that `name` (dotted) is or lies in; None outside the packages."""
    parts = name.split(".")
    while parts:
        dotted = ".".join(parts)
        if dotted in modules:
            return dotted
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict) -> set[str]:
    """The known modules that `module` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                out.add(resolved)
    return out


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (a list of modules, first repeated at the end) per strongly connected component."""
    return [_circle_in(comp, graph) for comp in components(graph)]


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted (Tarjan's algorithm,
    iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _circle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the component's first module (breadth-first inside the component)."""
    members, start = set(component), component[0]
    parent = {start: None}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"no circle through {start} in {component}")


def test_the_finder_names_a_planted_circle_lazy_and_relative_imports_included(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from ..c import x\nthing = 1\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
                              "try:\n    from pkg import a\nexcept ImportError:\n    a = None\nx = 2\n")
    (pkg / "d.py").write_text("if TYPE_CHECKING:\n    from pkg import c\n")  # never runs: no edge
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.sub"] == {"pkg.sub.b"} and graph["pkg.d"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("x = 2\n")  # the lazy import in a.py alone closes no circle
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []


def test_no_import_circle_in_headscreen_or_pipelines():
    graph = import_graph()
    assert len(graph) > 100 and "headscreen.config" in graph  # the walk found the tree
    found = components(graph)
    hint = ("; inside headscreen/, import ConfigError and from_mapping from headscreen.config.core, not from "
            "headscreen.config (whose section registry imports the sections' owners)"
            if any("headscreen.config" in c for c in found) else "")
    assert not found, "import circles (lazy imports counted): " + "; ".join(
        f"{' -> '.join(_circle_in(c, graph))} (modules in this circle's knot: {', '.join(c)})" for c in found) + hint
