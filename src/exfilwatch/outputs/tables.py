"""The outputs stage's table in the state store: what each output was given (see state.py, Schema).
"""

from __future__ import annotations

from exfilwatch.state import StageSchema

SCHEMA = StageSchema("outputs", (
    """
CREATE TABLE IF NOT EXISTS deliveries (
    output TEXT NOT NULL,
    kind TEXT NOT NULL,                  -- incident | finding
    item_key TEXT NOT NULL,
    status TEXT NOT NULL,                -- delivered | pending
    attempts INTEGER NOT NULL,
    last_error TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (output, kind, item_key)
);
""",
))
