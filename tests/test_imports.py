"""The package's import graph has no cycle: every import, at module level or inside a function, points down.

A cycle held together by imports inside functions works until someone moves one line; it also means two modules
cannot be read (or tested) apart. This test reads every module's source (no import is executed), resolves the
package-internal imports and fails on any cycle, naming it.
"""
import ast
from pathlib import Path

import diffusion_course

PACKAGE = Path(diffusion_course.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its source). The package's own ``__init__`` (a lazy
    namespace) is not a node: ``from . import x`` is an edge to ``x``."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods if m != "diffusion_course"}
    for name, path in mods.items():
        if name == "diffusion_course":
            continue
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _resolve(name, is_package, node.level, node.module)
                elif (node.module or "").startswith("diffusion_course"):
                    base = node.module
                else:
                    continue
                for alias in node.names:
                    targets.append(f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names if a.name.startswith("diffusion_course.")]
            for t in targets:
                if t in graph and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == "grey":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in colour:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = "black"
        return None

    for node in sorted(graph):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_sees_function_level_imports():
    graph = import_graph()
    assert "diffusion_course.checkpoints" in graph["diffusion_course.training"]
    assert "diffusion_course.nn.unet" in graph["diffusion_course.nn"]
    # a cycle is found when there is one
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_loading_does_not_reach_the_trainers():
    graph = import_graph()
    assert not graph["diffusion_course.pretrained"] & {"diffusion_course.train", "diffusion_course.training"}, \
        graph["diffusion_course.pretrained"]
