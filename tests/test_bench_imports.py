"""The benchmark's imports: no cycle among bench modules, and the runtime never imports it.

Pure and fast: it reads the sources with `ast` and imports nothing. Every
import statement counts, wherever it is: at the top, inside a function (a
lazy import), or under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def module_names(package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of a top-level package of the repository."""
    root = REPO / package
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Every module name an import statement of the file refers to (relative ones resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            # `from bench import report` imports the module bench.report.
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def graph(package: str) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imported(name, path) & modules.keys() - {name} for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "active" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "active":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_walk_sees_the_bench_imports() -> None:
    edges = graph("bench")
    # The runner imports the harness and every phase module; the phases import the harness.
    phases = {"bench.micro", "bench.floors", "bench.latency", "bench.saturation", "bench.capacity"}
    assert {"bench.harness", *phases} <= edges["bench.runner"]
    assert "bench.harness" in edges["bench.latency"]
    assert "bench.stats" in edges["bench.floors"]


def test_find_cycle_finds_one() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_bench() -> None:
    cycle = find_cycle(graph("bench"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_runtime_does_not_import_the_bench() -> None:
    modules = module_names("pushskip")
    assert "pushskip.cli" in modules
    offenders = {
        name: sorted(m for m in imported(name, path) if m == "bench" or m.startswith("bench."))
        for name, path in modules.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}
