"""The package's shape: no import cycle between sweeper's modules, no module over
``MAX_LINES``, the planning layer free of TensorFlow, Ray and ART, and every package
opening with a docstring of what it owns.

The import graph is read from the source (every ``import`` and ``from ... import``, at
module level and inside functions alike: a function-level import of a sweeper module that
closes a cycle hides the cycle, it does not remove it). ``from pkg import name`` is an edge
to ``pkg.name`` when that is a module, else to ``pkg`` itself. A package's modules import
each other directly, never through the package's ``__init__``, so an ``__init__`` that
re-exports its modules' names closes no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "sweeper"
MAX_LINES = 450
# Third-party libraries the planning layer (grid schema, expansion, ids, cost) never imports:
# `sweeper validate` and `sweeper --help` stay fast because of it.
HEAVY = ("tensorflow", "tf_keras", "keras", "qkeras", "ray", "art", "duckdb", "matplotlib")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every module name ``name`` imports (absolute and relative), wherever in the file."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _executed(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _executed(tree: ast.AST):
    """Every node that can run: all but the bodies of ``if TYPE_CHECKING:`` (annotations
    only, never imported at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_executed(child)])
            continue
        yield node
        yield from _executed(node)


def graph() -> dict[str, set[str]]:
    """sweeper module -> the sweeper modules it imports."""
    return {name: {target for target in imports(name) if target in MODULES and target != name}
            for name in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_and_resolves_names_to_modules():
    # the checker itself: a cycle of three is one component, a chain is none
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # `from sweeper.run import trial` is an edge to the module, `from sweeper.errors import
    # UserError` to errors
    assert "sweeper.run.trial" in imports("sweeper.run.sweep") and "sweeper.errors" in imports("sweeper.registry")


def test_no_import_cycle_between_sweeper_modules():
    assert cycles(graph()) == []


def test_no_module_is_over_the_line_limit():
    long = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: lines for name, lines in long.items() if lines > MAX_LINES} == {}


def test_the_plan_imports_no_tensorflow_ray_or_art():
    for name in (n for n in MODULES if n == "sweeper.plan" or n.startswith("sweeper.plan.")):
        heavy = {target for target in imports(name) if target.split(".")[0] in HEAVY}
        assert heavy == set(), name


# A library whose import has side effects sweeper works around is imported in one module.
IMPORTED_ONLY_IN = {"qkeras": "sweeper.models.qk", "art": "sweeper.attacks.art_lib"}


@pytest.mark.parametrize("library, home", sorted(IMPORTED_ONLY_IN.items()))
def test_qkeras_and_art_are_imported_only_through_their_wrappers(library, home):
    importers = {name for name in MODULES if any(t.split(".")[0] == library for t in imports(name))}
    assert importers == {home}


@pytest.mark.parametrize("folder", sorted({path.parent.relative_to(ROOT).as_posix() for path in MODULES.values()}))
def test_each_package_opens_with_a_docstring_of_what_it_owns(folder):
    init = ROOT / folder / "__init__.py"  # a folder of modules without one is no package
    docstring = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
    assert docstring and len(docstring.split()) >= 8, folder


def test_the_readme_layout_names_every_package_and_top_level_module():
    """The README's tree of the package is the package: each folder and top-level module
    once, nothing that is not there."""
    import re

    tree = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    named = re.findall(r"(?<![\w.])([a-z_]+(?:/|\.py))(?=\s)", tree.split("sweeper/", 1)[1])
    present = [f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()] + \
              [p.name for p in PACKAGE.glob("*.py") if not p.name.startswith("__")]
    assert sorted(named) == sorted(present)


# Libraries collecting the suite never imports: test files import them inside tests and
# fixtures, or through conftest.lazy_module (collection took 22-27 s with them, ~10 s without).
NOT_AT_COLLECTION = ("tensorflow", "tf_keras", "keras", "qkeras", "ray", "art")


def test_collecting_the_suite_imports_no_tensorflow_ray_or_art():
    import json
    import os
    import subprocess
    import sys

    script = ("import json, sys, pytest\n"
              "code = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', 'tests'])\n"
              f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({list(NOT_AT_COLLECTION)!r}))\n"
              "print(json.dumps([int(code), heavy]))")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    code, heavy = json.loads(run.stdout.strip().splitlines()[-1])
    assert code == 0, run.stdout[-2000:]
    assert heavy == [], f"collection imported {heavy}: import them inside the tests (conftest.lazy_module)"
