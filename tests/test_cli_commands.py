"""The command line registers each command's module only when that command runs: `COMMANDS` names
the module of every command, and a command imports no other command's stages."""

from __future__ import annotations

import importlib
import subprocess
import sys

import typer

from exfilwatch.cli.main import COMMANDS


def test_commands_name_the_module_that_registers_each():
    registered = {}
    for module in set(COMMANDS.values()):
        app = typer.Typer()
        importlib.import_module(f"exfilwatch.cli.{module}").register(app)
        names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
        registered |= {name: module for name in names + [g.name for g in app.registered_groups]}
    assert registered == COMMANDS


def test_an_ingest_imports_no_other_commands_stages(tmp_path):
    log = tmp_path / "vpn.log"
    log.write_text("<134>Mar  3 09:15:02 vpn01 PulseSecure: 2026-03-03 09:15:02 - ive - [203.0.113.5] "
                   "Default Network::jdoe(Users)[Users, VPN] - Login succeeded for jdoe/Users (session:5f3a9c01) "
                   "from 203.0.113.5 with Pulse-Secure/9.1.3 (Windows 10) Pulse/9.1.3.\n")
    code = ("import sys\nfrom exfilwatch.cli import app\ntry:\n    app()\nexcept SystemExit as exc:\n"
            "    assert not exc.code, exc.code\nprint(sorted(m for m in sys.modules if m.startswith("
            "('sqlglot', 'exfilwatch.pipeline', 'exfilwatch.service', 'exfilwatch.cli.'))))")
    done = subprocess.run([sys.executable, "-c", code, "--home", str(tmp_path / "home"), "ingest", str(log)],
                          capture_output=True, text=True, check=True)
    assert "1 events written" in done.stdout
    assert done.stdout.splitlines()[-1] == "['exfilwatch.cli.common', 'exfilwatch.cli.ingest', 'exfilwatch.cli.main']"
