"""The import rules that keep the layers easy to see, checked on the source (AST, no imports):

- the library (``metalic/``) never imports the service (``api/``, ``workers/``) or ``migrations/``;
- inside the library, a module imports only its own layer or the ones below it:
  base (arms, conditions, domain, families, settings, batching, plotting) < pinn < bandit < jobs
  < campaign < store < cli;
- no import cycle between the library's modules (imports inside functions count; those only for
  type checkers do not);
- only ``metalic/store`` (and the migrations) touch SQLAlchemy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ("api", "workers", "migrations")
LAYERS = (
    ("metalic.arms", "metalic.conditions", "metalic.domain", "metalic.families", "metalic.settings",
     "metalic.batching", "metalic.plotting", "metalic"),
    ("metalic.pinn",),
    ("metalic.bandit", "metalic.priors"),
    ("metalic.jobs",),
    ("metalic.campaign",),
    ("metalic.store",),
    ("metalic.cli",),
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: set[str], with_type_checking: bool = True) -> set[str]:
    """The modules ``path`` imports anywhere (functions included); ``from x import y`` counts as
    ``x.y`` when that is a module of ``known``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node) and not with_type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def layer_of(name: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[0]


LIBRARY = modules("metalic")


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_the_library_never_imports_the_service(name):
    bad = sorted(m for m in imports(LIBRARY[name], set(LIBRARY)) if m.split(".")[0] in SERVICE)
    assert not bad, f"{name} imports {bad}: the library never imports api/, workers/ or migrations/"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_a_library_module_imports_only_its_own_layer_or_lower(name):
    mine = layer_of(name)
    above = sorted(m for m in imports(LIBRARY[name], set(LIBRARY)) if m in LIBRARY and layer_of(m) > mine)
    assert not above, f"{name} (layer {mine}) imports {above} from a higher layer"


def test_no_import_cycle_between_library_modules():
    known = set(LIBRARY)
    graph = {n: {m for m in imports(p, known, with_type_checking=False) if m in known and m != n}
             for n, p in LIBRARY.items()}  # fmt: skip
    # a package's __init__ that re-exports its own modules is not a cycle with them
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = [*path[path.index(m) :], m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


@pytest.mark.parametrize("package", ["metalic", "api", "workers"])
def test_only_the_store_touches_sqlalchemy(package):
    offenders = []
    for name, path in modules(package).items():
        if name.startswith("metalic.store"):
            continue
        if any(m.split(".")[0] == "sqlalchemy" for m in imports(path, set())):
            offenders.append(name)
        if "select(" in path.read_text():
            offenders.append(f"{name} (select()")
    assert not offenders, f"SQL outside metalic/store: {offenders}"


def test_the_rules_catch_what_they_guard(tmp_path):
    """The checks see a workers import inside a function and an upward import (what a breaking
    change would add), so a passing run means something."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from workers.dispatcher import Dispatcher\n    import metalic.store.tasks\n")
    found = imports(probe, set(LIBRARY))
    assert "workers.dispatcher" in found and "metalic.store.tasks" in found
    assert layer_of("metalic.store.tasks") > layer_of("metalic.jobs") > layer_of("metalic.bandit.engine")
