"""Serving the console with uvicorn: alone (`exfilwatch ui`) or beside the receivers (`serve`).

`console_server` makes the uvicorn server and its bound socket (HTTPS when the web settings
name a certificate and key); `serve_console` runs it until SIGTERM / SIGINT. The clock is the
wall clock here, at the edge, and nowhere inside the app.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from datetime import datetime, timezone

import uvicorn

from exfilwatch.config import Home, Settings, WebSettings
from exfilwatch.detections.schema import Detection
from exfilwatch.web.app import create_app


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


def console_server(home: Home, settings: Settings, catalog: dict[str, Detection], web: WebSettings, host: str,
                   port: int, now_fn: Callable[[], datetime] = wall_clock,
                   server_class: type[uvicorn.Server] = uvicorn.Server) -> tuple[uvicorn.Server, socket.socket]:
    https = web.cert is not None and web.key is not None
    app = create_app(home, settings, catalog, now_fn, https=https)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            ssl_certfile=str(web.cert.expanduser()) if https else None,
                            ssl_keyfile=str(web.key.expanduser()) if https else None)
    return server_class(config), sock


def serve_console(home: Home, settings: Settings, catalog: dict[str, Detection], web: WebSettings, host: str,
                  port: int) -> None:
    server, sock = console_server(home, settings, catalog, web, host, port)
    scheme = "https" if web.cert else "http"
    bound = sock.getsockname()
    sys.stderr.write(f"exfilwatch console at {scheme}://{host}:{bound[1]}/ (home {home.root})\n")
    sys.stderr.flush()
    server.run(sockets=[sock])
