"""The architecture, as the tree shows it, kept true by the imports.

Layers, lowest first (README "Architecture"); a module imports only from lower layers
or from its own package, so data and dependencies flow one way:

0. ``schemas``           config, events, records, the dataset layout, errors
1. ``streams.common``    logs, metrics, storage
2. ``streams.kafka``     clients, topics, embedded brokers, broker quirks, probe
3. ``streams.join`` | ``streams.dataset``   the join worker | the dataset sink (siblings)
4. ``jobs``              retraining; of ``streams`` it uses only the plumbing (1-2)
5. ``streams.pipeline``  ``dlabel worker``: join and sink together
6. ``streams.dev``       simulator, demo, tail, synthetic windows
7. ``streams.status``    the operator's screen
8. ``streams.cli``       the command line

Also: no import cycles between modules (lazy and TYPE_CHECKING imports count), and no
private (underscore) name imported from another module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "streams", "jobs")

LAYERS = {
    "schemas": 0,
    "streams.common": 1,
    "streams.kafka": 2,
    "streams.join": 3,
    "streams.dataset": 3,
    "jobs": 4,
    "streams.pipeline": 5,
    "streams.dev": 6,
    "streams.status": 7,
    "streams.cli": 8,
}
#: what ``jobs`` may import from ``streams``: the plumbing, one layer of it
JOBS_MAY_USE = ("streams.common", "streams.kafka")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of our packages in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    out.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            if submodules:  # ``from streams.kafka import clients``
                out.extend((node.lineno, m, []) for m in submodules)
            else:
                out.append((node.lineno, node.module, names))
    return out


def _component(module: str) -> str:
    """The layer entry a module belongs to (its longest matching prefix)."""
    best = ""
    for name in LAYERS:
        if (module == name or module.startswith(name + ".")) and len(name) > len(best):
            best = name
    if not best:
        raise AssertionError(f"module {module} is in no layer: add its package to LAYERS "
                             f"in tests/test_architecture.py and to the README")
    return best


def _graph() -> dict[str, set[str]]:
    return {m: {target for _, target, _ in _imports(p) if target in MODULES and target != m}
            for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module in PACKAGES:  # the top-level package markers themselves
            continue
        _component(module)


def _layer_violations() -> list[str]:
    bad = []
    for module, path in MODULES.items():
        if module in PACKAGES:
            continue
        mine = _component(module)
        for line, target, _ in _imports(path):
            if target in PACKAGES:
                bad.append(f"{module}:{line} imports the package {target} itself")
                continue
            theirs = _component(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{module}:{line} ({mine}, layer {LAYERS[mine]}) imports "
                           f"{target} ({theirs}, layer {LAYERS[theirs]})")
            elif mine == "jobs" and theirs.startswith("streams") and theirs not in JOBS_MAY_USE:
                bad.append(f"{module}:{line}: jobs may use only {JOBS_MAY_USE} of streams, "
                           f"not {target}")
    return bad


def test_imports_only_go_down_the_layers():
    bad = _layer_violations()
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_imported_across_modules():
    bad = [f"{module}:{line} imports {name} from {target}"
           for module, path in MODULES.items()
           for line, target, names in _imports(path)
           for name in names if name.startswith("_") and name != "__version__"]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_the_layer_check_can_fail(monkeypatch):
    # a dataset module importing the join (siblings) must be reported
    path = MODULES["streams.dataset.sink"]
    real = _imports

    def with_a_bad_import(p):
        found = real(p)
        return found + [(1, "streams.join.batch_loop", [])] if p == path else found

    monkeypatch.setitem(globals(), "_imports", with_a_bad_import)
    assert any("streams.dataset.sink:1" in line for line in _layer_violations())


def test_tests_and_benchmarks_import_no_private_names():
    """The same rule for the tests and benchmarks: what they share is public."""
    bad = []
    for path in sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                    node.module.split(".")[0] in (*PACKAGES, "tests"):
                bad.extend(f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from "
                           f"{node.module}" for a in node.names
                           if a.name.startswith("_") and a.name != "__version__")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)
