"""The `exfilwatch` command line: the app, its global options, and one line per error.

Commands live in one module per group (ingest, detections, run, triage, suppress, evaluate);
each parses its arguments, calls the stages (most through `pipeline.run`) and prints. A command's
module is imported when that command runs (`COMMANDS`; all of them for `--help`): importing every
command's stages cost each `exfilwatch ingest` 0.33 CPU-s of its 0.92 of imports (the detections'
runner and sqlglot, the pipeline, the service; 7 alternated processes, load 4.5, 2026-12-04).
"""

from __future__ import annotations

import importlib
import sqlite3
from pathlib import Path
from typing import NoReturn

import duckdb
import typer
import typer.core

from exfilwatch import __version__
from exfilwatch.cli.common import Context, errors
from exfilwatch.config import resolve_home
from exfilwatch.errors import ExfilwatchError, from_environment
from exfilwatch.homelock import DEFAULT_TIMEOUT
from exfilwatch.outputs.formats import terminal_safe


# The module (in exfilwatch.cli) that registers each command; tests/test_cli_commands.py checks it.
COMMANDS = {
    "ingest": "ingest", "quarantine": "ingest", "sources": "ingest",
    "detections": "detections", "test": "detections",
    "detect": "run", "risk": "run", "run": "run", "sessions": "run",
    "entity": "triage", "findings": "triage", "incident": "triage", "incidents": "triage",
    "suppress": "suppress",
    "backtest": "evaluate", "demo": "evaluate", "evaluate": "evaluate", "generate": "evaluate",
    "serve": "serve", "status": "serve",
    "ui": "users", "users": "users",
}
_registered: set[str] = set()


def _register(group: typer.core.TyperGroup, modules: set[str]) -> None:
    """Import `modules`, register their commands on the app, and add them to `group`, the click
    group the app was built as."""
    for name in sorted(modules - _registered, key=list(COMMANDS.values()).index):  # the help's order
        importlib.import_module(f"exfilwatch.cli.{name}").register(app)
        _registered.add(name)
    for name, command in typer.main.get_group(app).commands.items():
        if name not in group.commands:
            group.add_command(command, name)


class _OneLineErrors(typer.core.TyperGroup):
    """Any error a user can cause ends as one line on stderr and an exit code, never a traceback.
    Its commands are registered as they are asked for (`COMMANDS`)."""

    def list_commands(self, ctx):  # type: ignore[no-untyped-def]
        _register(self, set(COMMANDS.values()))
        return super().list_commands(ctx)

    def get_command(self, ctx, cmd_name):  # type: ignore[no-untyped-def]
        if cmd_name not in self.commands:  # an unknown name loads them all, for the "did you mean"
            _register(self, {COMMANDS[cmd_name]} if cmd_name in COMMANDS else set(COMMANDS.values()))
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ExfilwatchError as exc:
            _print_and_exit(exc)
        except (OSError, sqlite3.Error, duckdb.Error) as exc:
            explained = _from_environment(exc, ctx.obj)
            if explained is None:
                raise
            _print_and_exit(explained)


def _print_and_exit(exc: ExfilwatchError) -> NoReturn:
    errors.print(f"[bold red]error:[/] {terminal_safe(str(exc))}", soft_wrap=True)
    raise typer.Exit(exc.exit_code) from None


def _from_environment(exc: BaseException, c: Context | None) -> ExfilwatchError | None:
    home = c.home if c is not None else resolve_home(None)
    try:
        memory_limit = c.settings.memory_limit if c is not None else None
    except ExfilwatchError:
        memory_limit = None
    return from_environment(exc, home.root, home.config_path, memory_limit)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Find data leaks through email in VPN, mail-server and network-flow logs.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"exfilwatch {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    home: Path | None = typer.Option(None, "--home", help="Home folder (else $EXFILWATCH_HOME, else ./.exfilwatch)."),
    config: Path | None = typer.Option(None, "--config", help="Config file (else HOME/config.yaml)."),
    detections: list[Path] | None = typer.Option(
        None, "--detections", metavar="DIR",
        help="A folder of your own detections, added to the shipped ones (repeatable; also detections_path: in the config)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    lock_timeout: float = typer.Option(DEFAULT_TIMEOUT, "--lock-timeout", envvar="EXFILWATCH_LOCK_TIMEOUT",
                                       help="Seconds to wait for another exfilwatch writing to the home."),
) -> None:
    ctx.obj = Context(resolve_home(home, config), detections or [], lock_timeout)

