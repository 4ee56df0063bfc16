"""A home keeps its data wherever it is: moved, copied, reached by a relative path or a symlink, or
made by the release before schema versions; stages' tables are migrated in order."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import duckdb
import pytest

from exfilwatch.config import Home
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import STAGES, open_state
from exfilwatch.state import StageSchema, StateStore

from .conftest import Flow, settings_for, write_conn_log

SETTINGS = settings_for()
PREVIOUS_RELEASE_SQL = Path(__file__).parent / "fixtures" / "previous_release" / "state_schema.sql"


def home_at(root: Path) -> Home:
    return Home(root=root, config_path=root / "config.yaml")


def conn_log(folder: Path, name: str, start: float, count: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_conn_log(folder / name, [Flow(start + i, f"10.20.0.{i + 1}", "10.10.0.5", 100 + i, 1000,
                                               uid=f"C{name}{i}") for i in range(count)])


def events_in(home: Home) -> int:
    state = open_state(home)
    try:
        files = state.lake_files("network_traffic")
    finally:
        state.close()
    return duckdb.sql(f"SELECT count(*) FROM read_parquet({files!r})").fetchall()[0][0] if files else 0


def lake_files_on_disk(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in (root / "lake").rglob("*.parquet")}


def test_a_moved_home_keeps_and_uses_its_lake(tmp_path):
    logs = tmp_path / "logs"
    first = home_at(tmp_path / "first")
    ingest_paths([conn_log(logs, "a.log", 1761955200.0)], first, SETTINGS)
    moved = home_at(tmp_path / "elsewhere" / "moved")
    moved.root.parent.mkdir()
    shutil.move(first.root, moved.root)

    ingest_paths([conn_log(logs, "b.log", 1762041600.0)], moved, SETTINGS)

    assert events_in(moved) == 10
    assert len(lake_files_on_disk(moved.root)) == 2
    state = open_state(moved)
    assert all(not os.path.isabs(r["path"]) for r in state.query("SELECT path FROM batch_files"))


def test_a_copied_home_leaves_the_original_untouched(tmp_path):
    logs = tmp_path / "logs"
    original = home_at(tmp_path / "original")
    ingest_paths([conn_log(logs, "a.log", 1761955200.0)], original, SETTINGS)
    before = lake_files_on_disk(original.root)
    copy = home_at(tmp_path / "copy")
    subprocess.run(["cp", "-a", str(original.root), str(copy.root)], check=True)

    ingest_paths([conn_log(logs, "b.log", 1762041600.0)], copy, SETTINGS)

    assert lake_files_on_disk(original.root) == before
    assert events_in(original) == 5
    assert events_in(copy) == 10
    state = open_state(copy)
    assert all(path.startswith(str(copy.root)) for path in state.lake_files("network_traffic"))


def test_a_home_reached_by_a_relative_path_or_a_symlink_keeps_its_lake(tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    monkeypatch.chdir(tmp_path)
    relative = home_at(Path("relhome"))
    ingest_paths([conn_log(logs, "a.log", 1761955200.0)], relative, SETTINGS)
    (tmp_path / "link").symlink_to(tmp_path / "relhome")
    for spelling in (home_at(tmp_path / "relhome"), home_at(tmp_path / "link"), home_at(Path("./link/../relhome"))):
        ingest_paths([conn_log(logs, f"{len(lake_files_on_disk(tmp_path / 'relhome'))}.log", 1762041600.0)],
                     spelling, SETTINGS)
    assert len(lake_files_on_disk(tmp_path / "relhome")) == 4
    assert events_in(relative) == 20
    assert events_in(home_at(tmp_path / "link")) == 20


def _previous_release_home(root: Path, stored: str | None = None) -> Path:
    """A home as the release before schema versions left it: its SQL, its lake paths as it wrote
    them (absolute, or `stored`: relative to the working folder of a home given by a relative path)."""
    (root / "lake" / "network_traffic" / "day=2025-11-01").mkdir(parents=True)
    parquet = root / "lake" / "network_traffic" / "day=2025-11-01" / "zeek_conn-old-1_0.parquet"
    state = sqlite3.connect(root / "state.sqlite")
    state.executescript(PREVIOUS_RELEASE_SQL.read_text())
    logs = root.parent / "old-logs"
    ingest_paths([conn_log(logs, "old.log", 1761955200.0, count=3)], home_at(root.parent / "scratch"), SETTINGS)
    [scratch_file] = (root.parent / "scratch" / "lake").rglob("*.parquet")
    shutil.copy(scratch_file, parquet)
    state.execute("INSERT INTO batches VALUES ('zeek_conn-old-1', 'network_traffic', 'zeek_conn', 'old.log', 1, 12, "
                  "12, 3, 0, 9)")
    stored = stored or str(parquet.resolve())
    state.execute("INSERT INTO batch_files VALUES (?, 'zeek_conn-old-1', 'network_traffic', '2025-11-01', 3)", (stored,))
    state.execute("INSERT INTO derived_inputs VALUES ('user_sessions', ?)", (stored,))
    state.commit()
    state.close()
    return parquet


@pytest.mark.parametrize("stored", [None, "old/lake/network_traffic/day=2025-11-01/zeek_conn-old-1_0.parquet"],
                         ids=["absolute", "relative to the working folder"])
def test_a_home_from_the_previous_release_opens_migrates_and_keeps_its_lake(tmp_path, stored):
    home = home_at(tmp_path / "old")
    parquet = _previous_release_home(home.root, stored)

    state = open_state(home)
    assert state.versions() == {s.stage: s.version for s in STAGES}
    assert [r["path"] for r in state.query("SELECT path FROM batch_files")] == [
        "lake/network_traffic/day=2025-11-01/zeek_conn-old-1_0.parquet"]
    assert [r["path"] for r in state.query("SELECT path FROM derived_inputs")] == [
        "lake/network_traffic/day=2025-11-01/zeek_conn-old-1_0.parquet"]
    assert state.lake_files("network_traffic") == [str(parquet)]
    state.close()

    ingest_paths([conn_log(tmp_path / "logs", "new.log", 1762041600.0)], home, SETTINGS)
    assert parquet.exists()
    assert events_in(home) == 8


def test_a_copy_of_a_previous_release_home_uses_its_own_files(tmp_path):
    original = home_at(tmp_path / "old")
    _previous_release_home(original.root)
    before = lake_files_on_disk(original.root)
    copy = home_at(tmp_path / "copy")
    subprocess.run(["cp", "-a", str(original.root), str(copy.root)], check=True)

    ingest_paths([conn_log(tmp_path / "logs", "new.log", 1762041600.0)], copy, SETTINGS)

    assert lake_files_on_disk(original.root) == before
    assert events_in(copy) == 8
    state = open_state(copy)
    assert all(path.startswith(str(copy.root)) for path in state.lake_files("network_traffic"))


def test_migrations_run_in_order_once_and_in_one_transaction(tmp_path):
    applied: list[str] = []

    def second(db, root):
        applied.append(f"second at {root.name}")
        db.execute("INSERT INTO t VALUES (2)")

    def failing(db, _root):
        db.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("migration 3 failed")

    path = tmp_path / "home" / "state.sqlite"
    StateStore(path, (StageSchema("one", ("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);", second)),)).close()
    again = StateStore(path, (StageSchema("one", ("CREATE TABLE t (v INTEGER)", second)),))
    assert applied == ["second at home"]
    assert again.versions() == {"one": 2}
    with pytest.raises(RuntimeError, match="migration 3 failed"):
        again.migrate((StageSchema("one", ("", second, failing)), StageSchema("two", ("CREATE TABLE u (v)",))))
    assert [r["v"] for r in again.query("SELECT v FROM t")] == [1, 2]
    assert again.versions() == {"one": 2}
    assert not again.query("SELECT 1 FROM sqlite_master WHERE name = 'u'")
