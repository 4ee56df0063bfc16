"""Running detections: stored findings are idempotent, grow in place, and catch-up equals fire-by-fire."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from exfilwatch.config import Home, parse_settings
from exfilwatch.detections.runner import DetectionRunError
from exfilwatch.detections.schedule import clear_watermark, fire_times, watermark
from exfilwatch.findings.store import store_findings

from .pipelinekit import detect_once, run_schedule
from exfilwatch.detections.schema import load_detections
from exfilwatch.events.engine import connect
from exfilwatch.events.ingest import ingest_paths
from exfilwatch.home import open_state
from exfilwatch.state import StateStore

from .conftest import Flow, settings_for, write_conn_log

NY = ZoneInfo("America/New_York")
OUT = "email_servers_sending_high_volume_traffic_to_hosts"


def day_flows(host: str, day: int, total: int, hour: int = 10) -> Flow:
    ts = datetime(2026, 10, day, hour, tzinfo=NY).timestamp()
    return Flow(ts, "10.10.0.5", host, total, 100, resp_port=445)


def history(spike: int | None = None, spike_hour: int = 10) -> list[Flow]:
    flows = [day_flows(f"10.20.0.{h}", d, 1_000_000 + 10_000 * ((h * d) % 7)) for h in range(1, 9) for d in range(20, 31)]
    flows += [day_flows("10.20.0.66", d, 1_000_000 + 5_000 * (d % 3)) for d in range(20, 31)]
    if spike:
        flows.append(day_flows("10.20.0.66", 31, spike, hour=spike_hour))
    return sorted(flows, key=lambda f: f.ts)


@pytest.fixture
def setup(tmp_path, home):
    settings = settings_for("America/New_York")
    detections = load_detections()
    state = open_state(home)
    con = connect(settings)
    yield tmp_path, home, settings, detections, state, con
    con.close()
    state.close()


def test_running_twice_adds_nothing_and_a_larger_value_updates_the_finding(setup):
    tmp_path, home, settings, detections, state, con = setup
    ingest_paths([write_conn_log(tmp_path / "a.log", history(spike=50_000_000))], home, settings)
    now = datetime(2026, 10, 31, 20, 0, tzinfo=NY)
    first = detect_once(con, state, settings, [detections[OUT]], now)[0]
    assert [f.entity for f in first.findings] == ["10.20.0.66"] and first.stored.added == 1
    again = detect_once(con, state, settings, [detections[OUT]], now)[0]
    assert (again.stored.added, again.stored.updated, again.stored.unchanged) == (0, 0, 1)
    # More traffic the same day: same entity and bucket, larger value -> the finding is updated.
    ingest_paths([write_conn_log(tmp_path / "b.log", [day_flows("10.20.0.66", 31, 9_000_000, hour=18)])],
                 home, settings)
    later = detect_once(con, state, settings, [detections[OUT]], now + timedelta(hours=1))[0]
    assert (later.stored.added, later.stored.updated) == (0, 1)
    [row] = state.query("SELECT value, updates FROM findings")
    assert (row["value"], row["updates"]) == (59_000_000, 1)


def test_parameters_from_config_and_command_line(setup):
    tmp_path, home, settings, detections, state, con = setup
    ingest_paths([write_conn_log(tmp_path / "a.log", history(spike=50_000_000))], home, settings)
    now = datetime(2026, 10, 31, 20, 0, tzinfo=NY)
    strict = detect_once(con, state, settings, [detections[OUT]], now, overrides={"deviation_threshold": "1000"},
                         store=False)[0]
    assert strict.findings == []
    configured = parse_settings({**settings.model_dump(), "detections": {OUT: {"minimum_data_samples": 50}}}, "t")
    assert detect_once(con, state, configured, [detections[OUT]], now, store=False)[0].findings == []
    with pytest.raises(DetectionRunError, match="unknown parameter 'deviation'"):
        detect_once(con, state, settings, [detections[OUT]], now, overrides={"deviation": "2"})
    with pytest.raises(DetectionRunError, match="deviation_threshold='x' is not a number"):
        detect_once(con, state, settings, [detections[OUT]], now, overrides={"deviation_threshold": "x"})


def test_filter_drops_findings_and_inventory_changes_apply_to_old_data(setup):
    tmp_path, home, settings, detections, state, con = setup
    ingest_paths([write_conn_log(tmp_path / "a.log", history(spike=50_000_000))], home, settings)
    now = datetime(2026, 10, 31, 20, 0, tzinfo=NY)
    filtered = detections[OUT].model_copy(update={"filter": "dest_ip = '10.20.0.66'"})
    assert detect_once(con, state, settings, [filtered], now, store=False)[0].findings == []
    # Removing the mail server from the inventory after ingest removes the finding.
    no_mail = parse_settings({"timezone": "America/New_York", "assets": []}, "t")
    assert detect_once(con, state, no_mail, [detections[OUT]], now, store=False)[0].findings == []


def test_fire_times_follow_the_local_clock_across_dst():
    after = datetime(2026, 10, 31, 23, 30, tzinfo=NY).astimezone(timezone.utc)
    until = datetime(2026, 11, 2, 0, 30, tzinfo=NY).astimezone(timezone.utc)
    daily = fire_times("0 0 * * *", after, until, "America/New_York")
    assert [t.astimezone(NY).strftime("%m-%d %H:%M %Z") for t in daily] == ["11-01 00:00 EDT", "11-02 00:00 EST"]
    hourly = fire_times("0 * * * *", after, until, "America/New_York")
    assert len(hourly) == 26  # 24 hours + the repeated 01:00 hour + 00:00 on Nov 2


def test_catch_up_gives_the_findings_of_running_each_fire_in_order(setup, tmp_path_factory):
    tmp_path, home, settings, detections, state, con = setup
    ingest_paths([write_conn_log(tmp_path / "a.log", history(spike=50_000_000, spike_hour=9))], home, settings)
    now = datetime(2026, 11, 1, 3, 0, tzinfo=NY)
    results = run_schedule(con, state, settings, [detections[OUT]], now)
    assert results[0].fires + results[0].skipped_fires > 24 * 11  # every fire time, run or skipped for want of rows
    caught_up = [dict(r) for r in state.query("SELECT finding_key, value, fields FROM findings ORDER BY 1")]
    assert [r["finding_key"].split("|")[1] for r in caught_up] == ["10.20.0.66"]
    # The same fires, one detect_once each, their findings stored in a fresh state store.
    other = open_state(tmp_path_factory.mktemp("other"))
    for fire in fire_times("0 * * * *", datetime(2026, 10, 20, tzinfo=NY) - timedelta(microseconds=1), now,
                           "America/New_York"):
        result = detect_once(con, state, settings, [detections[OUT]], fire, store=False)[0]
        store_findings(other, result.findings, 0)
    one_by_one = [dict(r) for r in other.query("SELECT finding_key, value, fields FROM findings ORDER BY 1")]
    assert caught_up == one_by_one
    # A second run right after adds no fire and no finding; the watermark moved to the last fire.
    assert run_schedule(con, state, settings, [detections[OUT]], now)[0].fires == 0
    assert watermark(state, OUT).isoformat() == datetime(2026, 11, 1, 3, 0, tzinfo=NY).astimezone(timezone.utc).isoformat()


def test_detections_sharing_a_search_text_each_run_with_their_own_parameters(setup):
    # A run prepares each search once per text (tokens, tree, batched form: detections/runner.py);
    # what a fire executes still takes the values of its own detection.
    tmp_path, home, settings, detections, state, con = setup
    ingest_paths([write_conn_log(tmp_path / "a.log", history(spike=50_000_000, spike_hour=9))], home, settings)
    original = detections[OUT]
    strict_threshold = original.parameters["deviation_threshold"].model_copy(update={"default": 1000})
    strict = original.model_copy(update={"id": f"{OUT}_strict",
                                         "parameters": {**original.parameters, "deviation_threshold": strict_threshold}})
    now = datetime(2026, 11, 1, 3, 0, tzinfo=NY)
    for order in ([strict, original], [original, strict]):
        for detection in order:
            clear_watermark(state, detection.id)
        found = {run.detection.id: sorted({f.entity for f in run.findings})
                 for run in run_schedule(con, state, settings, order, now)}
        assert found == {OUT: ["10.20.0.66"], f"{OUT}_strict": []}


def test_catch_up_snapshot_keeps_only_rows_the_search_can_use():
    from exfilwatch.detections.runner import snapshot_condition

    sql = "SELECT t.dest_ip FROM network_traffic t WHERE t.src_category = 'email_server' AND _time < $latest"
    assert snapshot_condition(sql, "network_traffic") == "(src_category = 'email_server')"
    # Conditions with parameters, reads through a join or read twice tell nothing for every fire.
    assert snapshot_condition("SELECT * FROM network_traffic WHERE bytes > $floor", "network_traffic") is None
    joined = "SELECT * FROM network_traffic a JOIN asset_map b ON a.src_ip = b.ip WHERE a.bytes > 5"
    assert snapshot_condition(joined, "network_traffic") is None
    twice = ("SELECT * FROM network_traffic WHERE bytes > 5 UNION ALL "
             "SELECT * FROM network_traffic WHERE bytes < 2")
    assert snapshot_condition(twice, "network_traffic") is None


def flows_on(days: list[datetime], spike_day: datetime | None = None) -> list[Flow]:
    """Daily traffic of nine hosts from the mail server on `days`; host .66 spikes on `spike_day`."""
    flows = []
    for day in days:
        for h in range(1, 9):
            flows.append(Flow(day.replace(hour=10).timestamp(), "10.10.0.5", f"10.20.0.{h}",
                              1_000_000 + 10_000 * ((h * day.day) % 7), 100, resp_port=445))
        total = 50_000_000 if day == spike_day else 1_000_000 + 5_000 * (day.day % 3)
        flows.append(Flow(day.replace(hour=11).timestamp(), "10.10.0.5", "10.20.0.66", total, 100, resp_port=445))
    return sorted(flows, key=lambda f: f.ts)


def stored(state: StateStore) -> list[dict]:
    return [dict(r) for r in state.query("SELECT finding_key, value, fields FROM findings ORDER BY 1")]


def test_catch_up_over_gaps_and_a_dst_change_skips_empty_fires_and_finds_the_same(setup, tmp_path_factory):
    tmp_path, home, settings, detections, state, con = setup
    # Two bursts of data 50 days apart: the 30-day windows of the fires in between hold nothing.
    # The second burst spans the end of daylight saving time (1 November 2026 in New York).
    days = [datetime(2026, 8, d, tzinfo=NY) for d in range(1, 21)] + [datetime(2026, 10, 10, tzinfo=NY)] + \
        [datetime(2026, 10, 20, tzinfo=NY) + timedelta(days=i) for i in range(16)]
    spike = datetime(2026, 11, 4, tzinfo=NY)
    ingest_paths([write_conn_log(tmp_path / "a.log", flows_on(days, spike))], home, settings)
    now = datetime(2026, 11, 5, 6, 0, tzinfo=NY)
    [caught_up] = run_schedule(con, state, settings, [detections[OUT]], now)
    assert caught_up.skipped_fires > 24 * 10  # the empty hours between the bursts were not run
    other = open_state(tmp_path_factory.mktemp("other"))
    first_row = datetime(2026, 8, 1, 10, tzinfo=NY)  # a first run catches up from the start of the data
    every = fire_times("0 * * * *", first_row - timedelta(microseconds=1), now, "America/New_York")
    assert caught_up.fires + caught_up.skipped_fires == len(every)
    for fire in every:  # the reference: each fire in order, the same store rule (larger value: update)
        store_findings(other, detect_once(con, state, settings, [detections[OUT]], fire, store=False)[0].findings, 0)
    assert stored(state) == stored(other)
    assert [r["finding_key"].split("|")[1] for r in stored(state)] == ["10.20.0.66"]


def test_a_first_run_with_the_wall_clock_on_old_logs_runs_only_the_fires_that_can_find_something(setup, tmp_path):
    _, home, settings, detections, state, con = setup
    days = [datetime(2021, 3, 1, tzinfo=NY) + timedelta(days=i) for i in range(20)]
    log = write_conn_log(tmp_path / "old.log", flows_on(days, days[-2]))
    ingest_paths([log], home, settings)
    end_of_data = datetime(2021, 3, 21, 0, 0, tzinfo=NY)
    reference_home = Home(root=tmp_path / "reference", config_path=tmp_path / "reference" / "config.yaml")
    ingest_paths([log], reference_home, settings)
    reference_state = open_state(reference_home)
    [at_end] = run_schedule(con, reference_state, settings, [detections[OUT]], end_of_data + timedelta(days=31))
    # Years later: every fire after the data's last 30-day window is skipped without being run.
    years_later = datetime(2026, 12, 2, 9, 17, tzinfo=timezone.utc)
    [late] = run_schedule(con, state, settings, [detections[OUT]], years_later)
    assert late.fires == at_end.fires and late.skipped_fires > 5 * 365 * 24
    assert stored(state) == stored(reference_state) and len(stored(state)) == 1
    assert watermark(state, OUT).isoformat() == datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc).isoformat()


def _croniter_fires(cron: str, after: datetime, until: datetime, tz: str) -> list[datetime]:
    """The reference: one croniter stepped from `after` to `until`, as the schedule did before it
    remembered blocks of fires."""
    from croniter import croniter

    iterator, fires = croniter(cron, after.astimezone(ZoneInfo(tz))), []
    while (fire := iterator.get_next(datetime)) <= until:
        fires.append(fire.astimezone(timezone.utc))
    return fires


# Around both DST changes of New York and of Lord Howe (a half-hour shift) in 2026, and a plain day.
_DST_EDGES = [datetime(2026, 3, 8, 7, tzinfo=timezone.utc), datetime(2026, 11, 1, 6, tzinfo=timezone.utc),
              datetime(2026, 4, 4, 15, tzinfo=timezone.utc), datetime(2026, 10, 3, 16, tzinfo=timezone.utc),
              datetime(2026, 6, 1, tzinfo=timezone.utc)]


@settings(max_examples=60, deadline=None)
@given(edge=st.sampled_from(_DST_EDGES), before=st.integers(-400 * 60, 60), span=st.integers(0, 500 * 60),
       cron=st.sampled_from(["5 * * * *", "0 * * * *", "30 * * * *", "0 0 * * *", "*/20 * * * *"]),
       tz=st.sampled_from(["America/New_York", "Australia/Lord_Howe", "Europe/Paris", "UTC"]))
def test_fire_times_in_remembered_blocks_are_croniters_across_dst_changes(edge, before, span, cron, tz):
    # spans cross a block's end (168 fires) and each DST change, starting on and off a fire time
    after = edge + timedelta(minutes=before)
    until = after + timedelta(minutes=span)
    assert fire_times(cron, after, until, tz) == _croniter_fires(cron, after, until, tz)
    assert fire_times(cron, after.astimezone(ZoneInfo(tz)), until, tz) == _croniter_fires(cron, after, until, tz)


def test_what_a_run_reads_from_each_shipped_search_is_what_sqlglot_parses_from_its_text():
    # The run reads a search's tables, columns, $parameters and main query from one tokenisation
    # and one walk (detections/runner.py, ctes.py); sqlglot's own parse of the text is the reference.
    import sqlglot
    from sqlglot import exp

    from exfilwatch.detections.batched import batched_plan
    from exfilwatch.detections.ctes import search_ctes
    from exfilwatch.detections.runner import compiled_sql, referenced_columns, referenced_tables, sql_parameters
    from exfilwatch.models import get_model

    def names(tree, kind):
        return {node.name for node in tree.find_all(kind)}

    checked_ctes = checked_forms = 0
    for detection in load_detections().values():
        sql = compiled_sql(detection)
        tree = sqlglot.parse_one(sql, read="duckdb")
        assert referenced_tables(sql) == names(tree, exp.Table), detection.id
        assert referenced_columns(sql) == names(tree, exp.Column), detection.id
        assert sql_parameters(sql) == names(tree, exp.Placeholder), detection.id
        model = get_model(detection.data_model).name if detection.type != "correlation" else detection.data_model
        ctes = search_ctes(sql, model)
        if ctes is not None:
            main = next(node for node in tree.walk() if node.args.get("with_") is not None).copy()
            main.set("with_", None)
            cte_names = {c.name for c in ctes.ctes}
            assert ctes.main_reads == {t.name.lower() for t in main.find_all(exp.Table)} & cte_names, detection.id
            checked_ctes += 1
        plan, _ = batched_plan(detection, sql, model)
        if plan is not None:
            assert plan.parameters == names(sqlglot.parse_one(plan.sql, read="duckdb"), exp.Placeholder), detection.id
            checked_forms += 1
    assert checked_ctes >= 7 and checked_forms >= 3
