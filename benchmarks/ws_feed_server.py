"""The WebSocket server of benchmarks/ws_feed.py: fast enough not to be what is measured.

Blocking sockets in a process of its own, one connection at a time. ``/feed?n=N`` sends N
pre-built Binance trade frames in big batches (one ``sendall`` per ~1,000 frames);
``/echo`` sends every client message back. No compression, so every client reads the
same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import urllib.parse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BATCH = 1000


def trade(i: int) -> bytes:
    """One Binance spot trade stream message (the documented field set)."""
    return json.dumps(
        {"e": "trade", "E": 1672515782136 + i, "s": "BNBBTC", "t": 12345 + i,
         "p": f"{0.001 + i % 97 * 1e-5:.8f}", "q": f"{100 + i % 13:.8f}",
         "T": 1672515782136 + i, "m": i % 2 == 0, "M": True},
        separators=(",", ":"),
    ).encode()  # fmt: skip


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """An unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def read_exactly(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def handshake(conn) -> str:
    """Read the upgrade request, answer 101; returns the request target."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk or len(head) > 65536:
            raise ConnectionError("no upgrade request")
        head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    target = lines[0].split(" ")[1]
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return target


def read_frame(conn) -> tuple[int, bytes]:
    """One client frame, unmasked."""
    b0, b1 = read_exactly(conn, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exactly(conn, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exactly(conn, 8))[0]
    key = read_exactly(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
    data = read_exactly(conn, n)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return b0 & 15, (int.from_bytes(data, "big") ^ mask).to_bytes(n, "big")


def feed(conn, n: int, blob: bytes) -> None:
    for _ in range(n // BATCH):
        conn.sendall(blob)
    rest = n % BATCH
    if rest:
        conn.sendall(b"".join(frame(trade(i)) for i in range(rest)))


def echo(conn) -> None:
    while True:
        opcode, data = read_frame(conn)
        if opcode == 8:
            conn.sendall(frame(data[:2], 8))
            return
        if opcode in (1, 2):
            conn.sendall(frame(data, opcode))
        elif opcode == 9:
            conn.sendall(frame(data, 10))


def serve(core: int, certfile: str | None, keyfile: str | None, pipe) -> None:
    """Listen, send the port to the parent, serve connections until terminated."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns shutdown
    os.sched_setaffinity(0, {core})
    ctx = None
    if certfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
    blob = b"".join(frame(trade(i)) for i in range(BATCH))
    lsock = socket.create_server(("127.0.0.1", 0))
    pipe.send(lsock.getsockname()[1])
    while True:
        raw, _ = lsock.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(10)  # a stuck client cannot hold the server for good
        conn = raw
        try:
            # wrap_socket detaches raw: from here on only conn.close() ends the connection,
            # and a client waiting for TCP close after the close handshake needs it now.
            conn = ctx.wrap_socket(raw, server_side=True) if ctx else raw
            target = urllib.parse.urlsplit(handshake(conn))
            if target.path == "/feed":
                feed(conn, int(urllib.parse.parse_qs(target.query)["n"][0]), blob)
            echo(conn)  # the client's close frame (or its pings) after the feed
        except (OSError, ValueError, KeyError):
            pass  # this connection only
        finally:
            conn.close()
            raw.close()
