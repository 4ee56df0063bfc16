"""Organisation profiles: `varied` differs from `default` where the issue says it must (volumes
that vary by an order of magnitude, Ivanti 22.x session ids, Exchange, part-time and always-on
VPN users, campaigns, a billing mailbox, heavy users, a leak to a never-mailed business domain),
and every VPN session the generator made is one session after ingest."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pytest

from exfilwatch.config import Home, load_settings
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.events.lake import parquet_source
from exfilwatch.features.sessions import build_user_sessions
from exfilwatch.home import open_state
from exfilwatch.models import USER_SESSIONS
from exfilwatch.synth.org import generate_organisation

END = date(2026, 10, 30)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    out = tmp_path_factory.mktemp("varied")
    ds = generate_organisation(out / "logs", users=60, days=40, seed=4, end=END, network=False, profile="varied")
    home = Home(root=out / "home", config_path=ds.config)
    settings = load_settings(home)
    reports = ingest_paths([ds.vpn_log, ds.mail_log], home, settings)
    state = open_state(home)
    con = connect(settings, home.spill_dir)
    build_user_sessions(con, state, settings, _after(END))
    sql = parquet_source(USER_SESSIONS, state.lake_files("user_sessions"))
    sessions = duckdb.sql(f"SELECT user, session_kind, vpn_session_id, end_reason, session_start, session_end, "
                          f"em_bsum, top_domains FROM ({sql})").fetchall()
    con.close()
    state.close()
    return ds, reports, sessions


def _after(day: date):
    from datetime import datetime, timedelta, timezone
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=3)


def daily_volumes(folder: Path) -> dict[tuple[str, str], int]:
    """Bytes each sender submitted per day, from the Exchange RECEIVE lines."""
    volumes: dict[tuple[str, str], int] = {}
    for path in sorted(folder.glob("*.LOG")):
        lines = [l for l in path.read_text(encoding="utf-8").splitlines() if not l.startswith("#")]
        fields = next(l for l in path.read_text(encoding="utf-8").splitlines() if l.startswith("#Fields:"))
        names = fields[len("#Fields: "):].split(",")
        for row in csv.reader(lines):
            r = dict(zip(names, row))
            if r["event-id"] == "RECEIVE" and r["directionality"] == "Originating":
                key = (r["sender-address"], r["date-time"][:10])
                volumes[key] = volumes.get(key, 0) + int(r["total-bytes"])
    return volumes


def test_varied_writes_ivanti_session_ids_and_exchange(varied):
    ds, reports, _ = varied
    assert ds.mail == "exchange" and ds.mail_log.name == "MessageTracking"
    text = ds.vpn_log.read_text(encoding="utf-8")
    assert "(session:sid" in text and "VPN Tunneling: Session started for user  (session: sid" in text
    assert all(r.quarantined == 0 for r in reports)


def test_every_generated_vpn_session_is_one_session(varied):
    """Login, tunnel, connection and tunnel end share the id: no session is split at the tunnel."""
    ds, _, sessions = varied
    vpn = [s for s in sessions if s[1] == "vpn"]
    assert len(vpn) == ds.sessions
    assert len({s[2] for s in vpn}) == ds.sessions
    assert not [s for s in vpn if s[3] == "re-login"]
    assert {s[3] for s in vpn} <= {"logout", "timeout", "idle-limit"}


def test_volumes_vary_by_an_order_of_magnitude_day_to_day(varied, tmp_path):
    ds, _, _ = varied
    default = generate_organisation(tmp_path, users=60, days=40, seed=4, end=END, network=False, mail="exchange")

    def spread(folder: Path) -> float:
        by_user: dict[str, list[int]] = {}
        for (sender, _), size in daily_volumes(folder).items():
            by_user.setdefault(sender, []).append(size)
        ratios = [np.percentile(v, 90) / np.percentile(v, 10) for v in by_user.values() if len(v) >= 15]
        return float(np.median(ratios))

    assert spread(ds.mail_log) >= 10 * 1.0  # a typical user's p90 day is ten times their p10 day
    assert spread(ds.mail_log) > 2 * spread(default.mail_log)


def test_cases_of_the_varied_profile(varied):
    ds, _, sessions = varied
    kinds = {c.kind for c in ds.cases}
    assert {"slow-leak", "burst", "large-upload", "new-domain-volume"} <= {c.kind for c in ds.cases
                                                                          if c.expected == "fire"}
    assert {"always-heavy", "campaign", "billing-mailbox", "month-end", "newsletter", "new-hire",
            "back-from-leave", "sales-many-domains"} <= kinds
    case = next(c for c in ds.cases if c.kind == "new-domain-volume")
    domain = case.recipients[0].split("@")[1]
    mine = [s for s in sessions if s[0] == case.user]
    [leak] = [s for s in mine if s[2] == case.sessions[0]]
    before = [s for s in mine if s[5] < leak[4]]
    assert domain in {d["domain"] for d in leak[7]}
    assert domain not in {d["domain"] for s in before for d in s[7]}  # never mailed before
    usual = np.median([s[6] for s in before if s[6] > 0])
    assert leak[6] > 10 * usual


def test_generate_profile_on_the_command_line(tmp_path):
    run = [sys.executable, "-c", "from exfilwatch.cli import app; app()", "generate", "--org", "--out",
           str(tmp_path / "o"), "--users", "14", "--days", "14"]
    ok = subprocess.run(run + ["--profile", "varied"], capture_output=True, text=True,
                        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "MessageTracking").is_dir()
    bad = subprocess.run(run + ["--profile", "nope"], capture_output=True, text=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "--profile must be one of: default, varied" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
