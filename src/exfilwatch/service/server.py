"""`exfilwatch serve`: receivers, spool, ingester, tailer and scheduler in one asyncio process.

The process is the home's single writer while it runs (the writer lock, homelock.py). Threads:
the asyncio loop (uvloop: libuv's, which answers HEC requests about 3x sooner than the
standard loop on a busy machine) runs the syslog listeners and the HEC endpoint (uvicorn with
httptools) and appends what they receive to the spool; one worker thread does everything that
touches DuckDB and the state store, one thing at a time: commit a micro-batch of the spool (due
at `batch.max_events` records waiting or once the oldest has waited `batch.max_seconds`; it
takes everything waiting, up to 64 MB), read tailed files on, and every minute of
`clock` run the pipeline at that minute (`pipeline.run`, as `exfilwatch run` does), so runs
never overlap each other or a batch. With `service.web` the web console (exfilwatch.web) is
served on the loop too; its few writes take the writer lock this process already holds. SIGTERM or SIGINT stops the listeners, commits everything
spooled, and exits.

Logs of the service itself go to stderr, one JSON object per line (`event` names what happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from glob import glob
from pathlib import Path

import uvicorn
import uvloop
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from exfilwatch import pipeline
from exfilwatch.config import Home, Settings
from exfilwatch.detections.schedule import watermark
from exfilwatch.detections.schema import Detection
from exfilwatch.errors import ExfilwatchError, SourceError, UsageError
from exfilwatch.events.engine import connect
from exfilwatch.events.files import read_file
from exfilwatch.events.ingest import IngestTarget, ingest_lines, open_target
from exfilwatch.home import writer
from exfilwatch.service.acks import AckBook
from exfilwatch.service.hec import Collector, create_app
from exfilwatch.events.cursors import spool_position
from exfilwatch.service.ingester import SPOOL, Ingester
from exfilwatch.service.spool import FOLDER, Spool
from exfilwatch.service.syslog import kernel_drops, listener_name, start_listener
from exfilwatch.sources import UnknownFormatError, detect_source, get_source
from exfilwatch.web.serve import console_server

Clock = Callable[[], datetime]
TAIL_SECONDS = 1.0
ANNOUNCEMENT = "service.json"  # in the home while the service runs: its pid and where it answers


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


def log(event: str, **fields: object) -> None:
    """One structured line on stderr; values from the network are JSON-escaped."""
    record = {"time": wall_clock().isoformat(timespec="milliseconds"), "event": event, **fields}
    sys.stderr.write(json.dumps(record, default=str, ensure_ascii=True) + "\n")
    sys.stderr.flush()


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("exfilwatch_received_lines", "Lines received", ["listener"], registry=r)
        self.peer_received = Counter("exfilwatch_peer_received_lines", "Lines received per peer",
                                     ["listener", "peer"], registry=r)
        self.dropped = Counter("exfilwatch_dropped_lines", "UDP datagrams lost: the socket's buffer was full "
                               "(counted by the kernel) or the spool could not take them", ["listener"], registry=r)
        self.parsed = Counter("exfilwatch_parsed_lines", "Lines parsed into events", ["source", "listener"], registry=r)
        self.skipped = Counter("exfilwatch_skipped_lines", "Lines skipped (not events)", ["source", "listener"],
                               registry=r)
        self.quarantined = Counter("exfilwatch_quarantined_lines", "Lines quarantined", ["source", "listener"],
                                   registry=r)
        self.batches = Counter("exfilwatch_batches", "Spool batches committed", registry=r)
        self.batch_seconds = Histogram("exfilwatch_batch_seconds", "Time to commit a batch", registry=r)
        self.depth = Gauge("exfilwatch_spool_depth", "Spooled records not yet committed", registry=r)
        self.spool_bytes = Gauge("exfilwatch_spool_bytes", "Bytes in the spool's segments", registry=r)
        self.last_run = Gauge("exfilwatch_detection_last_run_timestamp", "When a detection last ran (epoch)",
                              ["detection"], registry=r)
        self.lag = Gauge("exfilwatch_detection_lag_seconds",
                         "The scheduler's minute minus the last fire time the detection ran", ["detection"], registry=r)
        self.delivery_queue = Gauge("exfilwatch_delivery_queue", "Items waiting for an output", ["output"],
                                    registry=r)
        self.tailed = Counter("exfilwatch_tailed_lines", "Lines read from tailed files", ["path"], registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, list[dict]]:
        """The metrics as `GET /status` gives them (`exfilwatch status` prints them): per metric
        name without its `_total`, one entry per label set with its value."""
        families: dict[str, list[dict]] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                families.setdefault(sample.name.removeprefix("exfilwatch_").removesuffix("_total"), []).append(
                    {**sample.labels, "value": sample.value})
        return families


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service stops it after flushing."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    def __init__(self, home: Home, settings: Settings, catalog: list[Detection], clock: Clock = wall_clock):
        self.home = home
        self.settings = settings
        self.config = settings.service
        self.catalog = catalog
        self.clock = clock
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.ports: dict[str, int] = {}
        self._appended = 0  # records appended since start (the depth is this minus what was committed)
        self._oldest_pending: float | None = None
        self._next_run: datetime | None = None
        self._udp_drops: list[list] = []  # [listener, socket, kernel drops counted so far] per UDP listener
        for listener in self.config.syslog:
            self._check_source(listener.source, f"service.syslog {listener.protocol}:{listener.port}")
        for tail in self.config.tail:
            self._check_source(tail.source, f"service.tail {tail.path}")
        if self.config.hec:
            for token in self.config.hec.tokens:
                self._check_source(token.source, "service.hec.tokens")

    @staticmethod
    def _check_source(name: str, where: str) -> None:
        if name != "auto":
            try:
                get_source(name)
            except UsageError as exc:
                raise UsageError(str(exc), where=where) from None

    # --- the asyncio side ---------------------------------------------------------------------

    def spool_lines(self, records: bytes, count: int, listener: str, peer: str) -> int:
        position = self.spool.append(records)
        self._appended += count
        if self._oldest_pending is None:
            self._oldest_pending = time.monotonic()
        self.metrics.received.labels(listener).inc(count)
        self.metrics.peer_received.labels(listener, peer).inc(count)
        self._dirty.set()
        if self._appended - self._consumed >= self.config.batch.max_events:
            self.wake.set()
        return position

    async def submit(self, records: bytes, count: int, token: str, channel: str | None) -> int | None:
        """Spool a HEC request's records; with a `channel`, return its ackId at once, else once they
        are fsynced. With indexer acknowledgement the reply is not the acknowledgement, as in
        Splunk: the sender keeps the events until their ackId is true (`ack_status`), which needs
        them fsynced and committed, so a request does not wait for a fsync of its own and one
        fsync covers every request that arrived meanwhile. The records and the ackId are written
        (in the page cache) before the reply: a SIGKILL loses neither."""
        position = self.spool_lines(records, count, "hec", token[:8])
        if channel is not None:
            return self.acks.issue(channel, position, self._acknowledged())
        while self._durable < position:
            waiter = self._synced
            await waiter.wait()
        return None

    def _acknowledged(self) -> int:
        """The spool position up to which records are committed to the lake and their ackIds fsynced."""
        return min(self.ingester.committed, self._durable)

    def ack_status(self, channel: str, ids: list[int]) -> dict[str, bool]:
        return self.acks.status(channel, ids, self._acknowledged())

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            # Taken between two callbacks of the loop: every record up to here has its ackId written.
            end = self.spool.end
            await loop.run_in_executor(None, self._sync_both)
            self._durable = max(self._durable, end)
            done, self._synced = self._synced, asyncio.Event()
            done.set()

    def _sync_both(self) -> None:
        self.spool.sync()
        self.acks.sync()

    def stop(self) -> None:
        """Ask the service to stop, as SIGTERM does (from any thread)."""
        self._loop.call_soon_threadsafe(self._stop.set)

    def _dropped(self, listener: str, peer: str) -> None:
        self.metrics.dropped.labels(listener).inc()

    async def serve(self, ready: Callable[[dict[str, int]], None] | None = None) -> None:
        """Open the home (in the worker thread: SQLite connections stay in the thread that made
        them), listen until SIGTERM / SIGINT, then commit what was spooled."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()
        self._synced = asyncio.Event()
        opened = threading.Event()
        worker = threading.Thread(target=self._work, args=(opened,), name="exfilwatch-worker", daemon=True)
        worker.start()
        await loop.run_in_executor(None, opened.wait)
        try:
            if self._worker_error is None:
                await self._listen(ready)
        finally:
            self.stopping.set()
            self.wake.set()
            await loop.run_in_executor(None, worker.join)
        if self._worker_error is not None:
            raise self._worker_error

    async def _listen(self, ready: Callable[[dict[str, int]], None] | None) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        servers = []
        for listener in self.config.syslog:
            server, port = await start_listener(listener, self.spool_lines, self._dropped, log)
            servers.append(server)
            self.ports[f"{listener.protocol}:{listener.port}"] = port
            if listener.protocol == "udp":
                sock = server.get_extra_info("socket")
                self._udp_drops.append([listener_name(listener, port), sock, kernel_drops(sock) or 0])
                self.metrics.dropped.labels(listener_name(listener, port))  # shown as 0 until one is lost
            log("listening", protocol=listener.protocol, host=listener.host, port=port, source=listener.source)
        http = None
        http_task = None
        if self.config.hec is not None:
            hec = self.config.hec
            app = create_app(hec, Collector(self.submit, self.ack_status), self.metrics_text, self.status)
            sock = socket.socket(socket.AF_INET6 if ":" in hec.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((hec.host, hec.port))
            self.ports["hec"] = sock.getsockname()[1]
            http = _Server(uvicorn.Config(app, http="httptools", log_level="warning", access_log=False,
                                          lifespan="off", limit_concurrency=1000, timeout_keep_alive=30))
            sock.listen(2048)  # connections made before uvicorn starts wait in the backlog, not refused
            http_task = asyncio.create_task(http.serve(sockets=[sock]))
            while not http.started and not http_task.done():
                await asyncio.sleep(0.01)
            log("listening", protocol="hec", host=hec.host, port=self.ports["hec"])
        console = console_task = None
        if self.config.web is not None:
            web = self.config.web
            console, sock = console_server(self.home, self.settings, {d.id: d for d in self.catalog}, web, web.host,
                                           web.port, self.clock, _Server)
            self.ports["web"] = sock.getsockname()[1]
            console_task = asyncio.create_task(console.serve(sockets=[sock]))
            while not console.started and not console_task.done():
                await asyncio.sleep(0.01)
            log("listening", protocol="https" if web.cert else "http", host=web.host, port=self.ports["web"],
                what="console")
        flusher = asyncio.create_task(self._flusher())
        self._announce()
        if ready is not None:
            ready(dict(self.ports))
        log("ready", ports=self.ports, home=str(self.home.root))
        await stop.wait()
        log("stopping")
        (self.home.root / ANNOUNCEMENT).unlink(missing_ok=True)
        for server in servers:
            server.close()
        for server_, task in ((http, http_task), (console, console_task)):
            if server_ is not None and task is not None:
                server_.should_exit = True
                await task
        self._sync_both()
        flusher.cancel()

    def metrics_text(self) -> bytes:
        self._set_spool_gauges()
        return self.metrics.text()

    def status(self) -> dict:
        """What `GET /status` answers: the process, the spool, and every metric (Metrics.snapshot)."""
        self._set_spool_gauges()
        return {"pid": os.getpid(), "ports": self.ports, "committed": self.ingester.committed,
                "metrics": self.metrics.snapshot()}

    def _set_spool_gauges(self) -> None:
        """The gauges and counters read when asked: spool depth and size, the kernel's UDP drops."""
        self.metrics.depth.set(max(0, self._appended - self._consumed))
        self.metrics.spool_bytes.set(self.spool.size_bytes())
        for entry in self._udp_drops:
            name, sock, counted = entry
            now = kernel_drops(sock)
            if now is not None and now > counted:
                self.metrics.dropped.labels(name).inc(now - counted)
                entry[2] = now

    def _announce(self) -> None:
        """Say in the home where the running service answers (`exfilwatch status` asks it there)."""
        url = None
        if self.config.hec is not None:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.config.hec.host, self.config.hec.host)
            url = f"http://{f'[{host}]' if ':' in host else host}:{self.ports['hec']}"
        temporary = self.home.root / (ANNOUNCEMENT + ".new")
        temporary.write_text(json.dumps({"pid": os.getpid(), "url": url, "ports": self.ports}))
        temporary.replace(self.home.root / ANNOUNCEMENT)

    # --- the worker thread: everything that writes the home ------------------------------------

    _worker_error: BaseException | None = None

    def _work(self, opened: threading.Event) -> None:
        try:
            with writer(self.home) as state, open_target(self.home, self.settings) as target:
                self.state, self.target = state, target
                committed = spool_position(target.state.conn, SPOOL)[0]
                self.spool = Spool(self.home.root / FOLDER, committed)
                self.acks = AckBook(self.home.root / FOLDER, committed, self.spool.end)
                self._sync_both()  # what a killed process wrote but did not fsync: durable before any ack says so
                self._durable = self.spool.end
                self.ingester = Ingester(target, self.spool)
                self._consumed = -self.ingester.depth
                if self.ingester.depth:
                    self._oldest_pending = time.monotonic()
                    log("spool_replay", records=self.ingester.depth, position=committed)
                opened.set()
                try:
                    self._work_until_stopped()
                finally:
                    self.spool.close()
                    self.acks.close()
                log("stopped", committed=self.ingester.committed)
        except BaseException as exc:  # the service cannot go on without its writer: stop it, say why
            self._worker_error = exc
            log("worker_failed", error=str(exc), kind=type(exc).__name__)
            self._loop.call_soon_threadsafe(self._stop.set)
        finally:
            opened.set()

    def _work_until_stopped(self) -> None:
        next_tail = 0.0
        while True:
            stopping = self.stopping.is_set()
            self.wake.wait(0.05)
            self.wake.clear()
            while self._batch_due(stopping) and self._one_batch():
                pass
            if stopping:
                if self.config.tail:
                    self._tail()
                return
            if self.config.tail and time.monotonic() >= next_tail:
                self._tail()
                next_tail = time.monotonic() + TAIL_SECONDS
            if self.config.schedule:
                self.run_due(self.clock())

    def _batch_due(self, stopping: bool) -> bool:
        pending = self._appended - self._consumed
        if pending <= 0 and self.spool.end <= self.ingester.committed:
            return False
        if stopping or pending >= self.config.batch.max_events:
            return True
        oldest = self._oldest_pending
        return oldest is not None and time.monotonic() - oldest >= self.config.batch.max_seconds

    def _one_batch(self) -> bool:
        end_before = self.spool.end
        outcome = self.ingester.batch()
        if outcome is None:
            self._oldest_pending = None
            return False
        self._consumed += outcome.records
        self._oldest_pending = None if self.spool.end <= self.ingester.committed else (
            time.monotonic() if end_before < self.spool.end else self._oldest_pending)
        m = self.metrics
        m.batches.inc()
        m.batch_seconds.observe(outcome.seconds)
        for key, report in outcome.reports.items():
            source, listener = key.split("\x1f")
            m.parsed.labels(source, listener).inc(report.parsed)
            m.skipped.labels(source, listener).inc(sum(report.skipped.values()))
            m.quarantined.labels(source, listener).inc(report.quarantined)
        if outcome.unrouted:
            m.quarantined.labels("auto", "unrouted").inc(outcome.unrouted)
        log("batch", records=outcome.records, seconds=round(outcome.seconds, 3), unrouted=outcome.unrouted,
            position=self.ingester.committed)
        return True

    def run_due(self, now: datetime) -> pipeline.Result | None:
        """Run the pipeline at the minute `now` is in, once per minute."""
        minute = now.replace(second=0, microsecond=0)
        if self._next_run is not None and minute < self._next_run:
            return None
        self._next_run = minute + timedelta(minutes=1)
        con = connect(self.settings, self.home.spill_dir)
        try:
            result = pipeline.run(con, self.state, self.settings, self.catalog, minute, pipeline.Options())
        finally:
            con.close()
        for detection in self.catalog:  # how far each detection's last fire run is behind this minute
            last_fire = watermark(self.state, detection.id)
            if last_fire is not None:
                self.metrics.lag.labels(detection.id).set((minute - last_fire).total_seconds())
        for run in result.detections:
            self.metrics.last_run.labels(run.detection.id).set(minute.timestamp())
        for report in result.deliveries:
            self.metrics.delivery_queue.labels(report.output).set(report.pending)
        fired = sum(r.fires for r in result.detections)
        incidents = sum(r.new for r in result.incidents)
        if fired or incidents:
            log("run", at=minute.isoformat(), fires=fired, findings=sum(len(r.findings) for r in result.detections),
                new_incidents=incidents, delivered=sum(r.delivered for r in result.deliveries))
        return result

    def _tail(self) -> None:
        for tail in self.config.tail:
            for name in sorted(glob(str(Path(tail.path).expanduser()))):
                path = Path(name)
                if not path.is_file():
                    continue
                try:
                    lines = tail_file(path, self.target, None if tail.source == "auto" else get_source(tail.source))
                except (SourceError, UnknownFormatError, OSError) as exc:
                    log("tail_error", path=str(path), error=str(exc))
                    continue
                if lines:
                    self.metrics.tailed.labels(str(path)).inc(lines)


def tail_file(path: Path, target: IngestTarget, source) -> int:  # noqa: ANN001
    """Read the whole lines written to a file since its checkpoint (a last line still being
    written waits for its newline); rotation by rename and copytruncate as `ingest` (events/files.py)."""
    reading = read_file(path, target.state)
    if reading.size == 0 or reading.offset >= reading.size:
        return 0
    chosen = source or detect_source(reading.head, str(path))
    count = 0
    for lines, cursor in reading.batches():
        last = lines[len(lines) - 1].as_py() if len(lines) else ""
        if not last.endswith("\n"):
            partial = len(last.encode("utf-8"))
            lines = lines.slice(0, len(lines) - 1)
            cursor = replace(cursor, end_offset=cursor.end_offset - partial, last_line=cursor.last_line - 1)
        if len(lines) == 0:
            break
        ingest_lines(chosen, lines, cursor, target)
        count += len(lines)
    return count


def run_service(home: Home, settings: Settings, catalog: list[Detection], clock: Clock = wall_clock) -> None:
    """Run until SIGTERM / SIGINT; an error that stops the service is raised after the flush."""
    service = Service(home, settings, catalog, clock)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(service.serve())
    except OSError as exc:
        raise ExfilwatchError(f"the service could not listen or write: {exc}") from None
