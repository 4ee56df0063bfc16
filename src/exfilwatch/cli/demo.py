"""`exfilwatch demo` (what `make demo` runs): generate a synthetic organisation (VPN, mail and network logs), ingest it, run the
scheduled detections (network and per-user session rules), show findings.

It is what `make demo` runs, and the quickest way to see the whole pipeline. The findings are
checked against the generator's labels: every injected incident must be found, and no benign
hard case may fire.
"""

from __future__ import annotations

import shutil
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from rich.console import Console

from exfilwatch import pipeline
from exfilwatch.cli.run import terminal_progress
from exfilwatch.cli.triage import print_incidents_with_timelines
from exfilwatch.config import Home, load_settings
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.outputs.formats import print_table
from exfilwatch.evaluate.replay import check_labels, check_stored
from exfilwatch.findings.store import query_findings
from exfilwatch.home import open_state
from exfilwatch.homelock import writing
from exfilwatch.synth.org import generate_organisation

DEMO_END = date(2026, 10, 31)


def run_demo(out: Path, hosts: int, days: int, seed: int, console: Console) -> int:
    logs, home_dir = out / "logs", out / "home"
    for folder in (logs, home_dir):
        shutil.rmtree(folder, ignore_errors=True)
    console.rule("1. generate a synthetic organisation")
    dataset = generate_organisation(logs, users=hosts, days=days, seed=seed, end=DEMO_END)
    console.print(f"{dataset.users} users: {dataset.vpn_lines} VPN lines in {dataset.vpn_log}, {dataset.mail_lines} mail "
                  f"lines in {dataset.mail_log}, {dataset.flows} flows in {dataset.conn_log}; config {dataset.config}; "
                  f"labels {dataset.labels} and {dataset.network_labels}")
    home_dir.mkdir(parents=True)
    shutil.copy(dataset.config, home_dir / "config.yaml")
    home = Home(root=home_dir, config_path=home_dir / "config.yaml")
    settings = load_settings(home)

    with writing(home.root):  # the demo's home is written by this process only
        console.rule("2. ingest")
        for report in ingest_paths([dataset.vpn_log, dataset.mail_log, dataset.conn_log], home, settings):
            console.print(f"{Path(report.file).name} ({report.source}): {report.lines} lines read, {report.events} events "
                          f"written, {sum(report.skipped.values())} lines skipped, {report.quarantined} quarantined")

        console.rule("3. run the scheduled detections, catching up from the start of the data")
        zone = ZoneInfo(settings.timezone)
        now = datetime.combine(DEMO_END + timedelta(days=1), time(0, 0), tzinfo=zone)
        state = open_state(home)
        con = connect(settings, home.spill_dir)
        catalog = list(load_detections().values())
        detections = [d for d in catalog if d.data_model in ("network_traffic", "user_sessions") and d.type != "correlation"]
        with terminal_progress() as progress:
            result = pipeline.run(con, state, settings, catalog, now, pipeline.Options(
                detections=detections, deliver=False, progress=progress))
        for run in result.detections:
            console.print(f"{run.detection.id}: {run.fires} hourly fire times, {run.stored.added} findings stored")

        console.rule("4. findings")
        found = query_findings(state, suppressed=None)
        rows = sorted(found, key=lambda r: (r["time"], r["detection_id"]))
        print_table(console, f"findings ({len(rows)})", rows, ["time", "detection_id", "entity", "risk_score", "message"])

        console.rule("5. against the labels")
        checked = check_labels(dataset.network_labels, state, settings.timezone) if dataset.network_labels else []
        print_table(console, "labelled cases", checked, ["case_id", "detection_id", "entity", "day", "expected", "outcome", "ok"])
        wrong = [c for c in checked if c["ok"] != "yes"]
        labelled = {(c["detection_id"], c["entity"], c["day"]) for c in checked}
        network_ids = tuple(d.id for d in detections if d.data_model == "network_traffic")
        unlabelled = sum(1 for r in found if r["detection_id"] in network_ids and (r["detection_id"], r["entity"],
                             datetime.fromisoformat(r["bucket"]).astimezone(zone).date().isoformat()) not in labelled)
        console.print(f"{len(checked) - len(wrong)} of {len(checked)} labelled cases as expected; "
                      f"{unlabelled} findings on unlabelled hosts or days")

        session_rules = [d.id for d in detections if d.data_model == "user_sessions"]
        cases, overall = check_stored(dataset.labels, state, settings, session_rules)
        print_table(console, "labelled cases of the session rules (VPN and daily sessions)", cases,
                    ["case", "user", "expected", "days", "outcome", "first day hit", "rules"])
        wrong += [c for c in cases if c["outcome"] in ("MISSED", "FIRED")]
        console.print(f"session rules: {overall.found} of {overall.fire_cases} injected cases found, {overall.fired_quiet} of "
                      f"{overall.quiet_cases} benign cases fired, {overall.unlabelled} findings on unlabelled users or days")

        console.rule("6. risk: incidents, each with its timeline")
        print_incidents_with_timelines(console, state, settings, {d.id: d.name for d in catalog})
        con.close()
        state.close()
    return 1 if wrong else 0
