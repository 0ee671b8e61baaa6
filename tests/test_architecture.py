"""The layers of ARCHITECTURE.md, checked on the import graph of tfcompress/ as the source states it.

Every ``import`` and ``from ... import`` counts, at module level and inside functions, absolute and
relative: a function-local import is an edge like any other, it only runs later. The graph is read
with `ast` (nothing is imported, so no TensorFlow), and the checks fail on an import against the
layer rule and on any import cycle, naming the modules.
"""

import ast
import pathlib

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / "tfcompress"
PACKAGE = "tfcompress"

TECHNIQUES = ("pruning", "quantization", "clustering", "lowrank", "distillation")
# The top-level façade: what users import. It may import anything; nothing below imports it.
FACADE = {"tfcompress", "tfcompress.__main__", "tfcompress.callbacks", "tfcompress.deprecated"}
# layer: (the layers it may import, the rule in words)
RULES = {
    "core": ({"core"}, "core imports nothing else from tfcompress"),
    "technique": ({"core", "technique"}, "a technique package imports core and other techniques only"),
    "evaluation": ({"core", "evaluation"}, "evaluation imports only core"),
    "export": ({"core", "technique", "evaluation", "export"}, "export imports core, techniques and evaluation"),
    "pipeline": ({"core", "technique", "evaluation", "export", "pipeline"},
                 "pipeline imports any layer below it, not the façade"),
    "facade": ({"core", "technique", "evaluation", "export", "pipeline", "facade"}, "the façade imports anything"),
}
# Function-local tfcompress imports are kept only where they must be; each says why.
LOCAL_IMPORTS = {
    "tfcompress.evaluation.profiling": "it runs as a plain file in child processes that must not import TensorFlow "
                                       "(every tfcompress module imports the package, hence TensorFlow)",
}


def layer_of(module):
    """The layer of a ``tfcompress`` module name, or None for a module no rule covers."""
    if module in FACADE:
        return "facade"
    part = module.split(".")[1]
    if part in TECHNIQUES:
        return "technique"
    return part if part in ("core", "evaluation", "export", "pipeline") else None


def package_modules(root=PACKAGE_DIR):
    """``{module name: (path, is a package __init__)}`` of every ``.py`` file under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imports_in(source, module, is_package, known):
    """``[(imported module, line, inside a function)]`` for every tfcompress import in ``source``.

    ``from a import b`` is an edge to the module ``a.b`` when that is a module of ``known``, else to ``a``;
    any other name is resolved to the longest prefix that is a known module.
    """
    found = []

    def target(name):
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((target(a.name), child.lineno, local) for a in child.names
                             if a.name == PACKAGE or a.name.startswith(PACKAGE + "."))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    source_module = ".".join(base + ([child.module] if child.module else []))
                else:
                    source_module = child.module or ""
                if source_module == PACKAGE or source_module.startswith(PACKAGE + "."):
                    for alias in child.names:
                        name = f"{source_module}.{alias.name}"
                        found.append((name if name in known else target(source_module), child.lineno, local))
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def import_graph(root=PACKAGE_DIR):
    """``{module: {imported module: [(line, inside a function)]}}`` of the package under ``root``."""
    modules = package_modules(root)
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = graph.setdefault(module, {})
        for imported, line, local in imports_in(path.read_text(encoding="utf-8"), module, is_package, modules):
            if imported and imported != module:
                edges.setdefault(imported, []).append((line, local))
    return graph


def layer_violations(graph):
    """One message per import against the layer rule, naming both modules and the rule."""
    problems = []
    for module, edges in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            problems.append(f"{module}: in no layer; put it in core/, a technique package, evaluation/, export/ or "
                            "pipeline/ (or add it to the façade in tests/test_architecture.py and ARCHITECTURE.md)")
            continue
        allowed, rule = RULES[layer]
        for imported, places in sorted(edges.items()):
            imported_layer = layer_of(imported)
            if imported_layer not in allowed:
                lines = ", ".join(f"line {line}{' (in a function)' if local else ''}" for line, local in places)
                problems.append(f"{module} ({layer}) imports {imported} ({imported_layer}) at {lines}: {rule}")
    return problems


def cycles(graph):
    """Every import cycle as a list of modules ``[a, b, ..., a]``, one per strongly connected component."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        while True:  # follow edges inside the component until the path closes
            following = sorted(n for n in graph[path[-1]] if n in component)
            step = start if start in following and len(path) > 1 else next(
                (n for n in following if n not in seen), following[0])
            path.append(step)
            if step in seen:
                found.append(path[path.index(step):])
                break
            seen.add(step)
    return found


def unneeded_local_imports(graph):
    """Function-local tfcompress imports outside `LOCAL_IMPORTS`: each should be a module-level import."""
    return [f"{module} imports {imported} inside a function at line {line}; import it at module level (a local "
            "import hides an edge, and only a cycle or a heavy optional package would need one)"
            for module, edges in sorted(graph.items()) if module not in LOCAL_IMPORTS
            for imported, places in sorted(edges.items()) for line, local in places if local]


GRAPH = import_graph()


def test_every_module_is_in_a_layer_and_imports_follow_the_rule():
    assert len(GRAPH) > 40, sorted(GRAPH)  # the whole package was read
    problems = layer_violations(GRAPH)
    assert not problems, "imports against the layer rule (see ARCHITECTURE.md):\n" + "\n".join(problems)


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_function_local_imports_only_where_needed():
    problems = unneeded_local_imports(GRAPH)
    assert not problems, "\n".join(problems)


# The checker checks: an upward import, a cycle and a local import written into synthetic sources are reported.

SYNTHETIC = {
    "tfcompress": "from tfcompress.core import graph\n",
    "tfcompress.core": "",
    "tfcompress.core.graph": "def f():\n    from tfcompress.evaluation.litert import predict\n",
    "tfcompress.core.tables": "",
    "tfcompress.evaluation": "",
    "tfcompress.evaluation.litert": "from ..core import tables\nfrom . import reports\n",
    "tfcompress.evaluation.reports": "import tfcompress.evaluation.litert\n",
    "tfcompress.pruning": "from tfcompress.pruning.channels import shrink\n",
    "tfcompress.pruning.channels": "import keras\nfrom tfcompress import pipeline\n",
    "tfcompress.pipeline": "",
}


@pytest.fixture
def synthetic_package(tmp_path):
    root = tmp_path / "tfcompress"
    for module, source in SYNTHETIC.items():
        parts = module.split(".")[1:]
        is_package = not parts or any(other.startswith(module + ".") for other in SYNTHETIC)
        path = root.joinpath(*parts, "__init__.py") if is_package else root.joinpath(*parts[:-1], parts[-1] + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return import_graph(root)


def test_the_checker_reports_an_upward_import_with_both_modules_and_the_rule(synthetic_package):
    problems = layer_violations(synthetic_package)
    assert ("tfcompress.core.graph (core) imports tfcompress.evaluation.litert (evaluation) at line 2 (in a "
            "function): core imports nothing else from tfcompress") in problems
    assert any(p.startswith("tfcompress.pruning.channels (technique) imports tfcompress.pipeline (pipeline)")
               and "a technique package imports core and other techniques only" in p for p in problems)
    assert len(problems) == 2, problems  # relative imports resolve: litert -> core.tables, litert -> reports are fine


def test_the_checker_reports_a_cycle_and_a_local_import(synthetic_package):
    assert cycles(synthetic_package) == [["tfcompress.evaluation.litert", "tfcompress.evaluation.reports",
                                          "tfcompress.evaluation.litert"]]
    assert cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [["a", "b", "c", "a"]]
    assert [p.split(" inside")[0] for p in unneeded_local_imports(synthetic_package)] == [
        "tfcompress.core.graph imports tfcompress.evaluation.litert"]
