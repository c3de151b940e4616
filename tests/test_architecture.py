"""The import contract (docs/concepts/architecture.md): every module of editguard and pytest_editguard
sits in a layer and imports only from its own layer or below, imports inside functions
included; no import cycle; nothing imports the CLI or the plugin; the library never imports
pytest. The scan is static (ast), so an import hidden in a function cannot dodge it."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("editguard", "pytest_editguard")

# (pattern, rank): the first matching pattern places a module. Ranks order the layers; a
# fractional rank orders modules inside a layer (a metric is below the gates that judge it).
LAYERS: list[tuple[str, float]] = [
    # 1 leaves
    ("editguard.stats", 1), ("editguard.sharding", 1), ("editguard.progress", 1), ("editguard.cache", 1),
    ("editguard.options", 1), ("editguard.errors", 1), ("editguard.files", 1),
    # 2 models, data, cases, tasks
    ("editguard.models", 2), ("editguard.models.*", 2), ("editguard.data", 2), ("editguard.cases", 2),
    ("editguard.tasks", 2),
    # 3 tokens/batching < metrics < gates
    ("editguard.tokens", 3.0), ("editguard.metrics", 3.1), ("editguard.metrics.*", 3.1), ("editguard.gates", 3.2),
    # 4 editors; the registry above them all (no editor imports it)
    ("editguard.editors.registry", 4.9), ("editguard.editors", 4), ("editguard.editors.*", 4),
    # 5 guard, run info, reports
    # run/: records, recorder, config at 5; opening a run (session) resolves the calibration's bounds,
    # so it sits above curation.
    ("editguard.run.session", 6.5), ("editguard.run", 5), ("editguard.run.*", 5),
    ("editguard.guard", 5), ("editguard.restore", 5), ("editguard.runinfo", 5), ("editguard.catalog", 5),
    ("editguard.report", 5), ("editguard.report.*", 5),
    # 6 curation
    ("editguard.screen", 6), ("editguard.mining", 6), ("editguard.suites", 6), ("editguard.suite_files", 6),
    ("editguard.strategies", 6), ("editguard.calibration", 6), ("editguard.tracing", 6),
    ("editguard.prepared", 6.1), ("editguard.prepare", 6.2),
    ("editguard.analysis", 6), ("editguard.evaluation", 6), ("editguard.mend_data", 6),
    # 7 the two front ends, and the package's lazy facade
    ("editguard.cli", 7), ("editguard.cli.*", 7), ("pytest_editguard", 7), ("pytest_editguard.*", 7),
    ("editguard", 7),
]
FRONT_ENDS = ("editguard.cli", "pytest_editguard")


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement anywhere in the file refers to (absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def dependency_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in imported_names(name, path):
            # `from pkg import mod` names the module; `from pkg.mod import func` names pkg.mod.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        graph[name] = deps
    return graph


def rank(module: str) -> float:
    for pattern, value in LAYERS:
        if fnmatch.fnmatchcase(module, pattern):
            return value
    raise KeyError(module)


def test_every_module_has_a_layer():
    unplaced = [m for m in module_files() if not any(fnmatch.fnmatchcase(m, p) for p, _ in LAYERS)]
    assert not unplaced, f"place these modules in LAYERS and docs/concepts/architecture.md: {unplaced}"


def test_imports_go_downward_only():
    upward = [f"{m} (layer {rank(m):g}) imports {d} (layer {rank(d):g})"
              for m, deps in dependency_graph().items() for d in sorted(deps) if rank(d) > rank(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle():
    assert find_cycles(dependency_graph()) == []


def test_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from editguard.suites import hardcf\n")
    assert "editguard.suites.hardcf" in imported_names("editguard.m", source)


def front_end(module: str) -> str | None:
    return next((f for f in FRONT_ENDS if module == f or module.startswith(f + ".")), None)


def test_nothing_imports_the_front_ends():
    offenders = [f"{m} imports {d}" for m, deps in dependency_graph().items() for d in deps
                 if front_end(d) and front_end(d) != front_end(m)]
    assert not offenders, offenders


def test_no_concrete_editor_imports_the_registry():
    offenders = [m for m, deps in dependency_graph().items()
                 if m.startswith("editguard.editors.") and m != "editguard.editors.registry"
                 and "editguard.editors.registry" in deps]
    assert not offenders, offenders


def test_the_library_never_imports_pytest():
    offenders = [m for m, path in module_files().items() if m.startswith("editguard")
                 and {"pytest", "_pytest"} & {n.split(".")[0] for n in imported_names(m, path)}]
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["editguard.editors.registry", "editguard.editors.api"])
def test_registry_and_api_load_no_editor(module):
    """The registry maps names to "module:Class" strings: importing it loads no editor."""
    graph = dependency_graph()
    concrete = {m for m in graph if m.startswith(("editguard.editors.rome", "editguard.editors.memit",
                                                  "editguard.editors.alphaedit", "editguard.editors.ft",
                                                  "editguard.editors.mend"))}
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
    assert not seen & concrete, sorted(seen & concrete)


MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in module_files().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by purpose: {long}"


def test_a_record_field_is_spelled_in_one_place():
    """The record's fields derive from one table: the update-norm field's name is written as a
    string in at most two modules (its constant, and the schema's field table at most)."""
    spelled = sorted(name for name, path in module_files().items() if '"update_norm_rel"' in path.read_text("utf-8"))
    assert len(spelled) <= 2, spelled
