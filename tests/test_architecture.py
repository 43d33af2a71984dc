"""Data flows one way through the packages (ARCHITECTURE.md): an import against the flow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
# Lowest first. A module may import its own package and the packages of lower layers only.
LAYERS: list[set[str]] = [
    {"errors", "results"},
    {"parallel", "weights"},
    {"zoo"},
    {"cluster"},
    {"formats"},
    {"faces"},
    {"manifest"},
    {"ingest"},
    {"labeled", "crawl"},
    {"train"},
    {"embed"},
    {"curate"},
    {"labeled_audit"},
    {"evaluate"},
    {"browse"},
    {"governance"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def unit(module: Path, package: Path = PACKAGE) -> str:
    """The package (or top-level module) a source file belongs to."""
    return module.relative_to(package).parts[0].removesuffix(".py")


def imported_units(module: Path) -> set[str]:
    """Workbench units a file imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "workbench" and len(parts) > 1:
                found.add(parts[1])
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for module in sorted(package.rglob("*.py")):
        if module.parent == package and module.name == "__init__.py":
            continue
        here = unit(module, package)
        for target in sorted(imported_units(module) - {here}):
            if LAYER_OF[target] >= LAYER_OF[here]:
                problems.append(f"{module.relative_to(package.parent)} imports workbench.{target}")
    return problems


def test_every_package_has_a_layer():
    units = {unit(m) for m in PACKAGE.rglob("*.py") if m != PACKAGE / "__init__.py"}
    assert units == set(LAYER_OF), "add new packages to LAYERS and to ARCHITECTURE.md"


def test_imports_follow_the_data_flow():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path):
    fake = tmp_path / "workbench"
    (fake / "formats").mkdir(parents=True)
    (fake / "manifest").mkdir()
    (fake / "formats" / "bad.py").write_text("def f():\n    from workbench.manifest.query import one\n")
    (fake / "manifest" / "good.py").write_text("from workbench.formats.files import display_path\n")
    assert violations(fake) == ["workbench/formats/bad.py imports workbench.manifest"]
