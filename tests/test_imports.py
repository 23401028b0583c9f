"""Imports flow one way: run, errors <- model, data <- train <- tools (evaluate, caption, demo, analyze, sweep,
the ``python -m ovis_train`` entry point). Read from the source with ``ast``, so an import hidden inside
a function counts as much as one at the top of a module."""

import ast
from pathlib import Path

import ovis_train

PACKAGE = Path(ovis_train.__file__).parent
# part of the package -> its layer; a part may import parts of its own layer or below, never above
LAYERS = {
    "run": 0, "errors": 0,
    "model": 1, "data": 1,
    "train": 2,
    "evaluate": 3, "caption": 3, "demo": 3, "analyze": 3, "sweep": 3, "__main__": 3,
}


def part_of(module: str) -> str | None:
    """``ovis_train.train.loop`` -> ``train``; None outside the package (and for the package root)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "ovis_train" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in ``source`` (a module of ``package``),
    wherever it sits: at the top, inside functions, relative or absolute."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from ovis_train import run" imports the part "run"
            found += [(node.lineno, f"{base}.{alias.name}" if base == "ovis_train" else base) for alias in node.names]
    return found


def package_edges() -> list[tuple[str, str, str]]:
    """(importing part, imported part, "file:line") for every import between two parts of the package."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(module_name(path))
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
        for line, module in imported_modules(path.read_text(), package):
            target = part_of(module)
            if source and target and source != target:
                edges.append((source, target, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {sorted(parts - set(LAYERS))}"


def test_imports_never_go_up_a_layer():
    upward = [f"{where}: {source} imports {target}" for source, target, where in package_edges()
              if LAYERS[target] > LAYERS[source]]
    assert upward == []


def test_no_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for source, target, _ in package_edges():
        graph.setdefault(source, set()).add(target)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    assert sorted(p for p in graph if reaches(p, p)) == []


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    source = "import torch\n\ndef f():\n    from ovis_train.evaluate import x\n    from ..sweep import y\n"
    found = imported_modules(source, "ovis_train.train")
    assert found == [(1, "torch"), (4, "ovis_train.evaluate"), (5, "ovis_train.sweep")]
    assert [part_of(m) for _, m in found] == [None, "evaluate", "sweep"]
