"""One entity's story: risk events, suppressed findings, sessions and incidents, in time order.

An entity is named by any of its names (user, mail address, VPN account, host, IP); the entity
resolver finds its canonical name and aliases. The CLI's `entity` command and the console's
entity page both read `entity_timeline`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from exfilwatch.config import Settings
from exfilwatch.enrich.identities import EntityResolver
from exfilwatch.findings.store import query_findings
from exfilwatch.incidents.correlation import stored_incidents
from exfilwatch.risk.events import stored_risk_events
from exfilwatch.state import StateStore


def entity_timeline(state: StateStore, settings: Settings, name: str) -> dict[str, Any]:
    """Everything about one entity, in time order: risk events, suppressed findings, sessions, incidents."""
    resolver = EntityResolver(settings)
    canonical, aliases = resolver.aliases(name)
    names = sorted(aliases | {canonical})
    marks = ",".join("?" * len(names))
    events = stored_risk_events(state, f"WHERE risk_object IN ({marks}) OR source_object IN ({marks})",
                                     tuple(names) * 2)
    suppressed = [f for f in query_findings(state, suppressed=True)
                  if f["entity"] in aliases or any(str(o.get("value")) in aliases for o in f["risk_objects"])]
    incident_rows = stored_incidents(state, f"WHERE risk_object IN ({marks})", tuple(names))
    sessions: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["session_id"]:
            entry = sessions.setdefault(event["session_id"], {"session_id": event["session_id"], "rules": {},
                                                              "first": event["time"], "last": event["time"]})
            entry["rules"][event["detection_id"]] = max(entry["rules"].get(event["detection_id"], 0), event["raw_score"])
            entry["first"], entry["last"] = min(entry["first"], event["time"]), max(entry["last"], event["time"])
    for fields in (f["fields"] for f in query_findings(state, suppressed=None, entities=names)):
        sid = fields.get("session_id")
        if sid in sessions:
            for key in ("session_start", "session_end", "end_reason", "boundary_source", "session_kind"):
                if fields.get(key) is not None:
                    sessions[sid][key] = fields[key]
    timeline: list[dict[str, Any]] = []
    window: list[tuple[datetime, float]] = []
    for event in events:
        when = datetime.fromisoformat(event["time"])
        window = [(t, s) for t, s in window if t > when - timedelta(hours=24)] + [(when, event["score"])]
        source = "" if event["source_object"] == event["risk_object"] else f" [{event['source_object']}]"
        timeline.append({"time": event["time"], "kind": "risk", "source": event["detection_id"],
                         "score": event["score"], "risk_24h": round(sum(s for _, s in window), 2),
                         "detail": f"{event['message']}{source} ({', '.join(event['tactics']) or 'no tactic'})"})
    for finding in suppressed:
        timeline.append({"time": finding["time"], "kind": "suppressed", "source": finding["detection_id"],
                         "score": 0, "risk_24h": None,
                         "detail": f"{finding['message']} (suppressed by {finding['suppression_id']})"})
    notable = float(settings.detections.get("notable_session", {}).get("notable_score", 90))
    for session in sessions.values():
        score = round(sum(session["rules"].values()), 2)
        span = ""
        if session.get("session_start") or session.get("session_end"):
            span = f"{session.get('session_kind') or ''} session {session.get('session_start')} to {session.get('session_end')}"
            span += f", ended by {session['end_reason']}" if session.get("end_reason") else ""
            span = span.strip() + ": "
        timeline.append({"time": session["last"], "kind": "session", "source": session["session_id"], "score": score,
                         "risk_24h": None,
                         "detail": f"{span}session score {score:g} from {len(session['rules'])} rules "
                                   f"({', '.join(sorted(session['rules']))})" + (" — NOTABLE" if score >= notable else "")})
    for incident in incident_rows:
        timeline.append({"time": incident["raised_at"], "kind": f"INCIDENT {incident['severity']}",
                         "source": incident["detection_id"], "score": incident["score"], "risk_24h": None,
                         "detail": f"#{incident['incident_id']} {incident['message']}"})
    order = {"risk": 0, "suppressed": 0, "session": 1}
    timeline.sort(key=lambda r: (r["time"], order.get(r["kind"], 2)))
    identity = resolver.identities.get(canonical, {})
    return {"entity": canonical, "aliases": sorted(aliases - {canonical}), "identity": identity,
            "asset": resolver.asset(canonical) if canonical == name else None,
            "risk_events": len(events), "total_risk": round(sum(e["score"] for e in events), 2),
            "suppressed_findings": len(suppressed), "incidents": len(incident_rows),
            "sessions": list(sessions.values()), "timeline": timeline}
