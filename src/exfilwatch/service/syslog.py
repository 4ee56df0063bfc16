"""Syslog receivers: UDP, TCP and TLS listeners that put each message in the spool.

TCP and TLS streams are framed per RFC 6587: a frame that starts with a digit is octet-counted
(`LEN SP MSG`), any other ends at a newline (LF, or CRLF: the CR is dropped). A UDP datagram is
one message. RFC 3164 and RFC 5424 headers both pass through as they are: the sources read
both (sources/syslog_header.py). A message is spooled with its listener's source (or `auto`,
routed by program tag when batched) and its origin `<protocol>:<port>@<peer address>`, which
quarantine shows for a line no source claims.

TCP and TLS lines are written to the spool as they arrive (a SIGKILL then loses none of them),
the lines of one read as one record (unless an octet-counted message holds a newline);
UDP is best effort: a datagram that cannot be spooled is counted as dropped, and so is one the
kernel threw away because the socket's receive buffer was full (a burst faster than the service
reads): `kernel_drops` reads that count for the socket from Linux's /proc/net/udp.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from exfilwatch.config import SyslogListener
from exfilwatch.service.spool import encode, encode_block, encode_many

MAX_FRAME = 1 << 20  # an octet count beyond this is not a syslog frame: the peer is cut off
READ_BYTES = 1 << 16
# A frame is octet-counted when it starts with a count and a space; a line starting with digits
# otherwise (an ISO timestamp without <PRI>) is newline-framed.
OCTET_COUNT = re.compile(rb"([1-9][0-9]{0,6}) ")
DIGITS_SO_FAR = re.compile(rb"[0-9]{1,7}")
COUNT_AFTER_A_NEWLINE = re.compile(rb"\n[1-9][0-9]{0,6} ")  # starts with a literal: sre skips to each newline
EMPTY_LINES = re.compile(rb"\n{2,}")

# (encoded records, count, listener, peer) -> None; raises when the spool cannot take them
Sink = Callable[[bytes, int, str, str], None]


class FrameError(ValueError):
    pass


class Framer:
    """Splits a TCP byte stream into syslog messages (RFC 6587 octet-counting, else LF / CRLF)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        block, messages = self.feed_block(data)
        return block.split(b"\n") if block else messages

    def feed_block(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """The messages completed by `data`: as a block (newline-separated, none empty, no CR
        before a newline) when the stream is framed by newlines alone, which costs per read
        rather than per line; else as a list."""
        buffer = self.buffer + data
        if OCTET_COUNT.match(buffer) is None and COUNT_AFTER_A_NEWLINE.search(buffer) is None:
            # newline framing only (no line starts with a count and a space): cut at C speed
            last = buffer.rfind(b"\n")
            rest = buffer[last + 1:]
            if len(rest) > MAX_FRAME:
                raise FrameError(f"a line longer than {MAX_FRAME} bytes")
            self.buffer = rest
            if last < 0:
                return b"", []
            block = buffer[:last]
            if b"\r" in block:  # CRLF: one CR before each newline goes
                block = block.replace(b"\r\n", b"\n")
                if block.endswith(b"\r"):
                    block = block[:-1]
            if b"\n\n" in block or block.startswith(b"\n") or block.endswith(b"\n"):  # empty lines
                block = EMPTY_LINES.sub(b"\n", block).strip(b"\n")
            return block, []
        messages: list[bytes] = []
        position = 0
        size = len(buffer)
        while position < size:
            counted = OCTET_COUNT.match(buffer, position)
            if counted is None and DIGITS_SO_FAR.fullmatch(buffer, position):
                break  # digits up to the end of what arrived: the rest says which framing it is
            if counted is not None:  # octet-counting: LEN SP MSG
                count = int(counted[1])
                if count > MAX_FRAME:
                    raise FrameError(f"an octet-counted frame of {count} bytes (the limit is {MAX_FRAME})")
                start = counted.end()
                if start + count > size:
                    break
                messages.append(buffer[start:start + count].rstrip(b"\r\n"))
                position = start + count
            else:
                newline = buffer.find(b"\n", position)
                if newline < 0:
                    if size - position > MAX_FRAME:
                        raise FrameError(f"a line longer than {MAX_FRAME} bytes")
                    break
                end = newline - 1 if newline > position and buffer[newline - 1] == 0x0D else newline
                if end > position:
                    messages.append(buffer[position:end])
                position = newline + 1
        self.buffer = buffer[position:]
        return b"", messages

    def rest(self) -> bytes:
        """A last line the peer sent without its newline before closing."""
        rest, self.buffer = self.buffer.rstrip(b"\r\n"), b""
        return rest


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for this socket because its receive buffer was full (the
    `drops` column of /proc/net/udp and udp6, found by the socket's inode); None where the kernel
    does not say (not Linux)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) >= 13 and fields[9] == inode:
                return int(fields[12])
    return None


def listener_name(listener: SyslogListener, port: int) -> str:
    return f"{listener.protocol}:{port}"


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, listener: SyslogListener, sink: Sink, dropped: Callable[[str, str], None]):
        self.listener = listener
        self.sink = sink
        self.dropped = dropped
        self.name = listener.protocol

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        peer = str(addr[0])
        message = data.rstrip(b"\r\n\x00")
        if not message:
            return
        try:
            self.sink(encode(self.listener.source, f"{self.name}@{peer}", time.time(), message), 1, self.name, peer)
        except OSError:
            self.dropped(self.name, peer)


async def start_listener(listener: SyslogListener, sink: Sink, dropped: Callable[[str, str], None],
                         log: Callable[..., None]) -> tuple[asyncio.AbstractServer | asyncio.BaseTransport, int]:
    """Start one listener; returns its server (or transport) and the port it listens on."""
    loop = asyncio.get_running_loop()
    if listener.protocol == "udp":
        protocol = _Datagrams(listener, sink, dropped)
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(listener.host, listener.port))
        port = transport.get_extra_info("sockname")[1]
        protocol.name = listener_name(listener, port)
        return transport, port
    context = None
    if listener.protocol == "tls":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(listener.cert), str(listener.key))
    name_box: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = name_box[0]
        peer_info = writer.get_extra_info("peername")
        peer = str(peer_info[0]) if peer_info else "-"
        origin = f"{name}@{peer}"
        framer = Framer()
        try:
            while True:
                data = await reader.read(READ_BYTES)
                block, messages = framer.feed_block(data) if data else (b"", [framer.rest()])
                messages = [m for m in messages if m]
                if messages:  # octet-counted: one block too, unless a message holds a newline
                    joined = b"\n".join(messages)
                    if joined.count(b"\n") == len(messages) - 1:
                        block, messages = joined, []
                if block:
                    sink(encode_block(listener.source, origin, time.time(), block), block.count(b"\n") + 1, name, peer)
                if messages:
                    sink(encode_many(listener.source, origin, time.time(), messages), len(messages), name, peer)
                if not data:
                    break
        except FrameError as exc:
            log("syslog_frame_error", listener=name, peer=peer, error=str(exc))
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log("syslog_connection_error", listener=name, peer=peer, error=str(exc))
        finally:
            writer.close()

    server = await asyncio.start_server(handle, listener.host, listener.port, ssl=context, limit=READ_BYTES)
    port = server.sockets[0].getsockname()[1]
    name_box.append(listener_name(listener, port))
    return server, port
