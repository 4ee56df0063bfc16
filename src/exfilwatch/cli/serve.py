"""`serve` and `status`: the long-running service, and what it has done.

`serve` runs the receivers, the file tailer and the scheduler of `config.yaml`'s `service:`
section until SIGTERM (service/server.py); `status` reads the home (running service or not):
who holds the writer lock, the spool's committed position and what waits behind it, what the
lake holds per source, the last run of each detection and the delivery queues.
"""

from __future__ import annotations

import os

import typer

from exfilwatch.cli.common import console, context, local_time
from exfilwatch.events.cursors import spool_position
from exfilwatch.homelock import lock_holder
from exfilwatch.outputs.formats import print_table
from exfilwatch.service.ingester import SPOOL
from exfilwatch.errors import UsageError
from exfilwatch.service.spool import FOLDER, SUFFIX

commands = typer.Typer()


def register(app: typer.Typer) -> None:
    app.registered_commands += commands.registered_commands


@commands.command()
def serve(ctx: typer.Context) -> None:
    """Receive syslog (UDP, TCP, TLS) and Splunk HEC, tail files, and run the detections on their schedules."""
    c = context(ctx)
    try:  # the receivers need the web extra; every other command works without it
        from exfilwatch.service.server import run_service
    except ModuleNotFoundError as exc:
        raise UsageError(f"exfilwatch serve needs {exc.name}: pip install 'exfilwatch[web]'") from None
    run_service(c.home, c.settings, list(c.detections.values()))


def _running(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@commands.command()
def status(ctx: typer.Context) -> None:
    """What the service (running or not) has received, committed, run and delivered."""
    c = context(ctx)
    state = c.reader()
    pid = lock_holder(c.home.root)
    writing = f"pid {pid}" if _running(pid) else "nobody"
    position = spool_position(state.conn, SPOOL)[0]
    segments = sorted((c.home.root / FOLDER).glob(f"*{SUFFIX}"))
    spooled = max(0, sum(p.stat().st_size for p in segments) + (int(segments[0].name.removesuffix(SUFFIX))
                                                                 if segments else 0) - position)
    console.print(f"home {c.home.root}: written by {writing}; spool committed to position {position}, "
                  f"{spooled} bytes waiting", markup=False, soft_wrap=True)
    sources = [dict(r) for r in state.query(
        "SELECT source, count(*) AS batches, sum(lines) AS lines, sum(events) AS events, "
        "sum(skipped) AS skipped, sum(quarantined) AS quarantined FROM batches GROUP BY source ORDER BY source")]
    print_table(console, "lake by source", sources, ["source", "batches", "lines", "events", "skipped", "quarantined"])
    runs = [{"detection": r["detection_id"], "last run": local_time(r["now"], c.settings.timezone),
             "runs": r["runs"], "findings": r["findings"]}
            for r in state.query("SELECT detection_id, max(now) AS now, count(*) AS runs, sum(findings) AS findings "
                                 "FROM detection_runs GROUP BY detection_id ORDER BY detection_id")]
    print_table(console, "detections", runs, ["detection", "last run", "runs", "findings"])
    queues = [dict(r) for r in state.query(
        "SELECT output, sum(status = 'pending') AS queued, sum(status = 'delivered') AS delivered "
        "FROM deliveries GROUP BY output ORDER BY output")]
    print_table(console, "outputs", queues, ["output", "queued", "delivered"])
