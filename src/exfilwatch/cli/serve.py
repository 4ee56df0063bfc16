"""`serve` and `status`: the long-running service, and what it has done.

`serve` runs the receivers, the file tailer and the scheduler of `config.yaml`'s `service:`
section until SIGTERM (service/server.py); `status` reads the home (running service or not):
who holds the writer lock, the spool's committed position and what waits behind it, what the
lake holds per source, the last run of each detection and the delivery queues. While the
service runs and answers on its HTTP port (`service.hec`), `status` also asks it (`GET /status`,
found through `HOME/service.json`) for what only the live process knows — lines received and
dropped per listener, parsed / skipped / quarantined per source and listener since it started,
the spool depth, each detection's lag — and says which it read.
"""

from __future__ import annotations

import json
import os

import httpx
import typer

from exfilwatch.cli.common import console, context, local_time
from exfilwatch.detections.schedule import run_summary
from exfilwatch.events.cursors import spool_position
from exfilwatch.events.stats import source_totals
from exfilwatch.homelock import lock_holder
from exfilwatch.outputs.formats import print_table
from exfilwatch.service.ingester import SPOOL
from exfilwatch.errors import UsageError
from exfilwatch.service.spool import FOLDER, SUFFIX

ANNOUNCEMENT = "service.json"  # written by the running service (service/server.py)
ASK_SECONDS = 3.0

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
    live, said = ask_service(c.home.root, pid if _running(pid) else None)
    console.print(said, markup=False, soft_wrap=True)
    if live is not None:
        print_live(live["metrics"])
    sources = source_totals(state, per_receiver=False)
    print_table(console, "lake by source", sources, ["source", "batches", "lines", "events", "skipped", "quarantined"])
    runs = [{"detection": detection_id, "last run": local_time(r["last_run"], c.settings.timezone),
             "runs": r["runs"], "findings": r["findings"]}
            for detection_id, r in sorted(run_summary(state).items()) if r["runs"]]
    print_table(console, "detections", runs, ["detection", "last run", "runs", "findings"])
    queues = [dict(r) for r in state.query(
        "SELECT output, sum(status = 'pending') AS queued, sum(status = 'delivered') AS delivered "
        "FROM deliveries GROUP BY output ORDER BY output")]
    print_table(console, "outputs", queues, ["output", "queued", "delivered"])


def ask_service(root, pid: str | None) -> tuple[dict | None, str]:  # noqa: ANN001
    """The running service's `/status`, and a line saying where what follows was read."""
    if pid is None:
        return None, "read from the state store: the service is not running"
    try:
        announced = json.loads((root / ANNOUNCEMENT).read_text())
    except (OSError, ValueError):
        return None, f"read from the state store: pid {pid} writes the home but announced no service"
    if str(announced.get("pid")) != pid:
        return None, f"read from the state store: pid {pid} writes the home, not the service that announced itself"
    if not announced.get("url"):
        return None, f"read from the state store: the service (pid {pid}) has no HTTP port (service.hec)"
    url = announced["url"] + "/status"
    try:
        reply = httpx.get(url, timeout=ASK_SECONDS)
        reply.raise_for_status()
        return reply.json(), f"live from the running service (pid {pid}) at {url}, then from the state store"
    except (httpx.HTTPError, ValueError) as exc:
        return None, f"read from the state store: the service (pid {pid}) did not answer at {url}: {exc}"


def print_live(metrics: dict[str, list[dict]]) -> None:
    """The live counters of `/status` (service/server.py Metrics.snapshot) as tables."""
    def rows(name: str) -> list[dict]:
        return metrics.get(name, [])

    def count(value: float) -> int | float:
        return int(value) if float(value).is_integer() else round(value, 1)

    listeners: dict[str, dict] = {}
    for name, column in (("received_lines", "received"), ("dropped_lines", "dropped")):
        for row in rows(name):
            listeners.setdefault(row["listener"], {"listener": row["listener"], "received": 0, "dropped": 0})[
                column] = count(row["value"])
    print_table(console, "listeners (since the service started)", sorted(listeners.values(), key=lambda r: r["listener"]),
                ["listener", "received", "dropped"])
    parsed: dict[tuple[str, str], dict] = {}
    for name in ("parsed_lines", "skipped_lines", "quarantined_lines"):
        for row in rows(name):
            key = (row["source"], row["listener"])
            parsed.setdefault(key, {"source": key[0], "listener": key[1], "parsed": 0, "skipped": 0,
                                    "quarantined": 0})[name.removesuffix("_lines")] = count(row["value"])
    print_table(console, "received lines by source", [parsed[k] for k in sorted(parsed)],
                ["source", "listener", "parsed", "skipped", "quarantined"])
    depth = sum(r["value"] for r in rows("spool_depth"))
    spool_bytes = sum(r["value"] for r in rows("spool_bytes"))
    batches = sum(r["value"] for r in rows("batches"))
    console.print(f"spool: {count(depth)} records waiting ({count(spool_bytes)} bytes); {count(batches)} batches "
                  "committed", markup=False, soft_wrap=True)
    lags = {r["detection"]: r["value"] for r in rows("detection_lag_seconds")}
    print_table(console, "detections (live)", [{"detection": d, "lag seconds": count(v)} for d, v in sorted(lags.items())],
                ["detection", "lag seconds"])
