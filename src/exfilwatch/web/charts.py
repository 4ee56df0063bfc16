"""Vega-Lite specs for the console's charts, built in Python from the stage APIs' data.

Values from logs (user names, hosts, session ids) go into a spec's `data.values` only, never
into a title, label expression or any other place Vega reads as markup or code, and Vega
renders them as SVG text. Each spec is complete and self-contained: the browser only embeds it.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
FEATURE_LABELS = {"em_fnum": "EM-FNum: outgoing messages", "em_dnum": "EM-DNum: external recipient domains",
                  "em_bsum": "EM-BSum: bytes of outgoing mail",
                  "em_bsum_personal": "EM-BSum-personal: bytes to personal domains"}


def _base(title: str, width: int = 420, height: int = 180) -> dict[str, Any]:
    return {"$schema": SCHEMA, "title": title, "width": width, "height": height,
            "config": {"view": {"stroke": None}, "axis": {"labelFontSize": 10}}}


def session_feature_chart(feature: str, sessions: list[dict[str, Any]], flagged: set[str],
                          median: float | None, threshold: float | None) -> dict[str, Any]:
    """One EM feature's value per session, the user's model median and threshold as lines, and
    the flagged sessions (those with a finding of this feature) in red."""
    values = [{"session": s["session_id"], "end": s["session_end"], "value": s.get(feature) or 0,
               "flagged": s["session_id"] in flagged} for s in sessions]
    rules = [{"line": name, "y": y} for name, y in (("model median", median), ("threshold", threshold))
             if y is not None]
    spec = _base(FEATURE_LABELS.get(feature, feature))
    spec["layer"] = [
        {"data": {"values": values}, "mark": {"type": "point", "filled": True, "size": 60},
         "encoding": {"x": {"field": "end", "type": "temporal", "title": "session end"},
                      "y": {"field": "value", "type": "quantitative", "title": feature},
                      "color": {"field": "flagged", "type": "nominal", "title": "flagged",
                                "scale": {"domain": [False, True], "range": ["#4c78a8", "#d62728"]}},
                      "tooltip": [{"field": "session", "type": "nominal"}, {"field": "end", "type": "temporal"},
                                  {"field": "value", "type": "quantitative"}]}},
    ]
    if rules:
        spec["layer"].append(
            {"data": {"values": rules}, "mark": {"type": "rule", "strokeDash": [4, 3]},
             "encoding": {"y": {"field": "y", "type": "quantitative"},
                          "color": {"field": "line", "type": "nominal", "title": "model",
                                    "scale": {"domain": ["model median", "threshold"],
                                              "range": ["#2ca02c", "#ff7f0e"]}}}})
        spec["resolve"] = {"scale": {"color": "independent"}}
    return spec


def host_bytes_chart(days: list[dict[str, Any]], all_hosts: dict[str, Any], k: float,
                     direction: str = "in") -> dict[str, Any]:
    """A host's daily bytes from (in) or to (out) the mail servers, with the all-hosts mean + k·σ
    and the host's own mean + k·σ of the same days, as the network detections compare them."""
    field = f"bytes_{direction}"
    series = [d[field] or 0 for d in days]
    own_mean = sum(series) / len(series) if series else None
    own_sd = (sum((x - own_mean) ** 2 for x in series) / (len(series) - 1)) ** 0.5 if len(series) > 1 else None
    all_mean, all_sd = all_hosts.get(f"mean_{direction}"), all_hosts.get(f"stdev_{direction}")
    lines = []
    if all_mean is not None and all_sd is not None:
        lines.append({"line": f"all hosts mean + {k:g}σ", "y": all_mean + k * all_sd})
    if own_mean is not None and own_sd is not None:
        lines.append({"line": f"own mean + {k:g}σ", "y": own_mean + k * own_sd})
    spec = _base(f"bytes {'from' if direction == 'in' else 'to'} the mail servers per day")
    spec["layer"] = [
        {"data": {"values": [{"day": d["day"], "bytes": d[field] or 0} for d in days]},
         "mark": {"type": "bar"},
         "encoding": {"x": {"field": "day", "type": "temporal", "timeUnit": "yearmonthdate", "title": "day"},
                      "y": {"field": "bytes", "type": "quantitative", "title": f"bytes_{direction}"},
                      "tooltip": [{"field": "day", "type": "temporal"}, {"field": "bytes", "type": "quantitative"}]}},
    ]
    if lines:
        spec["layer"].append({"data": {"values": lines}, "mark": {"type": "rule", "strokeDash": [4, 3]},
                              "encoding": {"y": {"field": "y", "type": "quantitative"},
                                           "color": {"field": "line", "type": "nominal", "title": "baseline"}}})
    return spec


def risk_chart(timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """Risk over time: each risk event's score and the rolling 24-hour sum."""
    values = [{"time": r["time"], "score": r["score"], "risk_24h": r["risk_24h"], "rule": r["source"]}
              for r in timeline if r["kind"] == "risk"]
    spec = _base("risk over time")
    spec["data"] = {"values": values}
    spec["layer"] = [
        {"mark": {"type": "line", "interpolate": "step-after"},
         "encoding": {"x": {"field": "time", "type": "temporal"},
                      "y": {"field": "risk_24h", "type": "quantitative", "title": "risk in 24 h"}}},
        {"mark": {"type": "point", "filled": True},
         "encoding": {"x": {"field": "time", "type": "temporal"}, "y": {"field": "risk_24h", "type": "quantitative"},
                      "color": {"field": "rule", "type": "nominal"},
                      "tooltip": [{"field": "rule", "type": "nominal"}, {"field": "score", "type": "quantitative"},
                                  {"field": "time", "type": "temporal"}]}},
    ]
    return spec


def per_day_chart(title: str, rows: list[dict[str, Any]], x: str, y: str, color: str | None = None) -> dict[str, Any]:
    """A small bar chart of counts per day (findings of a detection, events of a source)."""
    spec = _base(title, width=360, height=120)
    spec["data"] = {"values": rows}
    spec["mark"] = {"type": "bar"}
    spec["encoding"] = {"x": {"field": x, "type": "temporal", "timeUnit": "yearmonthdate", "title": "day"},
                        "y": {"field": y, "type": "quantitative", "title": y}}
    if color:
        spec["encoding"]["color"] = {"field": color, "type": "nominal"}
    return spec


RECEIPT_MEASURES = {"lines": "lines received", "events": "events written", "skipped": "lines skipped",
                    "quarantined": "lines quarantined"}


def lines_received_chart(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Per source and receiver (one small chart each), lines received, events written, lines
    skipped and quarantined per day of receipt: a receiver that went quiet or started to
    quarantine shows as a drop or a rise."""
    values = [{"day": d["day"], "receiver": f"{d['source']} · {d['receiver']}", "measure": label, "count": d[key]}
              for d in days for key, label in RECEIPT_MEASURES.items()]
    spec = _base("lines per day of receipt", width=360, height=90)
    spec["data"] = {"values": values}
    spec["mark"] = {"type": "line", "point": True}
    spec["encoding"] = {
        "row": {"field": "receiver", "type": "nominal", "title": None, "header": {"labelAngle": 0, "labelAlign": "left"}},
        "x": {"field": "day", "type": "temporal", "timeUnit": "yearmonthdate", "title": "day received"},
        "y": {"field": "count", "type": "quantitative", "title": "lines or events"},
        "color": {"field": "measure", "type": "nominal", "sort": list(RECEIPT_MEASURES.values())},
        "tooltip": [{"field": "receiver", "type": "nominal"}, {"field": "day", "type": "temporal"},
                    {"field": "measure", "type": "nominal"}, {"field": "count", "type": "quantitative"}]}
    return spec
