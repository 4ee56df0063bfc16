"""The TLS client context every output that speaks TLS uses (syslog over TLS, HTTPS)."""

from __future__ import annotations

import ssl


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs, or only `ca_file` (PEM) when given; with `verify` false, no check at all
    (a lab's self-signed listener: the peer is then not authenticated)."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
