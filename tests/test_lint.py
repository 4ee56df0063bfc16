"""`exfilwatch detections lint`: the shipped detections pass, and each kind of mistake is caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from exfilwatch import attack
from exfilwatch.cli.main import app
from exfilwatch.detections.lint import lint_folder
from exfilwatch.detections.schema import default_detections_dir

SHIPPED = default_detections_dir()
BASE = "hosts_receiving_high_volume_of_network_traffic_from_email_server"


def test_the_shipped_seed_and_risk_detections_pass():
    _, issues = lint_folder(SHIPPED)
    ours = {BASE, "email_servers_sending_high_volume_traffic_to_hosts", "risk_threshold_exceeded_24h",
            "attack_tactic_threshold_exceeded_7d", "notable_session"}
    assert [i for i in issues if i.detection_id in ours and i.level == "error"] == []


def _mutated(tmp_path: Path, change, base: str = BASE) -> list:
    folder = tmp_path / "detections" / base
    shutil.copytree(SHIPPED / base, folder)
    path = folder / "detection.yml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    _, issues = lint_folder(tmp_path / "detections")
    return [(i.level, i.check, i.message) for i in issues]


def _errors(issues, check):
    return [m for level, c, m in issues if level == "error" and c == check]


def test_unmodified_copy_is_clean(tmp_path):
    assert _mutated(tmp_path, lambda d: None) == []


def test_unknown_technique(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["tags"].update(mitre_attack_id=["T9999"]))
    assert any("unknown ATT&CK technique 'T9999'" in m for m in _errors(issues, "attack"))


def test_revoked_technique(tmp_path):
    revoked = next(tid for tid, t in attack.attack_data()["techniques"].items() if t.get("revoked"))
    issues = _mutated(tmp_path, lambda d: d["tags"].update(mitre_attack_id=[revoked]))
    assert any("revoked" in m for m in _errors(issues, "attack"))


def test_technique_listed_with_its_own_sub_technique(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["tags"].update(mitre_attack_id=["T1114", "T1114.002"]))
    assert _errors(issues, "attack") == ["T1114 is listed with its own sub-technique T1114.002: list T1114.002 only"]


def test_sibling_sub_techniques_are_fine(tmp_path):
    assert _mutated(tmp_path, lambda d: d["tags"].update(mitre_attack_id=["T1114.001", "T1114.002"])) == []


def test_message_field_missing_from_output(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["risk"].update(message="traffic to $dest$"))
    assert any("risk message field 'dest'" in m for m in _errors(issues, "fields"))


def test_risk_object_field_missing_from_output(tmp_path):
    # the seed's own mistake: risk object `dest`, which the search never outputs
    issues = _mutated(tmp_path, lambda d: d["risk"]["objects"][0].update(field="dest"))
    assert any("risk object field 'dest'" in m for m in _errors(issues, "fields"))


def test_undeclared_parameter(tmp_path):
    def change(d):
        d["search"] = d["search"].replace("$deviation_threshold", "$deviation_treshold", 1)

    issues = _mutated(tmp_path, change)
    assert any("$deviation_treshold" in m for m in _errors(issues, "parameters"))


def test_unused_parameter_is_a_warning(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["parameters"].update(spare={"default": 1, "type": "number"}))
    assert [(lvl, c) for lvl, c, m in issues] == [("warning", "parameters")]


def test_bad_cron_and_bad_time_modifier(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["schedule"].update(cron="61 * * * *", earliest="-70x@m"))
    errors = _errors(issues, "schedule")
    assert any("cron expression '61 * * * *'" in m for m in errors)
    assert any("schedule earliest" in m for m in errors)


def test_bad_time_parameter_default(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["parameters"]["history"].update(default="-30dd"))
    assert _errors(issues, "parameters")


@pytest.mark.parametrize("kind", ["positive", "negative"])
def test_production_detection_without_a_test_kind(tmp_path, kind):
    issues = _mutated(tmp_path, lambda d: d.update(tests=[t for t in d["tests"] if t["kind"] != kind]))
    assert _errors(issues, "tests") == [f"a production detection needs at least one {kind} test"]


def test_experimental_detection_may_lack_tests(tmp_path):
    assert _mutated(tmp_path, lambda d: d.update(status="experimental", tests=[])) == []


def test_missing_test_data_file(tmp_path):
    issues = _mutated(tmp_path, lambda d: d["tests"][0]["data"][0].update(file="data/nope.log"))
    assert any("data/nope.log not found" in m for m in _errors(issues, "tests"))


def test_schema_error_names_the_key(tmp_path):
    issues = _mutated(tmp_path, lambda d: d.update(shedule={"cron": "0 * * * *"}))
    assert any("shedule" in m and "unknown key" in m for m in _errors(issues, "schema"))


def test_search_that_fails_on_empty_data(tmp_path):
    issues = _mutated(tmp_path, lambda d: d.update(search=d["search"].replace("FROM network_traffic", "FROM no_such_table")))
    assert any("no_such_table" in m for m in _errors(issues, "sql"))


def test_correlation_rule_must_name_its_risk_events(tmp_path):
    def change(d):
        d["search"] = d["search"].replace("event_keys\nFROM per_object", "1 AS one\nFROM per_object")

    issues = _mutated(tmp_path, change, base="risk_threshold_exceeded_24h")
    assert any("'event_keys'" in m for m in _errors(issues, "fields"))


def test_cli_exit_status(tmp_path):
    runner = CliRunner()
    folder = tmp_path / "detections" / BASE
    shutil.copytree(SHIPPED / BASE, folder)
    ok = runner.invoke(app, ["detections", "lint", "--path", str(tmp_path / "detections")])
    assert ok.exit_code == 0 and "0 errors" in ok.output
    path = folder / "detection.yml"
    path.write_text(path.read_text().replace("mitre_attack_id: [T1114.002]", "mitre_attack_id: [T1114, T1114.002]"))
    bad = runner.invoke(app, ["detections", "lint", "--path", str(tmp_path / "detections")])
    assert bad.exit_code == 1 and "1 errors" in bad.output


def test_an_incident_rules_quiet_period_is_read_by_the_incident_step_and_must_be_an_offset(tmp_path):
    assert _mutated(tmp_path / "a", lambda d: None, base="notable_session") == []  # no "never used" warning
    issues = _mutated(tmp_path / "b", lambda d: d["parameters"]["quiet_period"].update(default="4 days"),
                      base="notable_session")
    assert any("quiet_period '4 days' is not a time offset" in m for m in _errors(issues, "parameters"))


@pytest.mark.parametrize("old,new,expected", [
    # a fire's column that is not one of its instants: the segments cannot be cut there
    ("r._time < f.latest", "r._time < f.fire", "_time is compared with f.fire"),
    # an instant moved by an interval is no term: no segment is cut at it
    ("r._time < f.latest", "r._time < f.latest - INTERVAL 1 HOUR", "_time is compared with f.latest - INTERVAL"),
    # a count of the model's rows cannot be read from sums
    ("sum(r.bytes_in) AS bytes_in", "count(*) AS bytes_in", "only sum, min or max"),
    # a column the search does not keep
    ("r.src_ip IS NOT NULL", "r.dest_port = 993", "otherwise than the search"),
    ("SELECT fire,\n", "SELECT\n", "expected fire, then the search's"),
    ("JOIN fires f ON", "JOIN network_traffic f ON", "joined with something other than 'fires'"),
    # a segment's start kept as `_time` (the name the forms give the day) is no renamed key
    ("SELECT src_ip, _day, _time AS segment,", "SELECT src_ip, _day, _time,", "_time is used other than compared"),
    # a count of segments so far depends on where the catch-up cut them, a sum so far does not
    ("sum(bytes_in) OVER w AS bytes_in,", "count(bytes_in) OVER w AS bytes_in,", "may only sum"),
    # a sum over the last two segments depends on where the catch-up cut them
    ("sum(bytes_in) OVER w AS bytes_in,", "sum(bytes_in) OVER (w ROWS 1 PRECEDING) AS bytes_in,",
     "sums from UNBOUNDED PRECEDING"),
    # a fire's sum so far read at something the segments are not cut at
    ("f.latest > r.segment", "f.fire > r.segment", "segment (a segment's start) is compared with f.fire"),
    # partitioned by its start, each segment is summed on its own: its rows are read, not its sums so far
    ("PARTITION BY src_ip, _day ORDER BY segment", "PARTITION BY src_ip, _day, segment ORDER BY segment",
     "segment (a segment's start) is used other than ordered"),
    # the name of a segment's start given to something else too
    ("SELECT _day, segment,\n", "SELECT _day, segment + INTERVAL 1 HOUR AS segment,\n", "also names"),
])
def test_a_batched_form_that_breaks_its_contract(tmp_path, old, new, expected):
    def change(d):
        assert old in d["catch_up"]["search"]
        d["catch_up"]["search"] = d["catch_up"]["search"].replace(old, new, 1)

    errors = _errors(_mutated(tmp_path, change), "catch_up")
    assert len(errors) == 1 and expected in errors[0], errors


def test_the_shipped_batched_forms_pass():
    _, issues = lint_folder(SHIPPED)
    batched = [i.detection_id for i in issues if i.check == "catch_up"]
    assert batched == []
    assert {"hosts_receiving_unusual_mail_volume_robust", BASE} <= {
        p.parent.name for p in SHIPPED.glob("*/detection.yml") if "catch_up:" in p.read_text()}


@pytest.mark.parametrize("base,old,new,expected", [
    ("risk_threshold_exceeded_24h", "SELECT fire, risk_object, risk_object_type, _time,",
     "SELECT risk_object, risk_object_type, _time,", "expected fire, then the search's"),
    ("risk_threshold_exceeded_24h", "uncapped_risk_score, risk_event_count,", "risk_event_count,",
     "expected fire, then the search's"),
    # the findings of the fires are not what the incident rules see: only fires and risk events
    ("notable_session", "FROM fires f JOIN risk_events r", "FROM fires f JOIN findings r",
     "reads ['findings']; a correlation rule's form reads only 'fires' and 'risk_events'"),
    ("risk_threshold_exceeded_24h", "WHERE total > $risk_threshold", "WHERE total > $risk_limit",
     "undeclared parameters ['risk_limit']"),
    # a fire would see risk events whose findings were detected after it
    ("attack_tactic_threshold_exceeded_7d", " AND r._available <= f.now", "", "never holds a fire to the risk events"),
    ("risk_threshold_exceeded_24h", "FROM fires f JOIN risk_events r", "FROM risk_events f JOIN risk_events r",
     "never reads the table 'fires'"),
])
def test_an_incident_rules_batched_form_that_cannot_work(tmp_path, base, old, new, expected):
    def change(d):
        assert old in d["catch_up"]["search"]
        d["catch_up"]["search"] = d["catch_up"]["search"].replace(old, new, 1)

    errors = _errors(_mutated(tmp_path, change, base=base), "catch_up")
    assert len(errors) == 1 and expected in errors[0], errors
    folder = tmp_path / "detections"
    result = CliRunner().invoke(app, ["detections", "lint", "--path", str(folder)])
    assert result.exit_code == 1 and "1 errors" in result.output and base in result.output, result.output
