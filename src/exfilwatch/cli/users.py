"""`users add|list|remove|set-role` and `ui`: the console's local users, and the console served alone.

Passwords are read from stdin with `--password-stdin` (the first line) or prompted twice; they
never appear in arguments, the audit trail or any output. Changes are recorded in the audit
trail with the operating-system user as actor (`cli:NAME`).
"""

from __future__ import annotations

import getpass
import sys
from datetime import datetime, timezone

import typer

from exfilwatch.cli.common import console, context, emit, local_time
from exfilwatch.errors import UsageError

users_app = typer.Typer(help="Users of the web console: add, list, remove, set-role.", no_args_is_help=True)
commands = typer.Typer()


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.registered_commands += commands.registered_commands


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _users_state(ctx: typer.Context):  # noqa: ANN202
    from exfilwatch.web.users import SCHEMA

    state = context(ctx).writer()
    state.migrate([SCHEMA])
    return state


def _web() -> None:
    try:
        import argon2  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UsageError(f"the console needs {exc.name}: pip install 'exfilwatch[web]'") from None


@users_app.command("add")
def users_add(ctx: typer.Context, name: str = typer.Argument(..., help="The login name."),
              role: str = typer.Option(..., "--role", help="viewer, analyst or admin."),
              password_stdin: bool = typer.Option(False, "--password-stdin",
                                                  help="Read the password from the first line of stdin.")) -> None:
    """Add a console user (the password is prompted twice, or read from stdin)."""
    _web()
    from exfilwatch.web.users import add_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise UsageError("--password-stdin: stdin held no password")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    add_user(_users_state(ctx), name, role, password, actor=_actor(), now=_now())
    console.print(f"added user {name} ({role})", markup=False)


@users_app.command("list")
def users_list(ctx: typer.Context, fmt: str = typer.Option("table", "--format", help="table, jsonl or csv.")) -> None:
    """The console's users, their roles, and any lock-out."""
    _web()
    from exfilwatch.web.users import list_users

    c = context(ctx)
    rows = [{**u, "created": local_time(u["created"], c.settings.timezone),
             "locked_until": local_time(u["locked_until"], c.settings.timezone) if u["locked_until"] else ""}
            for u in list_users(_users_state(ctx))]
    emit(rows, fmt, "console users", ["name", "role", "created", "failed_logins", "locked_until"])


@users_app.command("remove")
def users_remove(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Remove a console user (their sessions end at their next request)."""
    _web()
    from exfilwatch.web.users import remove_user

    remove_user(_users_state(ctx), name, actor=_actor(), now=_now())
    console.print(f"removed user {name}", markup=False)


@users_app.command("set-role")
def users_set_role(ctx: typer.Context, name: str = typer.Argument(...),
                   role: str = typer.Argument(..., help="viewer, analyst or admin.")) -> None:
    """Change a console user's role."""
    _web()
    from exfilwatch.web.users import set_role

    set_role(_users_state(ctx), name, role, actor=_actor(), now=_now())
    console.print(f"{name} is now {role}", markup=False)


@commands.command()
def ui(ctx: typer.Context,
       host: str | None = typer.Option(None, "--host", help="Address to listen on (else service.web.host, 127.0.0.1)."),
       port: int | None = typer.Option(None, "--port", help="Port (else service.web.port, 8080; 0 = any free one)."),
       ) -> None:
    """Serve the web console alone over the home (HTTPS with service.web's cert and key)."""
    _web()
    from exfilwatch.config import WebSettings
    from exfilwatch.web.serve import serve_console

    c = context(ctx)
    web = c.settings.service.web or WebSettings()
    serve_console(c.home, c.settings, c.detections, web, host if host is not None else web.host,
                  port if port is not None else web.port)
