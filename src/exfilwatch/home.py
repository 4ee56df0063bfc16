"""Opening a home's state store with every stage's tables: the one list of them, at the pipeline layer.

Each stage declares the tables it owns and their ordered migrations (`<stage>/tables.py`); the
core state store imports none of them. This module lists them in the order data flows and
opens the store with all of them, applying what a store lacks (state.py, Schema). Front ends,
the pipeline's callers and the evaluation tools open the store here.

`writer(home)` is how a command that changes the home opens it: holding the home's writer lock
(homelock.py) and first sweeping lake files replaced while readers held them. `reader(home)` is
how a command that only reads opens it: holding the readers lock, never the writer lock, so it
works while a writer runs (and on a home it cannot write).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from exfilwatch.audit import SCHEMA as AUDIT
from exfilwatch.config import Home
from exfilwatch.detections.tables import SCHEMA as DETECTIONS
from exfilwatch.events.lake import remove_superseded
from exfilwatch.events.tables import SCHEMA as EVENTS
from exfilwatch.features.tables import SCHEMA as FEATURES
from exfilwatch.findings.tables import SCHEMA as FINDINGS
from exfilwatch.homelock import DEFAULT_TIMEOUT, reading, writing
from exfilwatch.incidents.tables import SCHEMA as INCIDENTS
from exfilwatch.outputs.tables import SCHEMA as OUTPUTS
from exfilwatch.risk.tables import SCHEMA as RISK
from exfilwatch.sources.tables import SCHEMA as SOURCES
from exfilwatch.state import StageSchema, StateStore

STAGES: tuple[StageSchema, ...] = (SOURCES, EVENTS, FEATURES, DETECTIONS, FINDINGS, RISK, INCIDENTS, OUTPUTS, AUDIT)


def open_state(home: Home | Path, read_only: bool = False) -> StateStore:
    """The state store of a home (or of the home folder at a path), migrated to this release.

    `read_only` for commands that only read: they work on a home they cannot write.
    """
    if not isinstance(home, Home):
        home = Home(root=Path(home), config_path=Path(home) / "config.yaml")
    return StateStore(home.state_path, STAGES, root=home.root, read_only=read_only)


@contextmanager
def writer(home: Home, timeout: float = DEFAULT_TIMEOUT) -> Iterator[StateStore]:
    """The home's state store, holding the writer lock (HomeError after `timeout` seconds of waiting)."""
    with writing(home.root, timeout):
        state = open_state(home)
        try:
            remove_superseded(state)
            yield state
        finally:
            state.close()


def _writable(home: Home) -> bool:
    # A home this process may write is opened as usual, so a store from an older release is
    # migrated by a reader too; one it cannot (a read-only mount, permissions) is only read.
    return os.access(home.root, os.W_OK) and (not home.state_path.exists() or os.access(home.state_path, os.W_OK))


@contextmanager
def reader(home: Home) -> Iterator[StateStore]:
    """The home's state store, holding the readers lock: lake files it lists stay until it is done."""
    with reading(home.root):
        state = open_state(home, read_only=not _writable(home))
        try:
            yield state
        finally:
            state.close()
