"""Risk modifiers (`risk_modifiers:` in the config): score x every matching multiply + every matching add.

A modifier matches on the attributes of a risk event's resolved entity (identity, asset,
detection), with the same value matching as suppressions: globs, lists, numbers, booleans.
"""

from __future__ import annotations

from typing import Any

from exfilwatch.findings.suppressions import value_matches
from exfilwatch.riskconfig import RiskModifier


def apply_modifiers(score: float, attributes: dict[str, Any], modifiers: list[RiskModifier]) -> tuple[float, list[dict[str, Any]]]:
    """score x every matching `multiply`, then + every matching `add`; never below 0."""
    applied = []
    factor, addend = 1.0, 0.0
    for index, modifier in enumerate(modifiers):
        if all(value_matches(expected, attributes.get(name)) for name, expected in modifier.match.items()):
            entry: dict[str, Any] = {"modifier": modifier.name or f"risk_modifiers[{index}]", "match": modifier.match}
            if modifier.multiply is not None:
                factor *= modifier.multiply
                entry["multiply"] = modifier.multiply
            if modifier.add is not None:
                addend += modifier.add
                entry["add"] = modifier.add
            applied.append(entry)
    return max(0.0, round(score * factor + addend, 6)), applied
