"""The wheel built from this repository, installed as a user installs it, works without the repository.

The wheel is built from a copy of the sources (so a test run never writes into the checkout),
installed with its dependencies into a new virtual environment through pip and the configured
package index (pinned by constraints.txt, so the versions are the tested ones), and the
installed `exfilwatch` is run from a folder outside the repository. Also: every declared
dependency is used, and the package metadata carries the licence.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from exfilwatch.detections.schema import default_detections_dir, detection_files, load_detections

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SHIPPED = load_detections()


def _run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Nothing from this checkout or its virtual environment may leak into the installed program.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("build")
    tree = work / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", work / "dist", tree], cwd=work)
    (built,) = (work / "dist").glob("exfilwatch-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The bin folder of a new virtual environment holding the wheel and its dependencies, and nothing else."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--clear", "--without-pip", venv], cwd=venv)
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet",
          "--constraint", ROOT / "constraints.txt", wheel], cwd=venv)
    return venv / "bin"


def test_the_wheel_holds_every_shipped_detection_with_its_test_data_and_the_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = default_detections_dir()
    for path in detection_files(shipped):
        assert f"exfilwatch/content/detections/{path.relative_to(shipped).as_posix()}" in names
    for detection in SHIPPED.values():
        for test in detection.tests:
            for data in test.data:
                assert f"exfilwatch/content/detections/{detection.id}/{data.file}" in names
    version = wheel.name.split("-")[1]
    metadata = zipfile.ZipFile(wheel).read(f"exfilwatch-{version}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    licence = zipfile.ZipFile(wheel).read(f"exfilwatch-{version}.dist-info/licenses/LICENSE").decode()
    assert licence == (ROOT / "LICENSE").read_text() and "Apache License\n" in licence and "Version 2.0" in licence


def test_the_installed_command_lists_and_runs_the_shipped_detections(installed, wheel, tmp_path):
    exfilwatch = installed / "exfilwatch"
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    where = _run([installed / "python", "-c", "import exfilwatch; print(exfilwatch.__file__)"], cwd=outside)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent)  # the installed copy, not this checkout

    assert _run([exfilwatch, "--version"], cwd=outside).stdout == f"exfilwatch {wheel.name.split('-')[1]}\n"

    listed = _run([exfilwatch, "detections", "list", "--format", "jsonl"], cwd=outside)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["id"] for r in rows} == set(SHIPPED) and len(SHIPPED) == 10
    assert all(Path(r["folder"]).is_relative_to(installed.parent) for r in rows)

    # As a user runs it: ingest a log into a home, run every detection on its schedule, read the finding.
    # (`exfilwatch test` runs the same pipeline on the detections' own data; test_the_wheel_holds_... checks that data ships.)
    home = outside / "home"
    home.mkdir()
    (home / "config.yaml").write_text("timezone: America/New_York\nassets: [{cidr: 10.10.0.0/28, category: email_server}]\n")
    base = "hosts_receiving_high_volume_of_network_traffic_from_email_server"
    log = SHIPPED[base].folder / "data" / "positive_conn.log"
    _run([exfilwatch, "--home", home, "ingest", log], cwd=outside)
    ran = _run([exfilwatch, "--home", home, "run", "--now", "2026-10-31T23:00:00-04:00",
                "--since", "2026-10-31T00:00:00-04:00"], cwd=outside)
    for detection in SHIPPED.values():
        if detection.type != "correlation":  # those run in the risk step, which the run reports
            assert detection.id[:20] in ran.stdout
    found = _run([exfilwatch, "--home", home, "findings", "--format", "jsonl"], cwd=outside)
    assert ("10.20.0.66", base) in {(f["entity"], f["detection_id"]) for f in map(json.loads, found.stdout.splitlines())}


def _imported_top_level_modules() -> set[str]:
    found = set()
    for path in (ROOT / "src" / "exfilwatch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


# Declared although never imported, each for a reason (see pyproject.toml).
NOT_IMPORTED_ON_PURPOSE = {
    "tzdata": "zoneinfo reads IANA zones from it where the system has none",
    "pytz": "DuckDB needs it to return TIMESTAMPTZ values to Python, and does not declare it",
}


def test_every_declared_dependency_is_used():
    imported = _imported_top_level_modules()
    providers = packages_distributions()  # top-level module -> the distributions that install it
    used = {dist.lower() for module in imported for dist in providers.get(module, [])}
    declared = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]}
    assert declared - used - set(NOT_IMPORTED_ON_PURPOSE) == set()


def test_pytz_is_needed_although_never_imported():
    # The reason pytz stays a dependency: without it, DuckDB cannot return a TIMESTAMPTZ.
    script = ("import sys; sys.modules['pytz'] = None; import duckdb; "
              "duckdb.sql(\"SELECT TIMESTAMPTZ '2026-10-31 12:00:00+00'\").fetchall()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0 and "pytz" in done.stderr


def test_dependencies_are_ranges_and_the_pins_live_in_the_constraints_file():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name.lower()] = next(iter(requirement.specifier)).version
    groups = [PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"].values()]
    for text in (r for group in groups for r in group):
        requirement = Requirement(text)
        assert not any(s.operator == "==" for s in requirement.specifier), f"{text}: pin it in constraints.txt"
        assert requirement.name.lower() in pins, f"{text}: no pin in constraints.txt"
        assert requirement.specifier.contains(pins[requirement.name.lower()]), f"{text}: excludes the pinned version"
