"""The import direction of ARCHITECTURE.md, checked over the package's source with ``ast``.

Layers, top to bottom: cli -> capability commands -> engine (+ runtimes) -> tasks -> domain libraries (models,
data, metrics, report, explainers, deploy tools) -> utils/errors/kinds. A module may import its own layer or a
lower one, never a higher one, and there are no import cycles (function-level imports count: a lazy import is
still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "meddx"

# (rank, predicate on the dotted module name); the first match wins, lower rank = higher layer
LAYERS: list[tuple[int, str, object]] = [
    (0, "cli", lambda m: m in ("meddx.cli", "meddx.train")),
    (1, "capability commands", lambda m: m.endswith(".commands") or m.startswith(("meddx.serve", "meddx.pacs"))
     or m in ("meddx.explain.files", "meddx.deploy.compress", "meddx.deploy.methods", "meddx.deploy.finetune")),
    (2, "engine", lambda m: m.startswith(("meddx.engine", "meddx.runtimes"))),
    (3, "tasks", lambda m: m.startswith("meddx.tasks")),
    (5, "utils", lambda m: m.startswith("meddx.utils") or m in ("meddx.errors", "meddx.kinds", "meddx")),
    (4, "domain", lambda m: m.startswith(("meddx.models", "meddx.data", "meddx.metrics", "meddx.report",
                                          "meddx.explain", "meddx.deploy", "meddx.dicomio",
                                          "meddx.classical"))),
]


def layer(module: str) -> tuple[int, str]:
    for rank, name, match in LAYERS:
        if match(module):  # type: ignore[operator]
            return rank, name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every meddx module ``path`` imports, at any depth of the file (``from a import b`` -> ``a.b`` if that is a
    module, else ``a``)."""
    found = set()
    for node in _walk_runtime(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("meddx")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meddx"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if _is_module(sub) else node.module)
    return found


def _walk_runtime(node: ast.AST):
    """``ast.walk`` without ``if TYPE_CHECKING:`` blocks (annotations only: no dependency at run time)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            continue
        yield from _walk_runtime(child)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(root.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in graph.items():
        for t in sorted(targets):
            (r_from, n_from), (r_to, n_to) = layer(mod), layer(t)
            if r_to < r_from:
                bad.append(f"{mod} ({n_from}) imports {t} ({n_to})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_only_go_down():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    # a package's __init__ re-exporting its submodules is not a cycle of the design: leave packages out
    graph = {m: {t for t in ts if not _is_package(t)} for m, ts in import_graph().items() if not _is_package(m)}
    assert cycles(graph) == []


def _is_package(name: str) -> bool:
    return (SRC / Path(*name.split(".")[1:]) / "__init__.py").is_file()


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves can fail: a task importing the engine, and two modules importing each other."""
    graph = import_graph()
    graph["meddx.tasks.classification"] = graph["meddx.tasks.classification"] | {"meddx.engine.fit"}
    assert upward_imports(graph) == ["meddx.tasks.classification (tasks) imports meddx.engine.fit (engine)"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_has_a_layer(path):
    layer(module_name(path))
