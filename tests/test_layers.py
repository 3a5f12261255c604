"""The house in wings: the package's floors, derived from its imports.

Every import between patchwidget's modules is read from the source (at the top of a module, inside a
function, or under ``TYPE_CHECKING``: each is an arrow). The arrows must form no circle, and no arrow
may point from a wing to one above it. The wings, lowest first, as ``../shared/DESIGN.md`` draws them
and ``docs/architecture.md`` shows them (rewrite its table with ``python tests/test_layers.py --write``):

    ground    errors, files, plot       the error types, atomic files, matplotlib figures
    data      prompts, templates, demo data, model loading
    core      sites, cells, batches, passes, runs, engine, metrics, memory, remote: the one loop
    circuits  joint patching, faithfulness, Circuit
    grids     patch, path patching, attribution, PatchResult, Grid
    search    find_bottleneck, find_circuit
    ui        protocol, levels, session, view, explorer, widget, export
    top       cli, and the package's public names (__init__)

Every function's body, after its docstring, also stays within ``MAX_FUNCTION_LINES`` lines (issue 38).
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "patchwidget"
WINGS = ("ground", "data", "core", "circuits", "grids", "search", "ui", "top")
GROUND = {"errors", "files", "plot"}
TOP = {"cli", "health", "__init__"}
MAX_FUNCTION_LINES = 60  # issue 38: a function longer than a screen is split into steps with names


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name below ``patchwidget`` (``core.engine``; ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts)] = path
    return out


def wing(name: str) -> str:
    """The wing a module lives in: its folder, or ground/top at the package's root."""
    head, _, rest = name.partition(".")
    if rest:
        return head
    return "ground" if name in GROUND else "top" if name in TOP else f"?{name}"


def _target(name: str, node: ast.ImportFrom, known: dict[str, Path], alias: str) -> str | None:
    """The module an ``import from`` names (``from .core import engine`` names ``core.engine``)."""
    if node.level:
        package = name.split(".")[:-1]  # the package holding the module (``a`` for ``a.b`` and ``a.__init__``)
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    elif (node.module or "").startswith("patchwidget"):
        base = node.module.removeprefix("patchwidget").lstrip(".")
    else:
        return None
    for candidate in (f"{base}.{alias}".strip("."), base, f"{base}.__init__".strip(".")):
        if candidate in known:
            return candidate
    return None


def arrows() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, every import statement counted."""
    known = modules()
    out: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                targets = {_target(name, node, known, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                targets = {a.name.removeprefix("patchwidget.") for a in node.names if a.name.startswith("patchwidget.")}
            else:
                continue
            out[name] |= {t for t in targets if t and t != name and not t.endswith("__init__")}
    return out


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The lines a function's body spans after its docstring (a long docstring is no reason to split)."""
    body = node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 0 for a module that imports none of the package, else one above its highest import."""
    out: dict[str, int] = {}
    for name in TopologicalSorter(graph).static_order():
        out[name] = 1 + max((out[d] for d in graph[name]), default=-1)
    return out


def test_every_module_lives_in_a_wing():
    strays = [name for name in modules() if wing(name) not in WINGS]
    assert not strays, f"modules outside the wings {WINGS}: {strays}"


def test_no_import_circle():
    try:
        tuple(TopologicalSorter(arrows()).static_order())
    except CycleError as err:
        pytest.fail(f"an import circle: {' -> '.join(err.args[1])}")


def test_nothing_imports_upward():
    upward = [
        f"{name} ({wing(name)}) -> {dep} ({wing(dep)})"
        for name, deps in arrows().items()
        for dep in deps
        if WINGS.index(wing(dep)) > WINGS.index(wing(name))
    ]
    assert not upward, "imports that point to a higher wing:\n" + "\n".join(sorted(upward))


def test_the_architecture_page_shows_the_floors_as_they_are():
    page = PACKAGE.parent / "docs" / "architecture.md"
    assert table() in page.read_text(encoding="utf-8"), f"{page} is stale: run python tests/test_layers.py --write"


def test_functions_are_short():
    too_long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_FUNCTION_LINES:
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
                too_long.append(f"{where} ({body_lines(node)} lines)")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines, split them:\n" + "\n".join(too_long)


def test_every_public_name_imports():
    import patchwidget as pw

    missing = [name for name in pw.__all__ if not hasattr(pw, name)]
    assert not missing, missing
    assert {"Speedups", "attention_pattern"} <= set(pw.__all__)


def table() -> str:
    """The floors as a Markdown table: floor, wing, module, what it imports."""
    graph = arrows()
    rows = ["| floor | wing | module | imports |", "|---|---|---|---|"]
    for name, floor in sorted(floors(graph).items(), key=lambda kv: (kv[1], WINGS.index(wing(kv[0])), kv[0])):
        rows.append(f"| {floor} | {wing(name)} | `{name}` | {', '.join(f'`{d}`' for d in sorted(graph[name]))} |")
    return "\n".join(rows) + "\n"


def write_page() -> None:
    """Put the current table into ``docs/architecture.md``, in place of the one there (the page's last part)."""
    page = PACKAGE.parent / "docs" / "architecture.md"
    text = page.read_text(encoding="utf-8")
    start = text.index("| floor | wing | module | imports |")
    page.write_text(text[:start] + table(), encoding="utf-8")


if __name__ == "__main__":  # python tests/test_layers.py [--write]
    write_page() if "--write" in sys.argv else sys.stdout.write(table())
