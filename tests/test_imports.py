"""The package's import structure: no cycles, and no floor imports a floor above it.

Floors, bottom to top: the package root and the parts (ops, data, evaluation, backbones, proposals, roi_heads, rcnn,
overfeat, methods, visualization, utils) < engine < analysis < the front door (predictor, builder,
cli). Imports inside functions count; imports under ``if TYPE_CHECKING:`` do not (annotations only).
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "detkit"
FLOOR = {"engine": 1, "analysis": 2, "predictor": 3, "builder": 3, "video": 3, "cli": 3, "__main__": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(branch.test) for stmt in branch.body for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and not name.startswith(module + "."):
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, p, known) for m, p in known.items()}


def _floor(module: str) -> int:
    parts = module.split(".")  # "detkit" itself: its __init__ imports nothing of the package eagerly
    return FLOOR.get(parts[1], 0) if len(parts) > 1 else 0


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_floor_imports_a_floor_above():
    upward = sorted(f"{a} -> {b}" for a, bs in _graph().items() for b in bs
                    if a != "detkit" and _floor(b) > _floor(a))
    assert not upward, "upward imports: " + "; ".join(upward)


def test_the_checker_sees_function_level_imports():
    graph = _graph()
    assert "detkit.engine.stages" in graph["detkit.engine.run"]  # imported inside train_from_config
    assert _floor("detkit.engine.run") == 1 and _floor("detkit.ops.box_coder") == 0
