"""The sources' state that survives between batches, in the state store (see state.py, Schema).

Mail sources keep lines of Postfix messages not yet complete and keys of messages already
written; sources/state.py (`SourceState`) is the one interface that reads and writes them.
"""

from __future__ import annotations

from exfilwatch.state import StageSchema

SCHEMA = StageSchema("sources", (
    """
-- mail sources (sources/postfix.py, sources/mailcommon.py): lines of Postfix messages not yet
-- complete, and keys of messages already written (Exchange/M365 dedup across batches). A row
-- counts only once its producing batch is in `batches`; see sources/state.py.
CREATE TABLE IF NOT EXISTS postfix_pending (
    key TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    time INTEGER NOT NULL,
    message_id TEXT, sender TEXT, size INTEGER, nrcpt INTEGER, client_ip TEXT,
    rcpt TEXT, relay TEXT, dsn TEXT, status TEXT, hop INTEGER, subject TEXT, file_name TEXT,
    raw_ref TEXT NOT NULL,
    produced_by TEXT NOT NULL,
    consumed_by TEXT
);
CREATE INDEX IF NOT EXISTS postfix_pending_key ON postfix_pending(key);
CREATE TABLE IF NOT EXISTS mail_seen (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    time INTEGER NOT NULL,
    produced_by TEXT NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX IF NOT EXISTS mail_seen_time ON mail_seen(source, time);
""",
))
