"""The data models events are normalised to: Splunk CIM field names and DuckDB types.

A source maps its lines to one of these; the lake stores exactly these columns (plus the
`day` partition), so detections, Spark and any Parquet reader see one schema per model.
Enrichment columns (`src_category`, `dest_category`, ...) are not stored: they are joined
at query time so a change to the asset inventory applies to old data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataModel:
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type), in storage order
    enrichment: tuple[tuple[str, str], ...] = ()  # added at query time
    description: str = ""
    # Columns added after lake files were first written: older files lack them, and read them as null.
    added_columns: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    def empty_select(self) -> str:
        """A SELECT with the model's columns and no rows: the schema for an empty lake."""
        casts = ", ".join(f"CAST(NULL AS {typ}) AS \"{name}\"" for name, typ in self.columns)
        return f"SELECT {casts} WHERE false"


# What a sender said about an event besides its line, as JSON text: a Splunk HEC event's `host`,
# `source`, `sourcetype`, `index` and `fields` (null for lines read from files or syslog).
# Queried as `json_extract_string(origin, '$.host')` (Spark: `get_json_object`).
# Ingest adds it to every source's rows: sources do not produce it.
ORIGIN = ("origin", "VARCHAR")

NETWORK_TRAFFIC = DataModel(
    name="network_traffic",
    description="Network flows (CIM Network_Traffic): bytes_out = sent by src, bytes_in = received by src",
    columns=(
        ("_time", "TIMESTAMPTZ"),
        ("src_ip", "VARCHAR"),
        ("src_port", "INTEGER"),
        ("dest_ip", "VARCHAR"),
        ("dest_port", "INTEGER"),
        ("transport", "VARCHAR"),
        ("app", "VARCHAR"),
        ("bytes_in", "BIGINT"),
        ("bytes_out", "BIGINT"),
        ("bytes", "BIGINT"),
        ("duration", "DOUBLE"),
        ("session_id", "VARCHAR"),
        ("event_type", "VARCHAR"),
        ("source", "VARCHAR"),
        ("raw_ref", "VARCHAR"),
        ORIGIN,
    ),
    added_columns=("origin",),
    enrichment=(
        ("src_category", "VARCHAR"),
        ("dest_category", "VARCHAR"),
        ("src_bunit", "VARCHAR"),
        ("dest_bunit", "VARCHAR"),
    ),
)

AUTHENTICATION = DataModel(
    name="authentication",
    description="VPN and login events (CIM Authentication) with Exabeam-style event types",
    columns=(
        ("_time", "TIMESTAMPTZ"),
        ("user", "VARCHAR"),
        ("src_ip", "VARCHAR"),
        ("assigned_ip", "VARCHAR"),
        ("dest", "VARCHAR"),
        ("realm", "VARCHAR"),
        ("roles", "VARCHAR"),
        ("session_id", "VARCHAR"),
        ("action", "VARCHAR"),
        ("event_type", "VARCHAR"),
        ("duration", "DOUBLE"),
        ("bytes_in", "BIGINT"),
        ("bytes_out", "BIGINT"),
        ("reason", "VARCHAR"),
        ("user_agent", "VARCHAR"),
        ("source", "VARCHAR"),
        ("raw_ref", "VARCHAR"),
        ORIGIN,
    ),
    added_columns=("origin",),
)

EMAIL = DataModel(
    name="email",
    description="One row per message (CIM Email); direction from the configured internal domains",
    columns=(
        ("_time", "TIMESTAMPTZ"),
        ("message_id", "VARCHAR"),
        ("internal_message_id", "VARCHAR"),
        ("src_user", "VARCHAR"),  # the sender's address (envelope MAIL FROM, else the From header)
        ("src_user_domain", "VARCHAR"),
        ("user", "VARCHAR"),  # the account that authenticated to send it (Postfix sasl_username, CERT user)
        ("recipient", "VARCHAR[]"),
        ("recipient_domain", "VARCHAR[]"),
        ("recipient_count", "INTEGER"),
        ("size", "BIGINT"),
        ("subject", "VARCHAR"),
        ("file_name", "VARCHAR[]"),
        ("direction", "VARCHAR"),
        ("action", "VARCHAR"),
        ("src_ip", "VARCHAR"),
        ("dest", "VARCHAR"),
        ("event_type", "VARCHAR"),
        ("source", "VARCHAR"),
        ("raw_ref", "VARCHAR"),
        ORIGIN,
    ),
    added_columns=("user", "origin"),
)

# recipients and attachment names as one comma-separated string each: cheaper to build per session
_EVIDENCE_MESSAGE = ("STRUCT(\"time\" VARCHAR, message_id VARCHAR, size BIGINT, recipients VARCHAR, "
                     "subject VARCHAR, file_name VARCHAR)[]")

USER_SESSIONS = DataModel(
    name="user_sessions",
    description=("Derived: one row per closed user session (a VPN session, or the user's activity outside VPN "
                 "on one local day) with its outgoing-mail features and evidence; built by "
                 "exfilwatch.features.sessions, `_time` = the session's end"),
    columns=(
        ("_time", "TIMESTAMPTZ"),
        ("session_key", "VARCHAR"),
        ("user", "VARCHAR"),
        ("department", "VARCHAR"),
        ("session_kind", "VARCHAR"),
        ("session_start", "TIMESTAMPTZ"),
        ("session_end", "TIMESTAMPTZ"),
        ("end_reason", "VARCHAR"),
        ("boundary_source", "VARCHAR"),
        ("vpn_account", "VARCHAR"),
        ("vpn_session_id", "VARCHAR"),
        ("src_ip", "VARCHAR"),
        ("assigned_ip", "VARCHAR"),
        ("messages_sent", "BIGINT"),
        ("em_fnum", "BIGINT"),
        ("em_dnum", "BIGINT"),
        ("em_bsum", "BIGINT"),
        ("em_bsum_personal", "BIGINT"),
        ("em_personal_fnum", "BIGINT"),
        ("net_flows", "BIGINT"),
        ("net_bytes_out", "BIGINT"),
        ("net_bytes_in", "BIGINT"),
        ("recipient_domains", "STRUCT(domain VARCHAR, domain_class VARCHAR, messages BIGINT, bytes BIGINT)[]"),
        ("top_domains", "STRUCT(domain VARCHAR, domain_class VARCHAR, messages BIGINT, bytes BIGINT)[]"),
        ("top_recipients", "STRUCT(recipient VARCHAR, domain_class VARCHAR, messages BIGINT, bytes BIGINT)[]"),
        ("largest_messages", _EVIDENCE_MESSAGE),
        ("largest_personal_messages", _EVIDENCE_MESSAGE),
    ),
)

FILE_TRANSFER = DataModel(
    name="file_transfer",
    description=("Files seen on the wire (Zeek files.log): one row per file, linked to its connections; "
                 "the Zeek smtp sources read it for message sizes and attachment names"),
    columns=(
        ("_time", "TIMESTAMPTZ"),
        ("file_id", "VARCHAR"),  # Zeek fuid
        ("session_ids", "VARCHAR[]"),  # Zeek conn uids
        ("src_ips", "VARCHAR[]"),  # tx_hosts
        ("dest_ips", "VARCHAR[]"),  # rx_hosts
        ("app", "VARCHAR"),  # the protocol that carried it: SMTP, HTTP, ...
        ("mime_type", "VARCHAR"),
        ("file_name", "VARCHAR"),
        ("bytes", "BIGINT"),  # seen_bytes
        ("total_bytes", "BIGINT"),
        ("is_orig", "BOOLEAN"),
        ("event_type", "VARCHAR"),
        ("source", "VARCHAR"),
        ("raw_ref", "VARCHAR"),
    ),
)

DATA_MODELS: dict[str, DataModel] = {m.name: m for m in (NETWORK_TRAFFIC, AUTHENTICATION, EMAIL, USER_SESSIONS,
                                                         FILE_TRANSFER)}


# The `risk_events` view correlation detections read: name -> DuckDB type.
RISK_EVENT_COLUMNS: dict[str, str] = {
    "_time": "TIMESTAMPTZ",
    "event_key": "VARCHAR",
    "finding_key": "VARCHAR",
    "detection_id": "VARCHAR",
    "risk_object": "VARCHAR",
    "risk_object_type": "VARCHAR",
    "source_object": "VARCHAR",
    "source_object_type": "VARCHAR",
    "risk_object_field": "VARCHAR",
    "raw_score": "DOUBLE",
    "score": "DOUBLE",
    "message": "VARCHAR",
    "techniques": "VARCHAR[]",
    "tactics": "VARCHAR[]",
    "session_id": "VARCHAR",
    "_available": "TIMESTAMPTZ",  # when its finding was first detected
}

# Views that are not lake models: computed from the state store when a detection reads them.
DERIVED_VIEWS: dict[str, dict[str, str]] = {"risk_events": RISK_EVENT_COLUMNS}


def get_model(name: str) -> DataModel:
    try:
        return DATA_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown data model {name!r}; known: {', '.join(DATA_MODELS)}") from None
