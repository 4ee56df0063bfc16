"""`detections list|show|lint` and `test`: the detection content, checked and tested."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from exfilwatch.attack import source
from exfilwatch.cli.common import console, context, emit, select
from exfilwatch.detections.lint import lint_files
from exfilwatch.detections.runner import compiled_sql
from exfilwatch.detections.schema import catalog_files, detection_files
from exfilwatch.evaluate.detection_tests import run_detection_tests
from exfilwatch.outputs.formats import print_table, terminal_safe
from exfilwatch.outputs.navigator import coverage_layer

commands = typer.Typer()
detections_app = typer.Typer(no_args_is_help=True, help="List, show and lint the detections.")


def register(app: typer.Typer) -> None:
    app.add_typer(detections_app, name="detections")
    app.registered_commands += commands.registered_commands


@detections_app.command("list")
def detections_list(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", help="table, jsonl or csv."),
) -> None:
    """The detections: the shipped ones and those of your --detections folders."""
    rows = [{"id": d.id, "name": d.name, "type": d.type, "status": d.status, "data model": d.data_model,
             "schedule": f"{d.schedule.cron} ({d.schedule.earliest}..{d.schedule.latest})",
             "mitre": ", ".join(d.tags.mitre_attack_id), "folder": str(d.folder)}
            for d in context(ctx).detections.values()]
    emit(rows, fmt, "detections", [c for c in rows[0] if c != "folder"])


@detections_app.command("show")
def detections_show(ctx: typer.Context, detection_id: str,
                    sql: bool = typer.Option(False, "--sql", help="Print only the compiled SQL.")) -> None:
    """One detection: its metadata, parameters and search."""
    detection = select(context(ctx).detections, [detection_id])[0]
    if sql:
        console.print(compiled_sql(detection), markup=False, highlight=False)
        return
    data = detection.model_dump(exclude={"tests", "folder"})
    data["tests"] = [f"{t.kind}: {t.name}" for t in detection.tests]
    console.print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), markup=False, highlight=False)


@detections_app.command("lint")
def detections_lint(
    ctx: typer.Context,
    path: Path | None = typer.Option(None, "--path", help="Only this folder of detections (default: the catalog, "
                                     "the shipped ones and your --detections folders)."),
) -> None:
    """Check every detection file: schema, ATT&CK ids, output fields, parameters, schedule, tests."""
    count, issues = lint_files(detection_files(path) if path else catalog_files(context(ctx).detection_folders))
    if issues:
        rows = [{"level": i.level, "detection": i.detection_id, "check": i.check, "problem": i.message} for i in issues]
        print_table(console, "detections lint", rows, ["level", "detection", "check", "problem"])
    errors = sum(i.level == "error" for i in issues)
    warnings = len(issues) - errors
    console.print(f"{count} detections checked against ATT&CK Enterprise ({source()['bundle']}): "
                  f"{errors} errors, {warnings} warnings")
    if errors or not count:
        raise typer.Exit(1)


@detections_app.command("navigator")
def detections_navigator(ctx: typer.Context) -> None:
    """The ATT&CK techniques the enabled detections cover, as an ATT&CK Navigator layer (JSON, format 4.5):
    `exfilwatch detections navigator > layer.json`, then "Open Existing Layer" in the Navigator."""
    typer.echo(json.dumps(coverage_layer(context(ctx).detections.values()), indent=2))


@commands.command("test")
def test_detections(ctx: typer.Context,
                    ids: list[str] | None = typer.Argument(None, help="Detection ids; default all.")) -> None:
    """Run each detection's own tests: its datasets and the findings they must produce."""
    catalog = context(ctx).detections
    results = run_detection_tests(select(catalog, ids))
    rows = [{"detection": r.detection_id, "test": r.name, "kind": r.kind, "result": "pass" if r.passed else "FAIL",
             "expected": ", ".join(r.expected) or "-", "got": ", ".join(r.got) or "-",
             "risk events": r.risk_events, "detail": r.detail} for r in results]
    print_table(console, "detection tests", rows, list(rows[0]) if rows else ["detection"])
    for r in results:
        if r.risk_event_lines:
            label = "risk events read" if catalog[r.detection_id].type == "correlation" else "risk events"
            console.print(f"{r.detection_id} / {r.name}: {label}", markup=False)
            for line in r.risk_event_lines:
                console.print("  " + terminal_safe(line), markup=False, highlight=False)
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if failed or not results:
        raise typer.Exit(1)
