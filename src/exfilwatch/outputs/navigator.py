"""The ATT&CK techniques the enabled detections cover, as an ATT&CK Navigator layer (format 4.5).

One technique entry per technique and tactic (`techniqueID`, `tactic`), scored by how many
enabled detections cover it and coloured on a white-to-blue gradient from 0 to the highest score;
its comment lists the detection ids. A sub-technique's parent is listed unscored with
`showSubtechniques`, so the matrix opens on what is covered. Deprecated detections are not
enabled and are left out. Layer format: github.com/mitre-attack/attack-navigator, layers/LAYERFORMATv4_5.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from exfilwatch import __version__
from exfilwatch import attack
from exfilwatch.detections.schema import Detection

LAYER_VERSION = "4.5"
NAVIGATOR_VERSION = "5.1.0"
GRADIENT = ["#ffffff", "#66b1ff"]


def coverage_layer(detections: Iterable[Detection]) -> dict[str, Any]:
    covering: dict[tuple[str, str], list[str]] = {}
    for detection in detections:
        if detection.status == "deprecated":
            continue
        for tid in detection.tags.mitre_attack_id:
            for tactic in (attack.technique(tid) or {"tactics": []})["tactics"]:
                covering.setdefault((tid, tactic), []).append(detection.id)
    techniques: list[dict[str, Any]] = []
    parents = sorted({(attack.parent_of(tid), tactic) for tid, tactic in covering if attack.parent_of(tid)})
    for parent, tactic in parents:
        if (parent, tactic) not in covering:
            techniques.append({"techniqueID": parent, "tactic": tactic, "showSubtechniques": True, "enabled": True})
    for (tid, tactic), ids in sorted(covering.items()):
        techniques.append({"techniqueID": tid, "tactic": tactic, "score": len(ids), "enabled": True,
                           "comment": "detections: " + ", ".join(sorted(ids)),
                           "metadata": [{"name": "detection", "value": d} for d in sorted(ids)]})
    top = max((len(ids) for ids in covering.values()), default=1)
    return {
        "name": "exfilwatch detection coverage",
        "versions": {"attack": attack.version().split(".")[0], "navigator": NAVIGATOR_VERSION, "layer": LAYER_VERSION},
        "domain": "enterprise-attack",
        "description": f"ATT&CK techniques the enabled detections of exfilwatch {__version__} cover "
                       f"(ATT&CK {attack.version()}); score = number of detections.",
        "sorting": 3,
        "layout": {"layout": "side", "showID": True, "showName": True, "expandedSubtechniques": "annotated"},
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": GRADIENT, "minValue": 0, "maxValue": max(top, 1)},
        "legendItems": [{"label": "covered by exfilwatch detections", "color": GRADIENT[1]}],
        "metadata": [{"name": "generator", "value": f"exfilwatch {__version__}"}],
    }
