"""Every error a user can cause is one line on stderr with its exit code, never a traceback.

Driven through the real CLI: typer's runner for most cases, real processes where the machine
must misbehave for real: a home on a read-only bind mount, and a home on a tiny tmpfs that fills
up, each in a private user and mount namespace (`unshare -Urm`), so they bind root too and leave
nothing mounted behind.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

import exfilwatch
from exfilwatch.cli.main import app
from exfilwatch.config import memory_bytes, parse_settings
from exfilwatch.detections.schema import default_detections_dir
from tests.conftest import Flow, write_conn_log
from tests.test_risk_cli import CONFIG as RISK_CONFIG, NET_A, NET_B, RUN as RISK_RUN

SRC = str(Path(exfilwatch.__file__).resolve().parents[1])
CLI = [sys.executable, "-c", "from exfilwatch.cli import app; app()"]


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result, code: int, *named: str) -> str:
    """The command failed with `code` and said so in one line on stderr naming each of `named`."""
    stderr = result.stderr
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for name in named:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def conn_log(path: Path, lines: int = 200) -> Path:
    return write_conn_log(path, [Flow(ts=1790000000 + i * 60, orig=f"10.0.0.{i % 50}", resp="10.1.0.1",
                                      orig_bytes=100 + i, resp_bytes=1000 * i, uid=f"C{i:017d}") for i in range(lines)])


def png_bytes() -> bytes:
    """A real 8x8 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(i * 8, i * 8 + 8)) for i in range(8)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


# --- configuration and home (exit 2) ----------------------------------------------------------

def test_config_that_is_a_folder(tmp_path):
    folder = tmp_path / "conf.d"
    folder.mkdir()
    line = assert_one_line(cli("--home", tmp_path / "h", "--config", folder, "findings"), 2, folder)
    assert "is a folder" in line


def test_config_that_is_a_binary_file(tmp_path):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(png_bytes())
    line = assert_one_line(cli("--home", tmp_path / "h", "--config", binary, "findings"), 2, binary)
    assert "not a text config file" in line


def test_config_with_broken_yaml_is_one_line_with_its_position(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("timezone: UTC\nassets: [1\nthreads: 2\n")
    line = assert_one_line(cli("--home", tmp_path, "findings"), 2, config, "not valid YAML")
    assert "line 3" in line


def test_home_that_cannot_be_created(tmp_path):
    regular = tmp_path / "a-file"
    regular.write_text("")
    for command in (["findings"], ["ingest", conn_log(tmp_path / "conn.log")]):
        line = assert_one_line(cli("--home", regular / "home", *command), 2, regular / "home")
        assert "cannot be created" in line


def test_memory_limit_is_validated_when_the_config_is_read(tmp_path):
    (tmp_path / "config.yaml").write_text("memory_limit: lots\n")
    line = assert_one_line(cli("--home", tmp_path, "findings"), 2, tmp_path / "config.yaml", "'memory_limit'")
    assert "'lots'" in line


@pytest.mark.parametrize("size, expected", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GB", 1.5 * 10**9),
                                            ("1MB", 10**6), ("2gb", 2 * 10**9), ("100KiB", 102400), ("80%", None)])
def test_memory_limit_accepts_what_duckdb_reads(size, expected):
    settings = parse_settings({"memory_limit": size}, "config.yaml")
    assert settings.memory_limit == size
    if expected is not None:  # the size Spark's driver is given for the same setting
        assert memory_bytes(size) == expected
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{size}'")  # DuckDB reads it too


@pytest.mark.parametrize("detections, key, hint", [
    ({"em_fnumm": {"threshold": 3}}, "detections.em_fnumm", "did you mean em_fnum?"),
    ({"em_fnum": {"treshold": 3}}, "detections.em_fnum.treshold", "did you mean threshold?"),
    ({"em_fnum": {"threshold": "high"}}, "detections.em_fnum.threshold", "is not a number"),
])
def test_unknown_detection_or_parameter_in_config(tmp_path, detections, key, hint):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"detections": detections}))
    for command in (["findings"], ["run", "--now", "2026-10-01"]):
        assert_one_line(cli("--home", tmp_path, *command), 2, tmp_path / "config.yaml", f"'{key}'", hint)


# --- errors raised by the stages reach the user as one line -------------------------------------

def test_stage_errors_are_one_line(tmp_path):
    home = ["--home", tmp_path / "h"]
    log = conn_log(tmp_path / "conn.log")
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,detection_id\n1,em_fnum\n")
    cases = [
        (["run", "--now", "yesterday-ish"], 2, "yesterday-ish"),  # TimeModifierError
        (["ingest", "--source", "zeek_con", log], 2, "zeek_con"),  # UnknownFormatError
        (["detect", "--detection", NET_A, "--set", "deviation_threshold=high", "--now", "2026-10-01"], 1,
         "deviation_threshold"),  # DetectionRunError
        (["evaluate", "--labels", labels], 2, labels),  # LabelError
        (["ingest", tmp_path / "nowhere.log"], 2, tmp_path / "nowhere.log"),
        (["evaluate", "--labels", tmp_path], 1, tmp_path),  # a file the machine cannot open (a folder)
    ]
    for args, code, named in cases:
        assert_one_line(cli(*home, *args), code, named)


# --- ingest: bad files are named, the others are read (exit 1) ------------------------------------

def test_truncated_gzip(tmp_path):
    data = gzip.compress(conn_log(tmp_path / "conn.log", 2000).read_bytes())
    truncated = tmp_path / "conn.log.gz"
    truncated.write_bytes(data[: len(data) // 2])
    line = assert_one_line(cli("--home", tmp_path / "h", "ingest", "--source", "zeek_conn", truncated), 1, truncated)
    assert "truncated or damaged gzip" in line


@pytest.mark.parametrize("content", [png_bytes(), random.Random(8).randbytes(4096)], ids=["png", "random"])
def test_binary_file(tmp_path, content):
    binary = tmp_path / "capture.log"
    binary.write_bytes(content)
    for source in ([], ["--source", "zeek_conn"]):
        line = assert_one_line(cli("--home", tmp_path / "h", "ingest", *source, binary), 1, binary)
        assert "binary content" in line


def test_a_log_with_junk_after_a_good_start_is_read_and_the_junk_quarantined(tmp_path):
    log = tmp_path / "conn.log"
    write_conn_log(log, [Flow(ts=1790000000 + i, orig="10.0.0.1", resp="10.1.0.1", orig_bytes=1, resp_bytes=2)
                         for i in range(2)], close=False)
    good = log.read_bytes()
    last = good.splitlines(keepends=True)[-1]
    junk = b"\x00" * 600 + b"\n" + random.Random(9).randbytes(300).replace(b"\n", b"") + b"\n"  # as a crash leaves it
    log.write_bytes(good + junk + last)
    assert len(good) < 1024  # the junk is within the head that is judged binary or not
    result = cli("--home", tmp_path / "h", "ingest", log)
    assert result.exit_code == 0, result.output
    assert "= 3 parsed + 8 skipped + 2 quarantined" in result.stdout


def test_empty_file_is_skipped_with_a_note(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    result = cli("--home", tmp_path / "h", "ingest", empty)
    assert result.exit_code == 0, result.output
    assert f"{empty}: empty file, skipped" in result.output.replace("\n", "")


def test_a_folder_is_read_past_its_bad_files(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    conn_log(folder / "a-conn.log", 300)
    (folder / "b-image.png").write_bytes(png_bytes())
    conn_log(folder / "c-conn.log", 100)
    (folder / "d-empty.log").write_text("")
    data = gzip.compress((folder / "c-conn.log").read_bytes())
    (folder / "e-conn.log.gz").write_bytes(data[:-20])
    home = tmp_path / "h"
    result = cli("--home", home, "ingest", folder)
    line = assert_one_line(result, 1, "2 of 5 files could not be read", folder / "b-image.png", folder / "e-conn.log.gz")
    assert "a-conn.log" not in line and "c-conn.log;" not in line
    assert "read 418 lines = 400 parsed + 18 skipped + 0 quarantined; 400 events written" in result.stdout
    assert "empty file, skipped" in result.stdout
    # what was read is kept: a second ingest reads nothing new from the good files
    again = cli("--home", home, "ingest", folder / "a-conn.log", folder / "c-conn.log")
    assert again.exit_code == 0 and "0 events written" in again.stdout


# --- DuckDB out of memory (exit 1) -------------------------------------------------------------

def test_out_of_memory_says_what_to_raise(tmp_path):
    home = tmp_path / "h"
    assert cli("--home", home, "ingest", conn_log(tmp_path / "conn.log", 3000)).exit_code == 0
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("memory_limit: 1MB\nthreads: 1\n")
    line = assert_one_line(cli("--home", home, "--config", tiny, "run", "--now", "2026-10-03"), 1,
                           "out of memory", "memory_limit", tiny, "1MB")
    assert "raise" in line


# --- the machine: a read-only home, a full disk (real mounts in a private namespace) -----------

def _namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_available(),
                                      reason="needs `unshare -Urm` (user and mount namespaces) for real mounts")


def in_namespace(mount: str, home: Path, *args) -> subprocess.CompletedProcess:
    """The CLI with `home` re-mounted by `mount` (a shell snippet using $H) in a private namespace."""
    script = f'H="$1"; shift; {mount} || exit 99; exec "$@"'
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(home), *CLI, "--home", str(home),
                             *map(str, args)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC})
    assert result.returncode != 99, result.stderr
    return result


READ_ONLY = 'mount --bind "$H" "$H" && mount -o remount,bind,ro "$H"'


@needs_namespaces
def test_read_only_home_reads_and_refuses_writes_in_one_line(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump(RISK_CONFIG))
    logs = [default_detections_dir() / d / "data" / "positive_conn.log" for d in (NET_A, NET_B)]
    bad = tmp_path / "bad.log"
    bad.write_text(logs[0].read_text() + "not a zeek line\n")
    assert cli("--home", home, "ingest", *logs, "--source", "zeek_conn").exit_code == 0
    assert cli("--home", home, "ingest", bad).exit_code == 0
    assert cli("--home", home, *RISK_RUN).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in home.rglob("*")}

    reads = {("findings",): "10.20.0.66", ("incidents",): "mallory", ("entity", "mallory"): "INCIDENT",
             ("quarantine",): "not a zeek line", ("suppress", "list", "--now", "2026-11-01"): "suppressions",
             ("detections", "list"): "em_fnum"}
    for args, shown in reads.items():
        result = in_namespace(READ_ONLY, home, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert shown in result.stdout, (args, result.stdout)

    writes = [("ingest", logs[0]), ("run", "--now", "2026-11-02"), ("sessions", "--now", "2026-11-02"),
              ("suppress", "add", "--entity", "x", "--owner", "o", "--reason", "r", "--expires", "never")]
    for args in writes:
        result = in_namespace(READ_ONLY, home, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert str(home) in line and "cannot write" in line, line
    assert {p: p.stat().st_mtime_ns for p in home.rglob("*")} == before


@needs_namespaces
@pytest.mark.parametrize("size, lines, written", [("64k", 200, "state.sqlite"), ("1m", 100_000, ".parquet")],
                         ids=["state store", "lake"])
def test_full_disk_names_the_path_being_written(tmp_path, size, lines, written):
    log = conn_log(tmp_path / "conn.log", lines)
    home = tmp_path / "h"
    home.mkdir()
    result = in_namespace(f'mount -t tmpfs -o size={size} tmpfs "$H"', home, "ingest", log)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "no space left on the device" in line and str(home) in line and written in line, line
