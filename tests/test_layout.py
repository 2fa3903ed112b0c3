"""The package's layout shows its architecture: imports flow one way.

Ranks, lowest first: the top-level modules (errors, settings, identity, lazy),
then store (its storage primitives, then ``store.catalogue`` built on them, then the
``Store`` facade of ``store/__init__``), envs, graph, run, cli.  A module may import
from its own rank or below, never above; no module imports a dscheduler module inside a
function (a way to dodge a cycle); no modules import each other, directly
or round a circle.
``from __future__`` aside, every ``import`` statement counts, those under
``if TYPE_CHECKING:`` too: a type is a dependency.  Tests stand alone: no
test module imports another (what they share is in tests/helpers.py or a
fixture), not even in code it runs in a subprocess.

One exception, for import time (docs/design.md §4): a package's ``__init__``
may export names of its own submodules lazily, through a PEP 562
``__getattr__`` driven by a ``_LAZY`` map (relative module -> names).  The
same names are imported under ``TYPE_CHECKING``, so the checks above see
every such dependency; :func:`lazy_mismatch` holds the two equal and the map
to the package's own submodules.  The CLI's commands load the same way: its
``_LAZY`` names each command's module, a click group imports it on demand,
and the same rule holds it.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dscheduler"
RANKS = {"": 0, "store": 1, "envs": 2, "graph": 3, "run": 4, "cli": 5}
TOP_LEVEL = {"__init__", "errors", "settings", "identity", "lazy"}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` (a directory named ``dscheduler``) by dotted name."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def rank(module: str) -> float:
    parts = module.split(".")
    if len(parts) == 1:  # dscheduler itself (its __init__ imports everything)
        return 99
    sub = parts[1] if parts[1] in RANKS else ""
    if sub == "store":  # primitives, then the catalogue on them, then the Store facade
        return RANKS[sub] + (0.5 if parts[2:3] == ["catalogue"] else 0.7 if len(parts) == 2
                             else 0)
    return RANKS[sub]


def resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import,
            known: dict[str, Path]) -> list[str]:
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
    out = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        out.append(candidate if candidate in known else target)
    return out


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
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
            for target in resolve(module, is_package, node, known):
                found.append((target, id(node) in top))
    return found


def upward_imports(module: str, package: Path = PACKAGE) -> list[str]:
    """What ``module`` imports from a layer above its own."""
    known = modules(package)
    return [t for t, _ in imports(module, known[module], known) if rank(t) > rank(module)]


def nested_imports(module: str, package: Path = PACKAGE) -> list[str]:
    """The dscheduler modules ``module`` imports inside a function or class."""
    known = modules(package)
    return [t for t, top in imports(module, known[module], known) if not top]


def import_graph(package: Path = PACKAGE) -> dict[str, list[str]]:
    """Module -> the dscheduler modules it imports, every import counted.

    Those under ``TYPE_CHECKING`` count (a type is a dependency, and a circle hidden
    behind one is still a circle), and so do those inside a function.  A package's
    ``__init__`` importing its own submodules is how packages work, and a submodule
    importing from its package ends there: neither edge is kept."""
    known = modules(package)
    return {m: sorted({t for t, _ in imports(m, p, known)
                       if t in known and t != m
                       and not t.startswith(m + ".") and not m.startswith(t + ".")})
            for m, p in known.items()}


def import_cycles(package: Path = PACKAGE) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a circle
    (the graph's strongly connected components of more than one module), sorted."""
    graph = import_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's algorithm; the graph is a few hundred nodes
        index[m] = low[m] = len(index)
        stack.append(m)
        for t in graph[m]:
            if t not in index:
                visit(t)
                low[m] = min(low[m], low[t])
            elif t in stack:
                low[m] = min(low[m], index[t])
        if low[m] == index[m]:
            group = []
            while True:
                t = stack.pop()
                group.append(t)
                if t == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in graph:
        if m not in index:
            visit(m)
    return sorted(groups)


def test_top_level_holds_only_the_foundation() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL, sorted(top ^ TOP_LEVEL)
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(RANKS) - {""}


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_flow_one_way(module: str) -> None:
    upward = upward_imports(module)
    assert upward == [], f"{module} imports from above its layer: {upward}"
    nested = nested_imports(module)
    assert nested == [], f"{module} imports dscheduler modules inside functions: {nested}"


def test_imports_have_no_cycle() -> None:
    cycles = import_cycles()
    assert cycles == [], "modules that import each other (type-only imports count): " + \
        "; ".join(" <-> ".join(c) for c in cycles) + \
        " -- move what they share into a module below both"


def test_layout_test_can_fail(tmp_path: Path) -> None:
    """Each check above fails on a scratch package that breaks its rule, and only its own.

    ``store.up`` imports from ``run`` (a layer above), ``store.a`` and ``store.b``
    import each other (a cycle within one layer), ``envs.c`` and ``envs.d`` do so
    only for types (``envs.d`` under ``TYPE_CHECKING``), and ``graph.lazy``
    imports inside a function.
    """
    package = tmp_path / "dscheduler"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "store/__init__.py": "",
        "store/a.py": "from . import b\n",
        "store/b.py": "from .a import x\n",
        "store/up.py": "from ..run import compute\n",
        "store/ok.py": "from .. import errors\n",
        "envs/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                            "    from .c import C\n",
        "envs/c.py": "from .d import D\nclass C: ...\n",
        "envs/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from .c import C\nclass D: ...\n",
        "run/__init__.py": "from . import compute\n",
        "run/compute.py": "from ..store import ok\n",
        "graph/__init__.py": "",
        "graph/lazy.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from ..store import ok\n\ndef f():\n"
                         "    from ..store import ok\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    known = modules(package)
    assert {m for m in known if upward_imports(m, package)} == {"dscheduler.store.up"}
    assert upward_imports("dscheduler.store.up", package) == ["dscheduler.run.compute"]
    assert {m for m in known if nested_imports(m, package)} == {"dscheduler.graph.lazy"}
    assert nested_imports("dscheduler.graph.lazy", package) == ["dscheduler.store.ok"]
    assert import_cycles(package) == [["dscheduler.envs.c", "dscheduler.envs.d"],
                                      ["dscheduler.store.a", "dscheduler.store.b"]]
    # without the cycles, the cycle check passes
    (package / "store/b.py").write_text("x = 1\n")
    (package / "envs/d.py").write_text("class D: ...\n")
    modules.cache_clear()
    try:
        assert import_cycles(package) == []
    finally:
        modules.cache_clear()


def _typing_block(stmt: ast.stmt) -> bool:
    test = stmt.test if isinstance(stmt, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def lazy_mismatch(module: str, package: Path = PACKAGE) -> list[str]:
    """What is wrong with ``module``'s ``_LAZY`` map: a map outside a package ``__init__``,
    a module outside the package, or names that differ from its ``TYPE_CHECKING`` imports."""
    known = modules(package)
    path = known[module]
    tree = ast.parse(path.read_text())
    lazy: set[tuple[str, str]] = set()
    problems = []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_LAZY" for t in stmt.targets):
            if path.name != "__init__.py":
                problems.append(f"{module}: _LAZY outside a package __init__")
            for rel, names in ast.literal_eval(stmt.value).items():
                target = module + rel if rel.startswith(".") else rel
                if not rel.startswith(".") or rel.startswith("..") or target not in known:
                    problems.append(f"{module}: _LAZY names {rel!r}, not one of its submodules")
                lazy |= {(target, n) for n in names}
    if not lazy:
        return problems
    typed: set[tuple[str, str]] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and _typing_block(stmt):
            for node in stmt.body:
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    for alias in node.names:
                        target = (f"{module}.{node.module}" if node.module
                                  else f"{module}.{alias.name}")
                        typed.add((target, alias.asname or alias.name))
    if lazy != typed:
        problems.append(f"{module}: _LAZY {sorted(lazy ^ typed)} differs from its "
                        "TYPE_CHECKING imports")
    return problems


@pytest.mark.parametrize("module", sorted(modules()))
def test_lazy_exports_are_declared(module: str) -> None:
    assert lazy_mismatch(module) == []


def test_lazy_check_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "dscheduler"
    files = {
        "__init__.py": "",
        "run/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    from .a import f\n    from . import b as b\n"
                           "_LAZY = {'.a': ['f'], '.b': ['b']}\n",
        "run/a.py": "_LAZY = {'.x': ['y']}\n",
        "run/b.py": "",
        "graph/__init__.py": "_LAZY = {'..run.a': ['f'], '.c': ['g']}\n",
        "graph/c.py": "",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    modules.cache_clear()
    try:
        assert lazy_mismatch("dscheduler.run", package) == []
        assert lazy_mismatch("dscheduler.run.a", package)[0].endswith(
            "_LAZY outside a package __init__")
        graph = lazy_mismatch("dscheduler.graph", package)
        assert "not one of its submodules" in graph[0] and "differs" in graph[-1]
    finally:
        modules.cache_clear()


def test_lazy_check_holds_the_cli_map(tmp_path: Path) -> None:
    """The CLI's map of commands to modules (a function, or a group: the module itself)
    passes as written and fails when a command's module is not the CLI's own or its
    ``TYPE_CHECKING`` import is missing."""
    package = tmp_path / "dscheduler"
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n" \
            "    from . import envs as envs\n    from .graph import run as run\n"
    files = {"__init__.py": "", "cli/graph.py": "", "cli/envs.py": "", "graph/__init__.py": "",
             "cli/__init__.py": typed + "_LAZY = {'.graph': ['run'], '.envs': ['envs']}\n"}
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    modules.cache_clear()
    try:
        assert lazy_mismatch("dscheduler.cli", package) == []
        (package / "cli/__init__.py").write_text(
            typed + "_LAZY = {'.graph': ['run'], '.envs': ['envs'], '.index': ['index']}\n")
        untyped = lazy_mismatch("dscheduler.cli", package)
        assert "'.index', not one of its submodules" in untyped[0], untyped
        assert "('dscheduler.cli.index', 'index')" in untyped[-1], untyped
        (package / "cli/__init__.py").write_text(
            typed + "_LAZY = {'.graph': ['run'], '..graph': ['envs']}\n")
        assert "'..graph', not one of its submodules" in lazy_mismatch(
            "dscheduler.cli", package)[0]
    finally:
        modules.cache_clear()


# -- citations of the design -----------------------------------------------------

SECTION_SIGN = "\u00a7"  # spelled so: this file cites no section itself
HEADING = re.compile(rf"^#{{2,4}} {SECTION_SIGN}(\d+(?:\.\d+)*) ", re.MULTILINE)
CITATION = re.compile(rf"{SECTION_SIGN}(\d+(?:\.\d+)*)")
CITING = ["dscheduler", "tests", "bench", "recipes", "ci", "README.md", "docs"]


def cited_sections(root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, section) of every section citation in the code, tests and docs.

    Only docs/design.md numbers its sections, so every section sign in these
    files, ``docs/design.md §5.4`` or a bare one beside it, cites a heading there.
    """
    found = []
    for name in CITING:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if path.suffix not in {".py", ".md", ".yaml", ".toml", ".txt", ""}:
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for m in CITATION.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append((str(path.relative_to(root)), line, m.group(1)))
    return found


def missing_sections(root: Path = ROOT) -> list[str]:
    """Citations naming no heading of ``root/docs/design.md``."""
    headings = set(HEADING.findall((root / "docs/design.md").read_text()))
    return [f"{file}:{line}: {SECTION_SIGN}{section}"
            for file, line, section in cited_sections(root) if section not in headings]


def test_design_citations_name_existing_sections() -> None:
    assert len(cited_sections()) > 50  # the scan sees the citations
    missing = missing_sections()
    assert missing == [], f"no such heading in docs/design.md: {missing}"


def test_citation_test_can_fail(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/design.md").write_text(
        f"# design\n\n## {SECTION_SIGN}1 One\n\n### {SECTION_SIGN}1.2 Two\n")
    (tmp_path / "README.md").write_text(
        f"see docs/design.md {SECTION_SIGN}1.2 and {SECTION_SIGN}1\n")
    assert missing_sections(tmp_path) == []
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/x.py").write_text(f"# docs/design.md {SECTION_SIGN}1.3\n")
    assert missing_sections(tmp_path) == [f"tests/x.py:1: {SECTION_SIGN}1.3"]


# -- tests stand alone ---------------------------------------------------------------

TESTS = ROOT / "tests"
# import lines in code run by a subprocess: ``python -c "...from x import y..."``
IMPORT_IN_TEXT = re.compile(r"\b(?:from\s+(\w+)[\w.]*\s+import\b|import\s+(\w+))")


def imported_names(path: Path) -> set[str]:
    """Top-level names of the modules a file imports: ``import`` statements anywhere
    in it, and import lines in its string constants (code it runs in a subprocess)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= {a or b for a, b in IMPORT_IN_TEXT.findall(node.value)}
    return names


def cross_imports(tests: Path = TESTS) -> list[str]:
    """"<file> imports <test module>" for each file in ``tests`` that imports a test
    module other than itself (a module running itself in a subprocess is fine)."""
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    return [f"{path.name} imports {name}" for path in sorted(tests.glob("*.py"))
            for name in sorted(imported_names(path) & test_modules - {path.stem})]


def test_no_test_module_imports_another() -> None:
    assert "helpers" in imported_names(TESTS / "test_slurm_cluster.py")  # the scan sees them
    bad = cross_imports()
    assert bad == [], (f"test modules import each other: {bad}; move what they share to "
                       "tests/helpers.py, or make it a fixture in tests/conftest.py "
                       "(or the plugins it loads: graphfixtures.py, wheelhouse.py)")


def test_cross_import_check_can_fail(tmp_path: Path) -> None:
    files = {
        "test_a.py": "X = 1\n",
        "test_b.py": "from test_a import X\n",
        "test_c.py": 'CODE = """\nimport sys; import test_a as t\n"""\n',
        "test_d.py": "from helpers import wait_for\nimport conftest\n"
                     "CODE = 'import sys; import test_d'\n",  # helpers, itself: fine
        "helpers.py": "def f():\n    import test_b\n",
        "conftest.py": "pytest_plugins = ['helpers']\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert cross_imports(tmp_path) == ["helpers.py imports test_b", "test_b.py imports test_a",
                                       "test_c.py imports test_a"]


MAX_DOCSTRING_LINES = 15
# Figures someone measured: a decimal with a unit ("0.27 s", "1.5 GB"), a count with thousands
# separators ("47,000 page faults"), a speed-up ("3x faster", "five times slower").  Contract
# values stay allowed: whole numbers with a unit ("a 60 s ttl", "64 MB"), plain numbers.
MEASURED = re.compile(r"\b\d+\.\d+ ?(?:s|ms|µs|us|ns|KB|MB|GB|KiB|MiB|GiB)\b"
                      r"|\b\d{1,3}(?:,\d{3})+\b"
                      r"|\b(?:\d+(?:\.\d+)?x|\w+ times) (?:faster|slower|cheaper|smaller|larger)\b")


def docstring_problems(package: Path = PACKAGE) -> list[str]:
    """"<module>: <problem>" for each module docstring under ``package`` that runs past
    :data:`MAX_DOCSTRING_LINES` lines or quotes a measured figure."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(), str(path)), clean=False)
        if doc is None:
            continue
        name = path.relative_to(package.parent).as_posix()
        if (lines := len(doc.splitlines())) > MAX_DOCSTRING_LINES:
            problems.append(f"{name}: {lines} lines")
        problems += [f"{name}: {m.group()!r}" for m in MEASURED.finditer(doc)]
    return problems


def test_module_docstrings_state_the_contract_briefly() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) > 50  # the scan sees the package
    bad = docstring_problems()
    assert bad == [], (f"module docstrings too long or quoting figures: {bad}; state the "
                       f"contract in at most {MAX_DOCSTRING_LINES} lines, cite docs/design.md by "
                       "section for the reasons, and move measured figures to docs/benchmarks.md")


def test_docstring_check_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "long.py": '"""Title.\n' + "line\n" * MAX_DOCSTRING_LINES + '"""\n',
        "short.py": '"""Title.\n' + "line\n" * (MAX_DOCSTRING_LINES - 2) + '"""\nX = "0.5 s"\n',
        "sub/figures.py": '"""Installs take 0.27 s of a 0.45 s install here, 47,000 page faults,\n'
                          'and are 3x faster than pip, five times smaller."""\n',
        "sub/contract.py": '"""A 60 s ttl, 64 MB of memory, at least 10 s, 2 workers, v3.11."""\n',
        "nodoc.py": "X = 1\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    assert docstring_problems(package) == [
        "pkg/long.py: 16 lines",
        "pkg/sub/figures.py: '0.27 s'", "pkg/sub/figures.py: '0.45 s'",
        "pkg/sub/figures.py: '47,000'", "pkg/sub/figures.py: '3x faster'",
        "pkg/sub/figures.py: 'five times smaller'",
    ]
