"""The package's imports follow the layer order written in docs/design.md ("Layering"): no import against the
order, no cycle, no private name imported across modules. Imports inside functions count as well."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def written_layers() -> list[list[str]]:
    text = (ROOT / "docs" / "design.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no ```layers block"
    return [line.split() for line in block.group(1).strip().splitlines()]


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "actdistill").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name, line) for every actdistill import in the file."""
    out = []
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            if not mod.startswith("actdistill"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.append((sub, "", node.lineno) if sub in known else (mod, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("actdistill")]
    return out


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    best, best_len = None, -1
    for i, entries in enumerate(layers):
        for e in entries:
            hit = module == e or (e != "actdistill" and module.startswith(e + "."))
            if hit and len(e) > best_len:
                best, best_len = i, len(e)
    return best


def test_every_module_has_a_layer():
    layers = written_layers()
    missing = [m for m in modules() if layer_of(m, layers) is None]
    assert not missing, f"modules not placed in docs/design.md's layers: {missing}"


def test_no_import_goes_against_the_written_order_or_takes_a_private_name():
    layers, known = written_layers(), modules()
    faults = []
    for name, path in known.items():
        here = layer_of(name, layers)
        for target, attr, line in imports(path, name, known):
            there = layer_of(target, layers)
            if there is not None and here is not None and there > here:
                faults.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {there}) from layer {here}")
            if attr.startswith("_") and not attr.startswith("__") and target != name:
                faults.append(f"{path.relative_to(ROOT)}:{line} imports the private name {target}.{attr}")
    assert not faults, "\n".join(faults)


def test_no_import_cycle():
    known = modules()
    graph = {name: {t for t, _, _ in imports(path, name, known) if t in known and t != name} for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack + [node, nxt]
            if nxt not in state:
                found = visit(nxt, stack + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The checker is not blind: an import inside a function, against the order, is found."""
    src = tmp_path / "actdistill" / "models"
    src.mkdir(parents=True)
    bad = src / "x.py"
    bad.write_text("def f():\n    from actdistill.cli import main\n    from actdistill.pipeline import _secret\n")
    found = imports(bad, "actdistill.models.x", {"actdistill.cli": bad})
    assert ("actdistill.cli", "main", 2) in found and ("actdistill.pipeline", "_secret", 3) in found
    layers = written_layers()
    assert layer_of("actdistill.cli", layers) > layer_of("actdistill.models.x", layers)


def test_no_function_is_over_80_lines_unless_its_module_says_why():
    too_long = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree) or ""
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80 and not re.search(rf"`{node.name}` is longer than the package's 80-line rule", doc):
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, "functions over 80 lines, not explained in their module's docstring:\n" + "\n".join(too_long)
