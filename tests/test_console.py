"""The web console through FastAPI's TestClient: every route, permissions per role, CSRF,
lock-out, session cookie flags, escaping of hostile log content, and the changes it makes
(incident workflow, suppressions, detection overrides, users) with their audit trail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .consolekit import HOSTILE_USER, PASSWORD, XSS, console_home_copy, csrf_of, login
from exfilwatch import audit
from exfilwatch.config import ConfigError, parse_settings
from exfilwatch.detections.overrides import disabled_detections, effective_settings, stored_overrides
from exfilwatch.findings.suppressions import stored_suppressions
from exfilwatch.home import open_state
from exfilwatch.incidents import workflow
from exfilwatch.web.app import create_app

PAGES = ["/incidents", "/findings", "/findings?show=suppressed", "/detections", "/detections/em_fnum",
         "/suppressions", "/sources"]
API = ["/api/incidents", "/api/findings", "/api/detections"]


@pytest.fixture(scope="module")
def org(tmp_path_factory):
    return console_home_copy(tmp_path_factory.getbasetemp() / "console-org", tmp_path_factory.mktemp("console") / "home")


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def clock(org):
    return Clock(org.now)


@pytest.fixture(scope="module")
def app(org, clock):
    return create_app(org.home, org.settings, org.catalog, clock)


def client_as(app, role: str | None) -> TestClient:
    client = TestClient(app)
    if role is not None:
        assert login(client, role).status_code == 303
    return client


@pytest.fixture(scope="module")
def incident_id(org):
    state = open_state(org.home)
    try:
        return workflow.list_incidents(state)[0]["incident_id"]
    finally:
        state.close()


def test_every_page_and_api_route_answers_a_viewer(app, org, incident_id):
    viewer = client_as(app, "viewer")
    state = open_state(org.home)
    shown = workflow.get_incident(state, incident_id)
    entity = shown["risk_object"]
    state.close()
    page = viewer.get(f"/incidents/{incident_id}").text
    rules = page.split('data-testid="incident-rules">')[1].split("</dd>")[0]
    assert all(f">{rule}</a>" in rules for rule in shown["rules"])  # every rule that contributed
    for url in PAGES + API + [f"/incidents/{incident_id}", f"/api/incidents/{incident_id}", f"/entity/{entity}",
                              f"/api/entities/{entity}/timeline", "/openapi.json", "/docs"]:
        response = viewer.get(url)
        assert response.status_code == 200, url
    schema = viewer.get("/openapi.json").json()
    assert {"/api/incidents", "/api/incidents/{incident_id}", "/api/findings", "/api/entities/{name}/timeline",
            "/api/detections"} <= set(schema["paths"])
    assert not any(path.startswith(("/incidents", "/login")) for path in schema["paths"])  # pages are not the API


def test_nothing_without_a_login(app, incident_id):
    anonymous = client_as(app, None)
    for url in PAGES + [f"/incidents/{incident_id}", "/users"]:
        response = anonymous.get(url, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login"), url
    for url in API:
        assert anonymous.get(url).status_code == 401, url
    assert anonymous.get("/static/console.js").status_code == 200  # the login page needs its assets


def test_queue_filters_and_counts(app, org):
    viewer = client_as(app, "viewer")
    everything = viewer.get("/api/incidents").json()
    assert everything["incidents"] and sum(everything["counts"].values()) == len(everything["incidents"])
    one = everything["incidents"][0]
    narrowed = viewer.get("/api/incidents", params={"entity": one["risk_object"], "severity": one["severity"]}).json()
    assert narrowed["incidents"] and all(i["risk_object"] == one["risk_object"] for i in narrowed["incidents"])
    assert viewer.get("/api/incidents", params={"status": "closed"}).json()["incidents"] == []
    partial = viewer.get("/incidents", params={"status": "new"}, headers={"HX-Request": "true", "HX-Target": "queue"})
    assert partial.text.lstrip().startswith('<div id="queue">') and "<html" not in partial.text  # HTMX fragment
    assert viewer.get("/api/incidents", params={"status": "bogus"}).status_code == 400


def test_viewer_reads_but_cannot_triage_suppress_or_tune(app, incident_id):
    viewer = client_as(app, "viewer")
    token = csrf_of(viewer.get("/incidents").text)
    for url, data in ((f"/incidents/{incident_id}/assign", {"assignee": "viewer"}),
                      (f"/incidents/{incident_id}/status", {"status": "in_progress"}),
                      (f"/incidents/{incident_id}/comment", {"text": "hi"}),
                      ("/suppressions", {"detection": "em_fnum", "owner": "v", "reason": "r", "expires": "+1d"}),
                      ("/detections/em_fnum/override", {"parameter": "threshold", "value": "5"}),
                      ("/users", {"name": "x", "role": "admin", "password": "12345678"})):
        assert viewer.post(url, data={**data, "csrf_token": token}).status_code == 403, url
    assert viewer.get("/users").status_code == 403


def test_analyst_triages_with_an_audit_trail_and_is_offered_a_suppression(app, org, clock, incident_id):
    analyst = client_as(app, "analyst")
    page = analyst.get(f"/incidents/{incident_id}").text
    token = csrf_of(page)
    assert 'data-testid="suggested-suppression"' not in page
    base = f"/incidents/{incident_id}"
    assert analyst.post(f"{base}/assign", data={"assignee": "analyst", "csrf_token": token},
                        follow_redirects=False).status_code == 303
    clock.now += timedelta(minutes=5)
    analyst.post(f"{base}/comment", data={"text": "looked at the recipients", "csrf_token": token})
    bad = analyst.post(f"{base}/status", data={"status": "closed", "csrf_token": token})
    assert bad.status_code == 400 and "disposition" in bad.text  # closing needs one, said on the page
    analyst.post(f"{base}/status", data={"status": "closed", "disposition": "false_positive", "csrf_token": token})
    page = analyst.get(base).text
    assert 'data-testid="suggested-suppression"' in page and "+30d" in page
    state = open_state(org.home)
    incident = workflow.get_incident(state, incident_id)
    state.close()
    assert (incident["status"], incident["disposition"], incident["assignee"]) == ("closed", "false_positive", "analyst")
    assert [c["text"] for c in incident["comments"]] == ["looked at the recipients"]
    by_analyst = [a["action"] for a in incident["audit"] if a["actor"] == "analyst"]
    assert by_analyst == ["set_status", "comment", "assign"]  # newest first; the pipeline's own rows aside
    precision = {d["id"]: d for d in client_as(app, "viewer").get("/api/detections").json()}
    assert precision[incident["detection_id"]]["outcomes"] == {"false_positive": 1}
    assert precision[incident["detection_id"]]["precision"] == 0.0
    # the suggested suppression, accepted as offered
    form = dict(re.findall(r'name="(detection|entity|owner|reason|expires)" value="([^"]*)"',
                           page.split('data-testid="suggested-suppression"')[1]))
    assert analyst.post("/suppressions", data={**form, "csrf_token": token}, follow_redirects=False).status_code == 303
    state = open_state(org.home)
    added = stored_suppressions(state)[-1]
    trail = audit.trail(state, object_type="suppression", object_id=added.suppression_id)
    state.close()
    assert (added.owner, added.detection_id, added.reason) == ("analyst", form["detection"], form["reason"])
    assert added.expires == clock.now + timedelta(days=30)
    assert trail[0]["actor"] == "analyst" and trail[0]["action"] == "add"


def test_suppressions_edit_and_expire(app, org, clock):
    analyst = client_as(app, "analyst")
    token = csrf_of(analyst.get("/suppressions").text)
    analyst.post("/suppressions", data={"detection": "em_dnum", "entity": "someone*", "where": "em_dnum<50",
                                        "owner": "analyst", "reason": "a partner mailing", "expires": "+7d",
                                        "csrf_token": token})
    state = open_state(org.home)
    sid = stored_suppressions(state)[-1].suppression_id
    state.close()
    analyst.post(f"/suppressions/{sid}/edit", data={"detection": "em_dnum", "entity": "someone.else", "where": "",
                                                    "owner": "analyst", "reason": "narrowed", "expires": "+7d",
                                                    "csrf_token": token})
    analyst.post(f"/suppressions/{sid}/expire", data={"csrf_token": token})
    state = open_state(org.home)
    changed = next(s for s in stored_suppressions(state) if s.suppression_id == sid)
    actions = [a["action"] for a in audit.trail(state, object_type="suppression", object_id=sid)]
    state.close()
    assert (changed.entity, changed.reason, changed.conditions) == ("someone.else", "narrowed", {})
    assert not changed.active(clock.now) and actions == ["expire", "edit", "add"]
    page = analyst.get("/suppressions").text
    assert f'data-suppression="{sid}"' in page and "expired" in page
    error = analyst.post("/suppressions", data={"detection": "all", "owner": "a", "reason": "r", "expires": "+1d",
                                                "csrf_token": token})
    assert "name a detection, an entity or a condition" in error.text


def test_admin_tunes_a_detection_validated_as_config_is(app, org):
    admin = client_as(app, "admin")
    token = csrf_of(admin.get("/detections/em_fnum").text)
    rejected = admin.post("/detections/em_fnum/override", data={"parameter": "threshold", "value": "four",
                                                                "csrf_token": token})
    assert "&#39;four&#39; is not a number" in rejected.text or "'four' is not a number" in rejected.text
    admin.post("/detections/em_fnum/override", data={"parameter": "threshold", "value": "5", "csrf_token": token})
    admin.post("/detections/em_dnum/enabled", data={"enabled": "false", "csrf_token": token})
    state = open_state(org.home)
    assert stored_overrides(state) == {"em_fnum": {"threshold": "5"}}
    assert effective_settings(state, org.settings).detections["em_fnum"]["threshold"] == "5"
    assert disabled_detections(state) == {"em_dnum"}
    assert [a["action"] for a in audit.trail(state, object_type="detection")] == ["disable", "override"]
    state.close()
    api = {d["id"]: d for d in admin.get("/api/detections").json()}
    assert api["em_fnum"]["parameters"]["threshold"] == {"default": 4, "config": None, "override": "5",
                                                         "effective": "5"}
    assert api["em_dnum"]["enabled"] is False
    analyst = client_as(app, "analyst")
    assert analyst.post("/detections/em_dnum/enabled", data={"enabled": "true", "csrf_token": token}).status_code == 403


def test_csrf_token_required_on_every_change(app, incident_id):
    analyst = client_as(app, "analyst")
    token = csrf_of(analyst.get("/incidents").text)
    url = f"/incidents/{incident_id}/comment"
    assert analyst.post(url, data={"text": "no token"}).status_code == 403
    assert analyst.post(url, data={"text": "wrong", "csrf_token": "x" * 43}).status_code == 403
    other = client_as(app, "analyst")  # another session's token is not this one's
    assert analyst.post(url, data={"text": "theirs", "csrf_token": csrf_of(other.get("/incidents").text)}).status_code == 403
    assert analyst.post(url, data={"text": "by HTMX header"}, headers={"X-CSRF-Token": token},
                        follow_redirects=False).status_code == 303
    assert analyst.post("/logout").status_code == 403
    fresh = TestClient(analyst.app)
    assert fresh.post("/login", data={"name": "analyst", "password": PASSWORD}).status_code == 403


def test_lock_out_after_failed_logins_for_the_configured_minutes(app, clock):
    client = TestClient(app)
    for _ in range(5):
        assert login(client, "viewer", "wrong password!").status_code == 401
    locked = login(client, "viewer")
    assert locked.status_code == 401 and "locked" in locked.text
    clock.now += timedelta(minutes=14)
    assert login(client, "viewer").status_code == 401
    clock.now += timedelta(minutes=2)
    assert login(client, "viewer").status_code == 303
    unknown = login(TestClient(app), "nobody")
    assert unknown.status_code == 401 and "wrong user name or password" in unknown.text


def test_session_cookie_flags_security_headers_and_logout(app, org):
    client = TestClient(app)
    response = login(client, "viewer")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    page = client.get("/incidents")
    csp = page.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]*)", csp).group(1)
    assert script_src.strip() == "'self'"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)  # no inline script in a page
    client.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert client.get("/incidents", follow_redirects=False).status_code == 303
    secure = TestClient(create_app(org.home, org.settings, org.catalog, lambda: org.now, https=True),
                        base_url="https://testserver")
    assert "secure" in login(secure, "admin").headers["set-cookie"].lower()


def test_hostile_log_content_is_escaped(app, org):
    viewer = client_as(app, "viewer")
    state = open_state(org.home)
    leaks = [i for i in workflow.list_incidents(state) if "em_bsum_personal" in
             {e["detection_id"] for e in workflow.get_incident(state, i["incident_id"])["risk_events"]}]
    state.close()
    assert leaks, "the generated leak raised no incident"
    pages = [viewer.get(f"/incidents/{leaks[0]['incident_id']}").text, viewer.get("/sources").text,
             viewer.get("/findings").text, viewer.get(f"/entity/{HOSTILE_USER}").text]
    for payload in XSS[:2]:
        escaped = payload.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
        assert any(escaped in p for p in pages), payload
        assert not any(payload in p for p in pages), payload
    assert "javascript:alert(1)//&#34;onmouseover=alert(1)@gmail.com" in pages[0]  # a recipient, as text
    assert not re.search(r'href="javascript:', "".join(pages))


def test_admin_manages_users_from_the_console(app, org):
    admin = client_as(app, "admin")
    token = csrf_of(admin.get("/users").text)
    admin.post("/users", data={"name": "dana", "role": "viewer", "password": "long enough pw", "csrf_token": token})
    admin.post("/users/dana/role", data={"role": "analyst", "csrf_token": token})
    dana = client_as(app, "analyst")
    assert login(TestClient(app), "dana", "long enough pw").status_code == 303
    admin.post("/users/dana/remove", data={"csrf_token": token})
    assert login(TestClient(app), "dana", "long enough pw").status_code == 401
    state = open_state(org.home)
    assert [a["action"] for a in audit.trail(state, object_type="user", object_id="dana")] == ["remove", "set_role", "add"]
    state.close()
    assert "password" not in str(audit.trail(open_state(org.home), object_type="user"))
    assert dana.get("/incidents").status_code == 200


def test_entity_page_has_charts_with_the_flagged_session(app, org):
    viewer = client_as(app, "viewer")
    state = open_state(org.home)
    leak = next(i for i in workflow.list_incidents(state) if i["risk_object_type"] == "user")
    state.close()
    page = viewer.get(f"/entity/{leak['risk_object']}").text
    specs = re.findall(r"data-chart=\"([^\"]+)\" data-flagged=\"(\d+)\"", page)
    assert {"em_fnum", "em_dnum", "em_bsum", "em_bsum_personal", "risk"} <= {name for name, _ in specs}
    assert any(int(n) > 0 for _, n in specs)
    assert '\\u0022flagged\\u0022: true' in page or '"flagged": true' in page


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(home), *args],
                          input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_users_commands(tmp_path):
    home = tmp_path / "home"
    added = cli(home, "users", "add", "erin", "--role", "analyst", "--password-stdin", stdin="a long password\n")
    assert added.returncode == 0, added.stderr
    listed = cli(home, "users", "list", "--format", "csv")
    assert "erin,analyst" in listed.stdout
    assert cli(home, "users", "set-role", "erin", "admin").returncode == 0
    assert "erin,admin" in cli(home, "users", "list", "--format", "csv").stdout
    bad = cli(home, "users", "add", "frank", "--role", "root", "--password-stdin", stdin="a long password\n")
    assert bad.returncode == 2 and "role 'root'" in bad.stderr and "Traceback" not in bad.stderr
    short = cli(home, "users", "add", "frank", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    assert cli(home, "users", "remove", "erin").returncode == 0
    gone = cli(home, "users", "remove", "erin")
    assert gone.returncode == 2 and "no user 'erin'" in gone.stderr


def test_web_settings_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match=r"key 'service.web.prot': unknown key \(mistyped\?\); did you mean port\?"):
        parse_settings({"service": {"web": {"prot": 8080}}}, "config.yaml")
    with pytest.raises(ConfigError, match="both 'cert' and 'key'"):
        parse_settings({"service": {"web": {"cert": __file__}}}, "config.yaml")
    assert parse_settings({"service": {"web": {}}}, "c").service.web.port == 8080


def test_serve_mounts_the_console_over_https(tmp_path):
    import httpx

    from .servicekit import Served, service_config

    cert, key = tmp_path / "console.crt", tmp_path / "console.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    home = tmp_path / "home"
    assert cli(home, "users", "add", "gail", "--role", "viewer", "--password-stdin",
               stdin="a long password\n").returncode == 0
    served = Served(home, service_config(syslog=[], web={"host": "127.0.0.1", "port": 0, "cert": str(cert),
                                                         "key": str(key)})).start()
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{served.port('web')}", verify=str(cert)) as client:
            page = client.get("/login")
            assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
            response = client.post("/login", data={"name": "gail", "password": "a long password",
                                                   "csrf_token": csrf_of(page.text)})
            assert response.status_code == 303 and "secure" in response.headers["set-cookie"].lower()
            assert client.get("/api/incidents").json()["incidents"] == []
        assert served.stop() == 0
    finally:
        served.kill()


def test_sources_page_charts_lines_per_receiver_and_day_of_receipt(tmp_path):
    """A listener's batches count on the local day they were received (23:30 UTC is the next day in
    Berlin), a file's on the day it was last written; quarantined lines count where they came in."""
    import json
    from datetime import datetime, timezone

    from exfilwatch.config import Home, parse_settings
    from exfilwatch.detections.schema import load_detections
    from exfilwatch.events.cursors import SpoolCursor
    from exfilwatch.events.ingest import ingest_lines, ingest_paths, open_target
    from exfilwatch.home import writer
    from exfilwatch.sources import get_source
    from exfilwatch.web.users import SCHEMA as USERS, add_user

    from .test_ingest_lines import MESSAGE_END, MESSAGE_START

    home = Home(root=tmp_path / "home", config_path=tmp_path / "home" / "config.yaml")
    settings = parse_settings({"internal_domains": ["example.com"], "timezone": "Europe/Berlin"}, "test")
    listener = "tcp:6514@127.0.0.1"
    morning = datetime(2026, 11, 2, 9, 0, 30, tzinfo=timezone.utc)
    late = datetime(2026, 11, 2, 23, 30, tzinfo=timezone.utc)
    with open_target(home, settings) as target:
        ingest_lines(get_source("postfix"), [*MESSAGE_START, "not syslog at all", *MESSAGE_END],
                     SpoolCursor("tcp-6514", listener, 0, 6, True, morning), target)
        ingest_lines(get_source("postfix"), [*MESSAGE_START, *MESSAGE_END],
                     SpoolCursor("tcp-6514", listener, 6, 11, True, late), target)
    maillog = tmp_path / "maillog"
    maillog.write_text("\n".join([*MESSAGE_START, *MESSAGE_END]).replace("1A2B3C4D5E", "9F8E7D6C5B") + "\n")
    written = datetime(2026, 11, 5, 12, 0, tzinfo=timezone.utc).timestamp()
    os.utime(maillog, (written, written))
    with writer(home) as state:
        list(ingest_paths([maillog], home, settings, source_name="postfix"))
        state.migrate([USERS])
        add_user(state, "viewer", "viewer", PASSWORD, actor="test", now=late)
    client = TestClient(create_app(home, settings, load_detections(), lambda: late))
    assert login(client, "viewer").status_code == 303
    page = client.get("/sources").text
    spec = json.loads(re.search(r"data-chart=\"lines-received\" data-vega-spec='([^']*)'", page).group(1)
                      .replace("&#39;", "'").replace("&#34;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))
    counts = {(v["receiver"], v["day"], v["measure"]): v["count"] for v in spec["data"]["values"]}
    assert counts == {
        ("postfix · " + listener, "2026-11-02", "lines received"): 6,
        ("postfix · " + listener, "2026-11-02", "events written"): 1,
        ("postfix · " + listener, "2026-11-02", "lines skipped"): 0,
        ("postfix · " + listener, "2026-11-02", "lines quarantined"): 1,
        ("postfix · " + listener, "2026-11-03", "lines received"): 5,
        ("postfix · " + listener, "2026-11-03", "events written"): 1,
        ("postfix · " + listener, "2026-11-03", "lines skipped"): 0,
        ("postfix · " + listener, "2026-11-03", "lines quarantined"): 0,
        ("postfix · " + str(maillog), "2026-11-05", "lines received"): 5,
        ("postfix · " + str(maillog), "2026-11-05", "events written"): 1,
        ("postfix · " + str(maillog), "2026-11-05", "lines skipped"): 0,
        ("postfix · " + str(maillog), "2026-11-05", "lines quarantined"): 0,
    }
    # one row per receiver in the totals, however many spool batches it committed
    assert re.findall(rf'<td class="raw">{re.escape(listener)}</td><td class="num">(\d+)</td>', page) == ["2"]
