"""Imports run one way: nothing in the package imports the CLI, and the package root imports no stage.

The full layer order is the import-linter contract in pyproject.toml (`make test` runs
`lint-imports`); this test keeps the one rule a service and a web console depend on even where
import-linter is not installed, reading every module's source (imports inside functions too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import exfilwatch

PACKAGE = Path(exfilwatch.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ("exfilwatch", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module the source imports, relative imports resolved, wherever the import statement sits."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")


def _is_cli(module: str) -> bool:
    return module == "exfilwatch.cli" or module.startswith("exfilwatch.cli.")


def test_no_module_outside_the_cli_imports_the_cli():
    modules = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "cli"]
    assert len(modules) > 40  # the walk found the package, not an empty folder
    offenders = {_module_name(p): sorted(filter(_is_cli, imports_of(p))) for p in modules}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_package_root_imports_no_stage():
    # `import exfilwatch` (for the version) must stay cheap and must not pull in DuckDB or a stage.
    assert {m for m in imports_of(PACKAGE / "__init__.py") if m.startswith("exfilwatch")} == set()


def test_the_check_sees_absolute_relative_and_nested_imports():
    source = "def f():\n    from exfilwatch.cli import app\n\nfrom .. import cli\nimport exfilwatch.cli.common\n"
    found = imported_modules(source, "exfilwatch.risk.events")
    assert {"exfilwatch.cli", "exfilwatch.cli.common", "exfilwatch.cli.app"} <= found
    assert not any(map(_is_cli, imported_modules("from exfilwatch.client import x\n", "exfilwatch.risk.events")))
