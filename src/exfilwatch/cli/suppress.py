"""`suppress add|list|remove`: findings that are expected, with an owner, a reason and an expiry."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from exfilwatch.cli.common import console, context, emit, local_time, now_from, select
from exfilwatch.config import validation_error
from exfilwatch.errors import UsageError
from exfilwatch.findings.suppressions import (add_suppression, all_suppressions, parse_where, remove_suppression,
                                              suppression_hits)
from exfilwatch.outputs.formats import terminal_safe
from exfilwatch.riskconfig import SuppressionSpec

suppress_app = typer.Typer(no_args_is_help=True, help="Suppress findings: add, list and remove suppressions.")


def register(app: typer.Typer) -> None:
    app.add_typer(suppress_app, name="suppress")


@suppress_app.command("add")
def suppress_add(
    ctx: typer.Context,
    detection: str = typer.Option("all", "--detection", help="Detection id, or 'all'."),
    entity: str | None = typer.Option(None, "--entity", help="The finding's entity (globs allowed: 10.20.*)."),
    where: list[str] | None = typer.Option(None, "--where", help="Condition on a finding field: domain=partner.example, "
                                           "bytes_out<5e8 (repeatable; all must hold)."),
    owner: str = typer.Option(..., "--owner", help="Who is responsible for this suppression."),
    reason: str = typer.Option(..., "--reason", help="Why these findings are expected."),
    expires: str = typer.Option(..., "--expires", help="A date (through that local day), a time, +30d, or 'never'."),
    now: str | None = typer.Option(None, "--now", help="The time it is added at (default: the clock)."),
) -> None:
    """Add a suppression: matching findings are kept and marked, and add no risk, until it expires."""
    c = context(ctx)
    if detection not in ("all", "*"):
        select(c.detections, [detection])
    conditions = parse_where(where or [])
    try:
        spec = SuppressionSpec(detection=detection, entity=entity, where=conditions, owner=owner, reason=reason,
                               expires=expires)
    except ValidationError as exc:
        raise validation_error(exc, "suppress add") from None
    added = add_suppression(c.writer(), c.settings, spec, now_from(now, c.settings))
    expiry = local_time(added.expires.isoformat(), c.settings.timezone) if added.expires else "never"
    console.print(f"added suppression {added.suppression_id}: {terminal_safe(added.describe())} "
                  f"(detection {added.detection_id}, expires {expiry}); it applies to findings decided from now on",
                  markup=False)


@suppress_app.command("list")
def suppress_list(
    ctx: typer.Context,
    now: str | None = typer.Option(None, "--now", help="Judge expiry at this time (default: the clock)."),
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
) -> None:
    """Suppressions from config.yaml and the command line, whether active at NOW, and the findings each hid."""
    c = context(ctx)
    state = c.reader()
    at = now_from(now, c.settings)
    suppressions = all_suppressions(state, c.settings, at)
    hits = suppression_hits(state)
    tz = c.settings.timezone
    rows = [{"id": s.suppression_id, "source": s.source, "detection": "all" if s.detection_id == "*" else s.detection_id,
             "condition": s.describe(), "owner": s.owner, "reason": s.reason,
             "expires": local_time(s.expires.isoformat(), tz) if s.expires else "never",
             "status": "active" if s.active(at) else "expired", "suppressed": hits.get(s.suppression_id, 0)}
            for s in suppressions]
    emit(rows, fmt, f"suppressions (at {local_time(at.isoformat(), tz)} {tz})",
          ["id", "source", "detection", "condition", "owner", "reason", "expires", "status", "suppressed"])


@suppress_app.command("remove")
def suppress_remove(ctx: typer.Context, suppression_id: str = typer.Argument(..., help="Its id, e.g. s3.")) -> None:
    """Remove a suppression added on the command line (findings it hid stay marked)."""
    c = context(ctx)
    if suppression_id.startswith("config:"):
        raise UsageError(f"{suppression_id} comes from {c.home.config_path}: remove it there")
    if not remove_suppression(c.writer(), suppression_id, now=now_from(None, c.settings)):
        raise UsageError(f"no suppression {suppression_id!r}; see `exfilwatch suppress list`")
    console.print(f"removed suppression {suppression_id}")
