"""No import circles among kedge's modules.

A circle means two modules cannot be read, tested or moved apart. Imports inside
functions count too: hiding an import in a function hides the circle, it does not
remove it. The graph is read from the source (ast), so nothing is executed.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"kedge": "kedge", "runtime": "kedge.runtime", "train": "kedge.train", "export": "kedge.export",
            "calibration": "kedge.calibration"}  # the folders of setup.cfg's package_dir


def modules(root: Path, packages: dict[str, str]) -> dict[str, Path]:
    found = {}
    for folder, package in packages.items():
        for path in (root / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(root / folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def import_graph(found: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the kedge modules it imports (from X import Y counts X.Y when Y is a module)."""
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in found}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in found:
                        graph[name].add(target)
                    elif base in found:
                        graph[name].add(base)
    for name in graph:  # a submodule's import loads its package's __init__ first, which is no edge of its own
        graph[name].discard(name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_detector_finds_a_circle_hidden_in_a_function(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(modules(tmp_path, {"pkg": "pkg"}))
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_import_circles_in_kedge() -> None:
    found = circles(import_graph(modules(ROOT, PACKAGES)))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_runtime_names_no_training_export_or_tensorflow_module_in_any_import() -> None:
    """The runtime ships to the device alone: none of its modules imports kedge.train,
    kedge.export or TensorFlow, at the top or inside a function (the import test in
    test_cli_lean sees only what loads at import time)."""
    banned = ("kedge.train", "kedge.export", "tensorflow", "tf_keras", "tf2onnx")
    found = []
    for name, path in modules(ROOT, {"runtime": "kedge.runtime"}).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{name}: {m}" for m in imported if m == "keras" or m.startswith(banned)]
    assert not found, found
