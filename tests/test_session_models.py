"""The models in the session rules' SQL against plain Python (and scipy for the gamma tail)."""

from __future__ import annotations

import math
import random
import statistics
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

from exfilwatch.config import parse_settings
from exfilwatch.detections.runner import RunWindow, execute, resolve_parameters
from exfilwatch.detections.schema import load_detections
from exfilwatch.models import USER_SESSIONS

from .sessionkit import load_table

NOW = datetime(2026, 10, 31, 12, tzinfo=timezone.utc)
RULES = ("em_fnum", "em_dnum", "em_bsum", "em_bsum_personal")


def session(user: str, end: datetime, value: float, feature: str, mail: int = 1) -> dict:
    row = {c: None for c in USER_SESSIONS.column_names}
    row.update(_time=end, session_key=f"vpn|{user}|{end.isoformat()}", user=user, session_kind="vpn",
               session_start=end - timedelta(hours=3), session_end=end, end_reason="logout",
               messages_sent=mail, em_fnum=0, em_dnum=0, em_bsum=0, em_bsum_personal=0, em_personal_fnum=0,
               top_domains=[], top_recipients=[], largest_messages=[], largest_personal_messages=[])
    row[feature] = value
    return row


def run(rule: str, rows: list[dict], **overrides) -> list[dict]:
    detection = load_detections()[rule]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    load_table(con, "user_sessions", USER_SESSIONS, rows)
    window = RunWindow(now=NOW, earliest=NOW - timedelta(hours=2), latest=NOW - timedelta(hours=1))
    params = resolve_parameters(detection, parse_settings({}, "t"), {"floor": 0, **overrides}, window)
    return execute(con, detection, params)


def history(feature: str, values: list[float], user: str = "u", every: timedelta = timedelta(days=1)) -> list[dict]:
    # sessions `every` apart before the judged one (which closes at NOW - 90 min)
    return [session(user, NOW - (len(values) - i) * every - timedelta(minutes=90), v, feature)
            for i, v in enumerate(values)]


def judged(feature: str, value: float, user: str = "u") -> dict:
    return session(user, NOW - timedelta(minutes=90), value, feature)


@pytest.mark.parametrize("rule", RULES)
def test_zscore_and_robust_thresholds_equal_python(rule):
    rng = random.Random(rule)
    values = [float(rng.randint(0, 40)) for _ in range(30)]
    rows = history(rule, values) + [judged(rule, 10_000)]
    [z] = run(rule, rows, method="zscore", threshold=3)
    assert z["model_sessions"] == 30
    assert z["model_mean"] == pytest.approx(round(statistics.fmean(values), 2))
    assert z["model_stdev"] == pytest.approx(round(statistics.stdev(values), 2))
    assert z["model_median"] == pytest.approx(statistics.median(values))
    assert z["model_threshold"] == pytest.approx(statistics.fmean(values) + 3 * statistics.stdev(values), abs=0.01)
    [r] = run(rule, rows, method="robust", threshold=4, robust_min_scale=0.5)
    logs = [math.log1p(v) for v in values]
    med = statistics.median(logs)
    scale = max(1.4826 * statistics.median(abs(x - med) for x in logs), 0.5)
    assert r["model_threshold"] == pytest.approx(math.expm1(med + 4 * scale), abs=0.01)
    assert r["deviation"] == pytest.approx((math.log1p(10_000) - med) / scale, abs=0.01)


@pytest.mark.parametrize("shape", [1.0, 2.0, 5.0, 20.0])
def test_gamma_threshold_is_the_gamma_quantile(shape):
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(int(shape * 10))
    values = [rng.gammavariate(shape, 1000.0) for _ in range(400)]
    rows = history("em_bsum", values, every=timedelta(hours=5)) + [judged("em_bsum", 1e9)]
    for p in (1e-3, 1e-4):
        [g] = run("em_bsum", rows, method="gamma", tail_probability=p)
        mean, var = statistics.fmean(values), statistics.variance(values)
        exact = stats.gamma.ppf(1 - p, a=mean * mean / var, scale=var / mean)
        # Wilson-Hilferty and the A&S normal quantile: within 6% for shape 1 (erring high, so
        # quieter), within 2% from shape 5 up
        assert g["model_threshold"] == pytest.approx(exact, rel=0.06 if shape < 5 else 0.02)


def test_convergence_floor_first_time_and_warm_up():
    feature = "em_fnum"
    nine = history(feature, [3.0] * 9)
    assert run("em_fnum", nine + [judged(feature, 500)]) == []  # 9 sessions: not converged
    ten = history(feature, [3.0] * 10)
    [f] = run("em_fnum", ten + [judged(feature, 500)])
    assert f["model_state"] == "model"
    assert run("em_fnum", ten + [judged(feature, 12)], floor=20) == []  # below the absolute floor
    # sessions without any mail are not samples: a user who never mailed is judged as new
    quiet = [dict(r, messages_sent=0) for r in history(feature, [0.0] * 30)]
    [first] = run("em_fnum", quiet + [judged(feature, 500)])
    assert first["model_state"] == "first-time" and first["threshold_kind"] == "first-time floor"
    assert first["model_sessions"] == 0
    assert run("em_fnum", quiet + [judged(feature, 50)]) == []  # below first_time_floor (60)
    # at the start of the data everybody is new: no first-time findings during the warm-up
    young = history(feature, [1.0] * 5, user="other")
    assert run("em_fnum", young + [judged(feature, 500)]) == []


def test_a_session_is_compared_with_the_90_days_before_it():
    feature = "em_dnum"
    old = [session("u", NOW - timedelta(days=100 + i), 50.0, feature) for i in range(20)]  # out of the window
    recent = history(feature, [2.0] * 15)
    [f] = run("em_dnum", old + recent + [judged(feature, 40)])
    assert f["model_sessions"] == 15 and f["model_median"] == 2


def test_users_who_first_mail_a_domain_at_the_same_instant_each_introduce_it():
    # daily sessions all close at local midnight: of the colleagues who first mailed acme.example
    # in sessions that closed at one instant, none mailed it before the others, so each of them
    # introduced it. Ordering the rows of that instant would credit one of them, at the engine's
    # choice (here: the one stored first)
    feature = "em_fnum"
    first_mailing = NOW - timedelta(days=2, minutes=90)
    acme = [{"domain": "acme.example", "domain_class": "business", "messages": 1, "bytes": 1000}]
    rows = [dict(r, recipient_domains=acme) if r["_time"] == first_mailing else r
            for r in history(feature, [3.0] * 40)]
    colleagues = [dict(session(f"colleague{i}", first_mailing, 1.0, feature), recipient_domains=acme)
                  for i in range(20)]
    for stored in (rows + colleagues, colleagues + rows):  # whichever the engine meets first
        [f] = run("em_fnum", stored + [judged(feature, 500)])
        assert f["org_introductions"] == 1


def _with_every_model(rule: str):
    """The rule with a model for every judged session: the plain reference of the search's
    `history`, which skips the sessions at or under every floor (they cannot fire)."""
    detection = load_detections()[rule]
    skip = f"      AND (j.{rule} > least($floor, $new_domain_floor, $new_org_floor) OR j.{rule} IS NULL)\n"
    assert skip in detection.search
    return detection.model_copy(update={"search": detection.search.replace(skip, "")})


def test_a_model_only_for_the_sessions_that_can_fire_finds_what_a_model_for_every_session_finds():
    # Sessions on both sides of each floor, 50 days of them judged at once as a catch-up's chunk
    # does: some fire on their value against their own model, some only on what went to a domain
    # new to the user or to the organisation, which fires from a lower floor than the value's
    new_domain_only = 0
    for rule in RULES:
        rng = random.Random(rule)
        scale = 1_000_000 if rule.startswith("em_bsum") else 1
        domains = [f"d{i}.example" for i in range(30)]
        rows = []
        for user in range(12):
            department = f"dept{user % 2}" if user < 10 else None
            for day in range(60 if user < 9 else 3):
                end = NOW - timedelta(days=day, minutes=30 + 90 * (user % 3))
                value = float(rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 40, 90, 300]) * scale) if day else 5000.0 * scale
                mailed = rng.sample(domains[:8] if rng.random() < 0.8 else domains, k=rng.randint(1, 3))
                rows.append(dict(session(f"u{user}", end, value, rule, mail=int(value > 0)), department=department,
                                 recipient_domains=[{"domain": d, "domain_class": "personal" if i == 0 else "business",
                                                     "messages": 1 + int(value // scale // 2),
                                                     "bytes": int(value // len(mailed))} for i, d in enumerate(mailed)]))
        overrides = {"floor": 30 * scale, "new_domain_floor": 6 * scale, "new_org_floor": 4 * scale,
                     "new_domain_multiple": 0.01, "new_org_multiple": 0.01, "first_time_floor": 30 * scale,
                     "warmup_days": 1, "domain_warmup_days": 2, "minimum_sessions": 10, "peer_minimum_users": 3}
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        load_table(con, "user_sessions", USER_SESSIONS, rows)
        window = RunWindow(now=NOW, earliest=NOW - timedelta(days=50), latest=NOW)

        def findings(detection) -> list[dict]:
            params = resolve_parameters(detection, parse_settings({}, "t"), overrides, window)
            return sorted(execute(con, detection, params), key=lambda f: f["session_id"])

        shipped = findings(load_detections()[rule])
        assert shipped == findings(_with_every_model(rule)), rule
        assert any(f["model_state"] == "model" and f["above_user_threshold"] for f in shipped), rule
        new_domain_only += sum(1 for f in shipped if not f["above_user_threshold"])
    # the floors below $floor are what these need: a model skipped under $floor would miss them
    assert new_domain_only
