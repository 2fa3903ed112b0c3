"""The package's layout shows its architecture: imports flow one way.

Ranks, lowest first: the top-level modules (errors, settings, identity),
then store, envs, graph, run, cli.  A module may import from its own rank
or below, never above; no module imports a dscheduler module inside a
function (a way to dodge a cycle); module-level imports form no cycle.
``from __future__`` aside, every ``import`` statement counts, those under
``if TYPE_CHECKING:`` too: a type is a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parent.parent / "dscheduler"
RANKS = {"": 0, "store": 1, "envs": 2, "graph": 3, "run": 4, "cli": 5}
TOP_LEVEL = {"__init__", "errors", "settings", "identity"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # dscheduler itself (its __init__ imports everything)
        return 99
    sub = parts[1] if parts[1] in RANKS else ""
    return RANKS[sub]


def resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The dscheduler modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "dscheduler"]
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target.split(".")[0] != "dscheduler":
        return []
    known = modules()
    out = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        out.append(candidate if candidate in known else target)
    return out


def imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported dscheduler module, at module level?) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []
    top = {id(n) for n in tree.body}
    for stmt in tree.body:  # `if TYPE_CHECKING:` blocks count as module level
        if isinstance(stmt, ast.If):
            top |= {id(n) for n in stmt.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for target in resolve(module, is_package, node):
                found.append((target, id(node) in top))
    return found


def runtime_imports(path: Path, module: str) -> list[str]:
    """Module-level imports that run at import time (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    out = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            out.extend(resolve(module, is_package, stmt))
    return out


def test_top_level_holds_only_the_foundation() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL, sorted(top ^ TOP_LEVEL)
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(RANKS) - {""}


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_flow_one_way(module: str) -> None:
    path = modules()[module]
    upward = [t for t, _ in imports(module, path) if rank(t) > rank(module)]
    assert upward == [], f"{module} imports from above its layer: {upward}"
    nested = [t for t, top in imports(module, path) if not top]
    assert nested == [], f"{module} imports dscheduler modules inside functions: {nested}"


def test_module_level_imports_have_no_cycle() -> None:
    known = modules()
    graph = {m: [t for t in runtime_imports(p, m) if t in known and t != m]
             for m, p in known.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            # A package's __init__ importing its own submodules is how packages work.
            if m != t and t.startswith(m + "."):
                continue
            if state.get(t) == 1 and not m.startswith(t + "."):
                raise AssertionError(f"import cycle: {' -> '.join([*path, m, t])}")
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_layout_test_can_fail(tmp_path: Path) -> None:
    """The checks above see an upward import and a nested one."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..run import compute\n\ndef f():\n    from ..store import atomic\n")
    found = imports("dscheduler.store.bad", bad)
    assert ("dscheduler.run.compute", True) in found
    assert ("dscheduler.store.atomic", False) in found
