"""The console's FastAPI application: server-side pages (Jinja2, autoescaped) with HTMX partial
updates, and the same data as JSON under `/api/` (in the OpenAPI page at `/docs`).

Contract. `create_app(home, settings, catalog, now_fn)` builds the app over a home; `now_fn` is
the clock (the front end passes the wall clock; tests pass a fixed time). Every page reads
through the stages' functions (findings store, incident workflow, entity timeline,
suppressions, detection overrides and schedule, lake statistics), never SQL of its own. Reads
hold the home's readers lock; the few writes (incident workflow, suppressions, detection
overrides, users) hold the writer lock as a CLI command does (re-entrant: inside `exfilwatch
serve`, which holds it already, they go straight on) and are recorded in the audit trail with
the logged-in user as actor.

Security. Log content is hostile: templates autoescape everything and never mark log data
safe; chart specs carry log values as data only. Every response has a Content-Security-Policy
without inline or eval'd scripts (all JavaScript is in static files; Vega runs its expression
interpreter). Sessions are a signed cookie (HttpOnly, SameSite=Lax, Secure under TLS) holding
the user name and a CSRF token; every POST must carry the token (form field `csrf_token` or
header `X-CSRF-Token`) or is refused with 403. Roles: viewer reads, analyst also triages and
suppresses, admin also changes detections and users.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.middleware.sessions import SessionMiddleware

from exfilwatch import attack, audit
from exfilwatch.config import Home, Settings, validation_error
from exfilwatch.detections.overrides import (disabled_detections, effective_settings, set_enabled, set_override,
                                             stored_overrides)
from exfilwatch.detections.schedule import run_summary
from exfilwatch.detections.schema import Detection
from exfilwatch.errors import ExfilwatchError
from exfilwatch.events.engine import connect
from exfilwatch.events.stats import events_per_day, lines_per_day, quarantined, source_totals
from exfilwatch.features.baselines import SESSION_FEATURES, host_daily_mail_bytes, user_session_series
from exfilwatch.findings.store import findings_by_keys, query_findings
from exfilwatch.findings.suppressions import (add_suppression, all_suppressions, expire_suppression,
                                              hidden_findings, parse_where, suppression_hits, update_suppression)
from exfilwatch.home import reader, writer
from exfilwatch.incidents import workflow
from exfilwatch.incidents.correlation import SEVERITY_RANK
from exfilwatch.incidents.timeline import entity_timeline
from exfilwatch.riskconfig import SuppressionSpec
from exfilwatch.state import StateStore
from exfilwatch.timeexpr import as_time, parse_time
from exfilwatch.web import charts
from exfilwatch.web.users import (ROLES, SCHEMA as USERS, LoginRefused, add_user, authenticate, get_user,
                                  list_users, remove_user, set_role)

HERE = Path(__file__).parent
SECRET_FILE = "web_secret.key"
WRITE_TIMEOUT = 10.0  # seconds a console change waits for another writer (a running `exfilwatch run`)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
RANK = {role: n for n, role in enumerate(ROLES)}
USER_RULES = ("em_fnum", "em_dnum", "em_bsum", "em_bsum_personal")
HOST_RULES = ("hosts_receiving_high_volume_of_network_traffic_from_email_server",
              "email_servers_sending_high_volume_traffic_to_hosts")
MODEL_DAYS = 90  # the EM rules' model window (their `history`)
HOST_DAYS = 30  # the network detections' baseline (their `history`)


class NeedLogin(Exception):
    pass


class Console:
    """What every request shares: the home, its settings and catalog, the clock."""

    def __init__(self, home: Home, settings: Settings, catalog: dict[str, Detection], now_fn: Callable[[], datetime]):
        self.home, self.settings, self.catalog, self.now_fn = home, settings, catalog, now_fn

    @contextmanager
    def read(self) -> Iterator[StateStore]:
        with reader(self.home) as state:
            yield state

    @contextmanager
    def write(self) -> Iterator[StateStore]:
        with writer(self.home, WRITE_TIMEOUT) as state:
            state.migrate([USERS])
            yield state

    def names(self) -> dict[str, str]:
        return {d.id: d.name for d in self.catalog.values()}

    def techniques(self) -> dict[str, list[str]]:
        return {d.id: list(d.tags.mitre_attack_id) for d in self.catalog.values()}


def _secret(home: Home) -> str:
    """The key that signs session cookies: made once per home, readable by its owner only."""
    path = home.root / SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


def create_app(home: Home, settings: Settings, catalog: dict[str, Detection], now_fn: Callable[[], datetime], *,
               https: bool = False) -> FastAPI:
    """The console over `home`; `https` marks the session cookie Secure (served over TLS)."""
    home.create()
    console = Console(home, settings, catalog, now_fn)
    with console.write():  # the users table, made before the first login
        pass
    web = settings.service.web
    max_failures = web.max_failed_logins if web else 5
    lock_minutes = web.lockout_minutes if web else 15
    session_hours = web.session_hours if web else 12

    # /docs is served below from the vendored Swagger UI: FastAPI's own page loads it from a CDN
    # with an inline bootstrap, which neither works offline nor passes the CSP.
    app = FastAPI(title="exfilwatch console", version="1", docs_url=None, redoc_url=None,
                  description="The console's data as JSON: incidents, findings, entity timelines, detections. "
                              "Log in at /login first; the session cookie authorises these calls.")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True
    tz = settings.tz
    templates.env.filters["local"] = lambda text: _local(text, tz)
    templates.env.globals.update(roles=ROLES, severities=list(SEVERITY_RANK), statuses=workflow.STATUSES,
                                 dispositions=workflow.DISPOSITIONS, attack_url=_attack_url, timezone=settings.timezone)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith("/static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # added after: outermost, so the session is there for the handlers and the headers above
    app.add_middleware(SessionMiddleware, secret_key=_secret(home), session_cookie="exfilwatch_session",
                       max_age=int(session_hours * 3600), same_site="lax", https_only=https)

    @app.exception_handler(NeedLogin)
    async def _login_first(request: Request, exc: NeedLogin) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "log in first"}, status_code=401)
        if request.headers.get("HX-Request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(ExfilwatchError)
    async def _user_error(request: Request, exc: ExfilwatchError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return page(request, "error.html", {"message": str(exc)}, status=400)

    # --- sessions, roles, CSRF ------------------------------------------------------------------

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def current_user(request: Request) -> dict[str, Any]:
        name = request.session.get("user")
        if not name:
            raise NeedLogin()
        with console.read() as state:
            user = get_user(state, name)
        if user is None:  # removed since: the session ends
            request.session.clear()
            raise NeedLogin()
        return user

    def role(minimum: str) -> Callable[..., dict[str, Any]]:
        def check(request: Request, user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
            if RANK[user["role"]] < RANK[minimum]:
                raise HTTPException(403, f"this needs the {minimum} role; you are {user['role']}")
            return user
        return check

    async def csrf(request: Request) -> None:
        expected = request.session.get("csrf")
        sent = request.headers.get("X-CSRF-Token")
        if sent is None:
            form = await request.form()
            sent = form.get("csrf_token")
        if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

    viewer, analyst, admin = role("viewer"), role("analyst"), role("admin")

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        name_in_session = request.session.get("user")
        user = context.pop("user", None) or ({"name": name_in_session} if name_in_session else None)
        return templates.TemplateResponse(request, name, {"user": user, "csrf": csrf_token(request),
                                                          "path": request.url.path, **context}, status_code=status)

    def back(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def now() -> datetime:
        return console.now_fn()

    def when(text: str | None) -> datetime | None:
        return parse_time(text, now(), settings.timezone) if text and text.strip() else None

    # --- login ----------------------------------------------------------------------------------

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/incidents") -> HTMLResponse:
        return page(request, "login.html", {"next": next})

    @app.post("/login", include_in_schema=False, dependencies=[Depends(csrf)])
    def login(request: Request, name: str = Form(...), password: str = Form(...),
              next: str = Form("/incidents")) -> Response:
        at = now()
        try:
            with console.write() as state:
                user = authenticate(state, name, password, at, max_failures=max_failures, lock_minutes=lock_minutes)
        except LoginRefused as exc:
            return page(request, "login.html", {"next": next, "error": str(exc)}, status=401)
        request.session.clear()  # a fresh session (and CSRF token) at every login
        request.session["user"] = user["name"]
        csrf_token(request)
        return back(next if next.startswith("/") and not next.startswith("//") else "/incidents")

    @app.post("/logout", include_in_schema=False, dependencies=[Depends(csrf)])
    def logout(request: Request) -> Response:
        request.session.clear()
        return back("/login")

    @app.get("/", include_in_schema=False)
    def home_page(user: dict[str, Any] = Depends(viewer)) -> Response:
        return back("/incidents")

    # --- incidents ------------------------------------------------------------------------------

    def incident_filter(status: str | None, severity: str | None, rule: str | None, entity: str | None,
                        assignee: str | None, start: str | None, end: str | None) -> workflow.IncidentFilter:
        return workflow.IncidentFilter(status=status or None, severity=severity or None, detection_id=rule or None,
                                       entity=entity or None, assignee=assignee or None, start=when(start),
                                       end=when(end))

    @app.get("/incidents", include_in_schema=False)
    def incidents_page(request: Request, status: str = "", severity: str = "", rule: str = "", entity: str = "",
                       assignee: str = "", start: str = "", end: str = "",
                       user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        where = incident_filter(status, severity, rule, entity, assignee, start, end)
        with console.read() as state:
            rows = workflow.list_incidents(state, where)
            counts = workflow.severity_counts(state, where)
        context = {"user": user, "incidents": rows, "counts": counts, "names": console.names(),
                   "rules": sorted(d.id for d in catalog.values() if d.type == "correlation"),
                   "filters": {"status": status, "severity": severity, "rule": rule, "entity": entity,
                               "assignee": assignee, "start": start, "end": end}}
        partial = request.headers.get("HX-Request") and request.headers.get("HX-Target") == "queue"
        return page(request, "_queue.html" if partial else "incidents.html", context)

    def incident_detail(state: StateStore, incident_id: int) -> dict[str, Any]:
        incident = workflow.get_incident(state, incident_id)
        if incident is None:
            raise HTTPException(404, f"no incident {incident_id}")
        keys = list(dict.fromkeys(e["finding_key"] for e in incident["risk_events"]))
        findings = findings_by_keys(state, keys, console.names(), console.techniques())
        timeline = entity_timeline(state, settings, incident["risk_object"])
        first, last = as_time(incident["first_time"]), as_time(incident["last_time"])
        window = (first - timedelta(days=1), last + timedelta(days=1)) if first and last else None
        activity = [r for r in timeline["timeline"]
                    if window is None or window[0] <= as_time(r["time"]) <= window[1]]
        return {"incident": incident, "findings": [explain(f) for f in findings], "activity": activity,
                "entity": timeline}

    def explain(finding: dict[str, Any]) -> dict[str, Any]:
        fields = finding["fields"]
        techniques = [{"id": tid, "name": (attack.technique(tid) or {}).get("name", tid),
                       "tactics": [{"short": t, "name": attack.tactic_name(t), "id": attack.tactic_id(t)}
                                   for t in (attack.technique(tid) or {}).get("tactics", [])]}
                      for tid in finding.get("mitre_attack_id") or []]
        evidence = {key: fields[key] for key in ("top_recipients", "top_domains", "largest_messages",
                                                 "largest_personal_messages") if fields.get(key)}
        facts = {key: fields[key] for key in ("feature", "observed", "expected", "times_threshold", "deviation",
                                              "deviation_unit", "threshold_kind", "model_sessions", "session_id",
                                              "session_kind", "session_start", "session_end", "end_reason",
                                              "boundary_source", "src_ip", "bytes_in", "avg_bytes_in",
                                              "per_source_avg_bytes_in",
                                              "num_standard_deviations_away_from_server_average",
                                              "num_standard_deviations_away_from_client_average")
                 if fields.get(key) not in (None, "")}
        return {**finding, "techniques": techniques, "evidence": evidence, "facts": facts}

    @app.get("/incidents/{incident_id}", include_in_schema=False)
    def incident_page(request: Request, incident_id: int, user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        with console.read() as state:
            detail = incident_detail(state, incident_id)
        return page(request, "incident.html", {"user": user, **detail, "suggestion": suggestion(detail, user)})

    def suggestion(detail: dict[str, Any], user: dict[str, Any]) -> dict[str, Any] | None:
        """A suppression pre-filled from the first finding of an incident closed as a false positive."""
        incident = detail["incident"]
        if incident["disposition"] != "false_positive" or not detail["findings"]:
            return None
        finding = detail["findings"][0]
        return {"detection": finding["detection_id"], "entity": finding["entity"], "owner": user["name"],
                "reason": f"false positive (incident #{incident['incident_id']})", "expires": "+30d"}

    @app.post("/incidents/{incident_id}/assign", include_in_schema=False, dependencies=[Depends(csrf)])
    def incident_assign(incident_id: int, assignee: str = Form(""), user: dict[str, Any] = Depends(analyst)) -> Response:
        with console.write() as state:
            workflow.assign(state, incident_id, assignee.strip() or None, actor=user["name"], now=now())
        return back(f"/incidents/{incident_id}")

    @app.post("/incidents/{incident_id}/comment", include_in_schema=False, dependencies=[Depends(csrf)])
    def incident_comment(incident_id: int, text: str = Form(...), user: dict[str, Any] = Depends(analyst)) -> Response:
        with console.write() as state:
            workflow.add_comment(state, incident_id, text, actor=user["name"], now=now())
        return back(f"/incidents/{incident_id}")

    @app.post("/incidents/{incident_id}/status", include_in_schema=False, dependencies=[Depends(csrf)])
    def incident_status(incident_id: int, status: str = Form(...), disposition: str = Form(""),
                        user: dict[str, Any] = Depends(analyst)) -> Response:
        with console.write() as state:
            workflow.set_status(state, incident_id, status, disposition=disposition or None, actor=user["name"],
                                now=now())
        return back(f"/incidents/{incident_id}")

    # --- entity ---------------------------------------------------------------------------------

    def entity_charts(state: StateStore, name: str, report: dict[str, Any]) -> list[dict[str, Any]]:
        canonical = report["entity"]
        found = query_findings(state, suppressed=None, entities=sorted({canonical, name, *report["aliases"]}))
        end = max((as_time(f["time"]) for f in found), default=now()) + timedelta(days=1)
        effective = effective_settings(state, settings)
        out: list[dict[str, Any]] = []
        con = connect(settings, home.spill_dir)
        try:
            sessions = user_session_series(con, state, settings, canonical, end - timedelta(days=MODEL_DAYS), end)
            if sessions:
                for feature in SESSION_FEATURES:
                    own = [f for f in found if f["detection_id"] == feature]
                    latest = own[-1]["fields"] if own else {}
                    spec = charts.session_feature_chart(
                        feature, sessions, {f["fields"].get("session_id") for f in own},
                        latest.get("model_median"), latest.get("threshold"))
                    out.append({"id": feature, "spec": spec, "flagged": len(own)})
            hosts = [canonical] + [a for a in report["aliases"]]
            for host in hosts:
                daily = host_daily_mail_bytes(con, state, settings, host, end - timedelta(days=HOST_DAYS), end)
                if not daily["days"]:
                    continue
                for direction, rule in (("in", HOST_RULES[0]), ("out", HOST_RULES[1])):
                    detection = catalog.get(rule)
                    k = float(effective.detections.get(rule, {}).get(
                        "deviation_threshold", detection.parameters["deviation_threshold"].default if detection else 3))
                    out.append({"id": f"bytes_{direction}", "spec": charts.host_bytes_chart(daily["days"],
                                                                                            daily["all_hosts"], k,
                                                                                            direction),
                                "flagged": 0})
                break
        finally:
            con.close()
        if any(r["kind"] == "risk" for r in report["timeline"]):
            out.append({"id": "risk", "spec": charts.risk_chart(report["timeline"]), "flagged": 0})
        return out

    @app.get("/entity/{name:path}", include_in_schema=False)
    def entity_page(request: Request, name: str, user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        with console.read() as state:
            report = entity_timeline(state, settings, name)
            chart_list = entity_charts(state, name, report)
        return page(request, "entity.html", {"user": user, "name": name, "report": report, "charts": chart_list})

    # --- findings -------------------------------------------------------------------------------

    def search_findings(state: StateStore, detection: str, entity: str, start: str, end: str, min_value: str,
                        show: str) -> list[dict[str, Any]]:
        suppressed = {"all": None, "suppressed": True, "active": False}.get(show, None)
        rows = query_findings(state, [detection] if detection else None, suppressed,
                              [entity] if entity else None, names=console.names(), techniques=console.techniques())
        first, last = when(start), when(end)
        floor = float(min_value) if min_value.strip() else None
        return [r for r in rows if (first is None or as_time(r["time"]) >= first)
                and (last is None or as_time(r["time"]) < last)
                and (floor is None or (r["value"] is not None and float(r["value"]) >= floor))][::-1]

    @app.get("/findings", include_in_schema=False)
    def findings_page(request: Request, detection: str = "", entity: str = "", start: str = "", end: str = "",
                      min_value: str = "", show: str = "all", user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        try:
            float(min_value) if min_value.strip() else None
        except ValueError:
            raise HTTPException(400, f"value {min_value!r} is not a number") from None
        with console.read() as state:
            rows = search_findings(state, detection, entity, start, end, min_value, show)
        context = {"user": user, "findings": rows[:500], "total": len(rows), "detections": sorted(catalog),
                   "filters": {"detection": detection, "entity": entity, "start": start, "end": end,
                               "min_value": min_value, "show": show}}
        partial = request.headers.get("HX-Request") and request.headers.get("HX-Target") == "results"
        return page(request, "_findings.html" if partial else "findings.html", context)

    # --- detections -----------------------------------------------------------------------------

    def detection_rows(state: StateStore) -> list[dict[str, Any]]:
        runs = run_summary(state)
        disabled = disabled_detections(state)
        effective = effective_settings(state, settings)
        per_day: dict[str, Counter[str]] = defaultdict(Counter)
        for f in query_findings(state, suppressed=None):
            per_day[f["detection_id"]][_local_day(f["time"], tz)] += 1
        outcomes = workflow.dispositions_by_detection(state)
        out = []
        for d in sorted(catalog.values(), key=lambda d: d.id):
            run = runs.get(d.id, {})
            mark = as_time(run.get("watermark"))
            outcome = Counter(outcomes.get(d.id, {}))
            closed = sum(outcome.values())
            true = outcome["true_positive"] + outcome["benign_true_positive"]
            out.append({"detection": d, "enabled": d.id not in disabled, "run": run,
                        "lag": _lag(now() - mark) if mark else None,
                        "findings_per_day": [{"day": day, "findings": n} for day, n in sorted(per_day[d.id].items())],
                        "findings": sum(per_day[d.id].values()), "outcomes": dict(outcome), "closed": closed,
                        "precision": round(true / closed, 2) if closed else None,
                        "config": settings.detections.get(d.id, {}), "overrides": {},
                        "effective": effective.detections.get(d.id, {})})
        stored = stored_overrides(state)
        for row in out:
            row["overrides"] = stored.get(row["detection"].id, {})
        return out

    @app.get("/detections", include_in_schema=False)
    def detections_page(request: Request, user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        with console.read() as state:
            rows = detection_rows(state)
        return page(request, "detections.html", {"user": user, "rows": rows})

    @app.get("/detections/{detection_id}", include_in_schema=False)
    def detection_page(request: Request, detection_id: str, user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        if detection_id not in catalog:
            raise HTTPException(404, f"no detection {detection_id}")
        with console.read() as state:
            row = next(r for r in detection_rows(state) if r["detection"].id == detection_id)
            trail = audit.trail(state, object_type="detection", object_id=detection_id)
        chart = charts.per_day_chart("findings per day", row["findings_per_day"], "day", "findings")
        return page(request, "detection.html", {"user": user, "row": row, "trail": trail, "chart": chart,
                                                "error": request.query_params.get("error")})

    @app.post("/detections/{detection_id}/override", include_in_schema=False, dependencies=[Depends(csrf)])
    def detection_override(detection_id: str, parameter: str = Form(...), value: str = Form(""),
                           clear: str = Form(""), user: dict[str, Any] = Depends(admin)) -> Response:
        try:
            with console.write() as state:
                set_override(state, settings, catalog, detection_id, parameter,
                             None if clear else value, actor=user["name"], now=now())
        except ExfilwatchError as exc:
            return back(f"/detections/{quote(detection_id)}?error={quote(str(exc))}")
        return back(f"/detections/{quote(detection_id)}")

    @app.post("/detections/{detection_id}/enabled", include_in_schema=False, dependencies=[Depends(csrf)])
    def detection_enabled(detection_id: str, enabled: str = Form(...), user: dict[str, Any] = Depends(admin)) -> Response:
        with console.write() as state:
            set_enabled(state, catalog, detection_id, enabled == "true", actor=user["name"], now=now())
        return back(f"/detections/{quote(detection_id)}")

    # --- suppressions ---------------------------------------------------------------------------

    @app.get("/suppressions", include_in_schema=False)
    def suppressions_page(request: Request, user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        at = now()
        with console.read() as state:
            items = all_suppressions(state, settings, at)
            hits = suppression_hits(state)
            hidden = hidden_findings(state)
        prefill = {k: request.query_params.get(k, "") for k in ("detection", "entity", "owner", "reason", "expires")}
        return page(request, "suppressions.html", {
            "user": user, "prefill": prefill, "detections": sorted(catalog), "error": request.query_params.get("error"),
            "items": [{"s": s, "active": s.active(at), "hits": hits.get(s.suppression_id, 0),
                       "hidden": hidden.get(s.suppression_id, [])[:20],
                       "where": "\n".join(f"{k}={v}" for k, v in s.conditions.items() if not isinstance(v, dict))}
                      for s in items]})

    def suppression_spec(detection: str, entity: str, where: str, owner: str, reason: str,
                         expires: str) -> SuppressionSpec:
        try:
            return SuppressionSpec(detection=detection or "all", entity=entity.strip() or None,
                                   where=parse_where([line for line in where.splitlines() if line.strip()]),
                                   owner=owner, reason=reason, expires=expires)
        except ValidationError as exc:
            raise validation_error(exc, "suppression") from None

    @app.post("/suppressions", include_in_schema=False, dependencies=[Depends(csrf)])
    def suppression_add(detection: str = Form("all"), entity: str = Form(""), where: str = Form(""),
                        owner: str = Form(...), reason: str = Form(...), expires: str = Form(...),
                        user: dict[str, Any] = Depends(analyst)) -> Response:
        try:
            spec = suppression_spec(detection, entity, where, owner, reason, expires)
            with console.write() as state:
                add_suppression(state, settings, spec, now(), actor=user["name"])
        except ExfilwatchError as exc:
            return back("/suppressions?error=" + quote(str(exc)))
        return back("/suppressions")

    @app.post("/suppressions/{suppression_id}/edit", include_in_schema=False, dependencies=[Depends(csrf)])
    def suppression_edit(suppression_id: str, detection: str = Form("all"), entity: str = Form(""),
                         where: str = Form(""), owner: str = Form(...), reason: str = Form(...),
                         expires: str = Form(...), user: dict[str, Any] = Depends(analyst)) -> Response:
        try:
            spec = suppression_spec(detection, entity, where, owner, reason, expires)
            with console.write() as state:
                update_suppression(state, settings, suppression_id, spec, now(), actor=user["name"])
        except ExfilwatchError as exc:
            return back("/suppressions?error=" + quote(str(exc)))
        return back("/suppressions")

    @app.post("/suppressions/{suppression_id}/expire", include_in_schema=False, dependencies=[Depends(csrf)])
    def suppression_expire(suppression_id: str, user: dict[str, Any] = Depends(analyst)) -> Response:
        with console.write() as state:
            expire_suppression(state, suppression_id, now(), actor=user["name"])
        return back("/suppressions")

    # --- sources --------------------------------------------------------------------------------

    @app.get("/sources", include_in_schema=False)
    def sources_page(request: Request, page_no: int = 0, user: dict[str, Any] = Depends(viewer)) -> HTMLResponse:
        with console.read() as state:
            totals = source_totals(state)
            days = events_per_day(state)
            received = lines_per_day(state, settings.timezone)
            total, lines = quarantined(state, 200, page_no * 200)
        chart = charts.per_day_chart("events written per day of event time", days, "day", "events", color="source")
        received_chart = charts.lines_received_chart(received)
        return page(request, "sources.html", {"user": user, "totals": totals, "chart": chart,
                                              "received_chart": received_chart,
                                              "quarantine_total": total, "quarantine": lines, "page_no": page_no})

    # --- users ----------------------------------------------------------------------------------

    @app.get("/users", include_in_schema=False)
    def users_page(request: Request, user: dict[str, Any] = Depends(admin)) -> HTMLResponse:
        with console.read() as state:
            users = list_users(state)
        return page(request, "users.html", {"user": user, "users": users, "error": request.query_params.get("error")})

    @app.post("/users", include_in_schema=False, dependencies=[Depends(csrf)])
    def users_add(name: str = Form(...), role_name: str = Form(..., alias="role"), password: str = Form(...),
                  user: dict[str, Any] = Depends(admin)) -> Response:
        try:
            with console.write() as state:
                add_user(state, name, role_name, password, actor=user["name"], now=now())
        except ExfilwatchError as exc:
            return back("/users?error=" + quote(str(exc)))
        return back("/users")

    @app.post("/users/{name}/role", include_in_schema=False, dependencies=[Depends(csrf)])
    def users_role(name: str, role_name: str = Form(..., alias="role"), user: dict[str, Any] = Depends(admin)) -> Response:
        with console.write() as state:
            set_role(state, name, role_name, actor=user["name"], now=now())
        return back("/users")

    @app.post("/users/{name}/remove", include_in_schema=False, dependencies=[Depends(csrf)])
    def users_remove(name: str, user: dict[str, Any] = Depends(admin)) -> Response:
        with console.write() as state:
            remove_user(state, name, actor=user["name"], now=now())
        return back("/users")

    # --- JSON -----------------------------------------------------------------------------------

    @app.get("/docs", include_in_schema=False)
    def openapi_page(request: Request) -> HTMLResponse:
        """The API's OpenAPI description in Swagger UI, from the vendored files (works offline)."""
        return templates.TemplateResponse(request, "openapi.html", {"openapi_url": app.openapi_url})

    @app.get("/api/incidents", tags=["incidents"])
    def api_incidents(status: str = "", severity: str = "", rule: str = "", entity: str = "", assignee: str = "",
                      start: str = "", end: str = "", limit: int = 200, offset: int = 0,
                      user: dict[str, Any] = Depends(viewer)) -> dict[str, Any]:
        """The incident queue, newest first, with the counts per severity (filters as on the page)."""
        where = incident_filter(status, severity, rule, entity, assignee, start, end)
        with console.read() as state:
            return {"incidents": workflow.list_incidents(state, where, limit=limit, offset=offset),
                    "counts": workflow.severity_counts(state, where)}

    @app.get("/api/incidents/{incident_id}", tags=["incidents"])
    def api_incident(incident_id: int, user: dict[str, Any] = Depends(viewer)) -> dict[str, Any]:
        """One incident: workflow, comments, audit trail, risk events, explained findings, entity activity."""
        with console.read() as state:
            detail = incident_detail(state, incident_id)
        return {**detail["incident"], "findings": detail["findings"], "activity": detail["activity"]}

    @app.get("/api/findings", tags=["findings"])
    def api_findings(detection: str = "", entity: str = "", start: str = "", end: str = "", min_value: str = "",
                     show: str = "all", user: dict[str, Any] = Depends(viewer)) -> list[dict[str, Any]]:
        """Findings, newest first; `show`: all, active (not suppressed) or suppressed."""
        with console.read() as state:
            return search_findings(state, detection, entity, start, end, min_value, show)

    @app.get("/api/entities/{name}/timeline", tags=["entities"])
    def api_entity(name: str, user: dict[str, Any] = Depends(viewer)) -> dict[str, Any]:
        """An entity (user, address, account, host, IP) and its timeline, as `exfilwatch entity` shows it."""
        with console.read() as state:
            return entity_timeline(state, settings, name)

    @app.get("/api/detections", tags=["detections"])
    def api_detections(user: dict[str, Any] = Depends(viewer)) -> list[dict[str, Any]]:
        """Each detection: metadata, parameters (default, config, override, effective), runs, dispositions."""
        with console.read() as state:
            rows = detection_rows(state)
        return [{"id": r["detection"].id, "name": r["detection"].name, "type": r["detection"].type,
                 "description": r["detection"].description, "mitre_attack_id": list(r["detection"].tags.mitre_attack_id),
                 "schedule": r["detection"].schedule.cron, "enabled": r["enabled"], "last_run": r["run"].get("last_run"),
                 "watermark": r["run"].get("watermark"), "lag": r["lag"], "findings": r["findings"],
                 "outcomes": r["outcomes"], "precision": r["precision"],
                 "parameters": {name: {"default": spec.default, "config": r["config"].get(name),
                                       "override": r["overrides"].get(name), "effective": r["effective"].get(name, spec.default)}
                                for name, spec in r["detection"].parameters.items()}}
                for r in rows]

    return app


def _local(text: str | None, tz: Any) -> str:
    value = as_time(text) if isinstance(text, str) else text
    if value is None:
        return text or ""
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _local_day(text: str, tz: Any) -> str:
    value = as_time(text)
    return value.astimezone(tz).date().isoformat() if value else text[:10]


def _lag(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 1440}d {minutes % 1440 // 60}h" if minutes >= 1440 else f"{minutes // 60}h {minutes % 60}m"


def _attack_url(technique_id: str) -> str:
    """The technique's page on attack.mitre.org (T1048.003 → /techniques/T1048/003/)."""
    return "https://attack.mitre.org/techniques/" + technique_id.replace(".", "/") + "/"
