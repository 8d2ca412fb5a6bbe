"""The package's layers run one way, and no module imports itself back through others.

LAYERS is the one statement of the order, lowest first. A module may import its own layer or a lower
one, never a higher one, and an entry point (`python -m ssp_jax.<x>`) imports no other entry point:
what they share lives in `wiring`. Imports are read from the source (inside functions and `TYPE_CHECKING`
blocks too), so a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "ssp_jax"

ENTRY_POINTS = ("train", "eval", "export", "serve", "score")  # `python -m ssp_jax.<x>`; none imports another
LAYERS: tuple[tuple[str, ...], ...] = (
    ("registry", "tokenizer", "bpe_ranks", "distributed", "metrics", "checkpoint"),  # infrastructure
    ("models",),
    ("engine",),
    ("data",),  # datasets and record formats; no index
    ("retrieval",),
    ("agent",),
    ("selfplay",),
    ("rl",),
    ("worlds", "report"),  # the micro-world wing (the world, its warm start, the controls); run summaries
    ("config", "aot", "projection", "wiring"),  # wiring: the flags and builders every entry point shares
    ENTRY_POINTS,
)


def unit(module: str) -> str:
    """The layer unit of `ssp_jax.a.b`: the subpackage `a`, or the top-level module `a`."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every ssp_jax module -> the ssp_jax modules it imports (a package import means its __init__)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssp_jax"):
                for alias in node.names:  # `from ssp_jax.x import y` may name the submodule y
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("ssp_jax"))
        graph[name] = {m for m in found if m != name}
    return graph


def test_every_unit_has_a_layer() -> None:
    placed = [u for layer in LAYERS for u in layer]
    assert len(placed) == len(set(placed)), "a unit is in two layers"
    units = {unit(m) for m in imports() if m != "ssp_jax"}
    assert units <= set(placed), f"add {sorted(units - set(placed))} to LAYERS"


def test_no_import_runs_up_the_layers() -> None:
    level = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    upward = sorted(f"{a} -> {b}" for a, targets in imports().items() for b in targets
                    if a != "ssp_jax" and b != "ssp_jax" and level[unit(b)] > level[unit(a)])
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_entry_points_import_no_other_entry_point() -> None:
    crossing = sorted(f"{a} -> {b}" for a, targets in imports().items() for b in targets
                      if a != "ssp_jax" and b != "ssp_jax" and unit(a) in ENTRY_POINTS and unit(b) in ENTRY_POINTS
                      and unit(a) != unit(b))
    assert not crossing, "entry points importing each other (move what they share to ssp_jax/wiring.py):\n" + \
        "\n".join(crossing)
