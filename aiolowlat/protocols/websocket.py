"""RFC 6455 / RFC 7692 WebSocket client as a sans-I/O core: bytes in, events and bytes out.

``ClientProtocol`` holds no socket, loop or clock. ``request()`` gives the opening
handshake; received bytes go in with ``receive_data(data)`` (or, without a copy, with
``get_buffer()`` + ``buffer_updated(n)``), which return events; ``send_*`` return the
bytes to write, and ``data_to_send()`` the replies the protocol owes (pongs, the close
echo). Frame headers are parsed in C (csrc/ws.c) for a whole buffer at once. Bad input
raises ``ProtocolError`` (with the close code to send, already queued) and nothing else.
"""

from __future__ import annotations

import base64
import codecs
import enum
import hashlib
import os
import re
import sys
import zlib
from dataclasses import dataclass

from .._native._ws import ffi, lib

__all__ = [
    "Accepted",
    "ClientProtocol",
    "Close",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Deflate",
    "InvalidHandshake",
    "Message",
    "Opcode",
    "Ping",
    "Pong",
    "ProtocolError",
    "State",
    "WebSocketError",
    "is_valid_close_code",
]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADERS = 64 * 1024  # a longer handshake response is refused
SCAN_CAP = 1024  # frames per C scan call
_scan, _join, _unpack = lib.al_ws_scan, lib.al_ws_join, ffi.unpack
MIN_READ = 64 * 1024  # free space get_buffer() guarantees
if lib.al_ws_py_init():  # pragma: no cover - only if the interpreter is out of memory
    raise ImportError("aiolowlat._native._ws_py could not be registered")
_py = sys.modules["aiolowlat._native._ws_py"]  # the per-message path in C (csrc/ws.c)
_frame = _py.frame


class Opcode(enum.IntEnum):
    CONT = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


class State(enum.IntEnum):
    CONNECTING = 0
    OPEN = 1
    CLOSING = 2  # our close frame is sent, the peer's not yet received
    CLOSED = 3  # close frames exchanged, or the connection failed


# --- errors --------------------------------------------------------------------------------


class WebSocketError(Exception):
    """Base of every WebSocket error."""


class InvalidHandshake(WebSocketError):
    """The server's opening handshake response is not a valid upgrade to ours."""


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455/7692; ``code`` is the close code sent for it."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{reason} (close code {code})")
        self.code, self.reason = code, reason


class ConnectionClosed(WebSocketError):
    """The connection is closed; ``code`` and ``reason`` are the peer's (1006 if none)."""

    def __init__(self, code: int = 1006, reason: str = ""):
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code, self.reason = code, reason


class ConnectionClosedOK(ConnectionClosed):
    """Closed by a normal close handshake (1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """Closed with an error code, or without a close handshake."""


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server accepted the upgrade."""

    subprotocol: str | None
    extensions: str | None
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message (reassembled, decompressed; text checked as UTF-8)."""

    opcode: int  # Opcode.TEXT or Opcode.BINARY
    payload: bytes

    def text(self) -> str:
        return self.payload.decode()


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes  # the pong is already queued in data_to_send()


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame (1005 when it carried no code); our echo is queued."""

    code: int
    reason: str


def is_valid_close_code(code: int) -> bool:
    """Codes a close frame may carry (RFC 6455 7.4, IANA registry; 3000-4999 private)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


_SCAN_ERRORS = {
    lib.AL_WS_E_RSV: (1002, "reserved bit set without a negotiated extension"),
    lib.AL_WS_E_OPCODE: (1002, "reserved opcode"),
    lib.AL_WS_E_CONTROL: (1002, "fragmented or oversized control frame"),
    lib.AL_WS_E_MASKED: (1002, "masked frame from the server"),
    lib.AL_WS_E_LENGTH: (1002, "frame length over 2**63"),
    lib.AL_WS_E_TOO_BIG: (1009, "frame over the size limit"),
    lib.AL_WS_E_UTF8: (1007, "text message is not valid UTF-8"),
    lib.AL_WS_E_CONTINUATION: (1002, "continuation frame without a message to continue"),
    lib.AL_WS_E_INTERLEAVED: (1002, "new data message inside a fragmented one"),
}


# --- permessage-deflate (RFC 7692) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deflate:
    """A permessage-deflate offer; after the handshake, the agreed parameters.

    ``client_max_window_bits=True`` offers the parameter without a value (the server picks).
    """

    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False
    client_max_window_bits: int | bool | None = True
    server_max_window_bits: int | None = None

    def offer(self) -> str:
        parts = ["permessage-deflate"]
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_max_window_bits is True:
            parts.append("client_max_window_bits")
        elif self.client_max_window_bits:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        if self.server_max_window_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        return "; ".join(parts)

    def accept(self, response: str) -> Deflate:
        """The agreed parameters from the server's response to this offer (7.1)."""
        name, *params = [p.strip() for p in response.split(";")]
        if name != "permessage-deflate":
            raise InvalidHandshake(f"extension not offered: {name!r}")
        seen: dict[str, str | None] = {}
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip(), value.strip().strip('"') if _ else None
            if key in seen:
                raise InvalidHandshake(f"permessage-deflate: duplicate parameter {key}")
            seen[key] = value
        unknown = set(seen) - {
            "client_no_context_takeover", "server_no_context_takeover",
            "client_max_window_bits", "server_max_window_bits",
        }  # fmt: skip
        if unknown:
            raise InvalidHandshake(f"permessage-deflate: unknown parameter {sorted(unknown)}")
        for flag in ("client_no_context_takeover", "server_no_context_takeover"):
            if flag in seen and seen[flag] is not None:
                raise InvalidHandshake(f"permessage-deflate: {flag} takes no value")
        if self.server_no_context_takeover and "server_no_context_takeover" not in seen:
            raise InvalidHandshake("permessage-deflate: server_no_context_takeover refused")
        server_bits = _window_bits(seen, "server_max_window_bits")
        if self.server_max_window_bits and (
            server_bits is None or server_bits > self.server_max_window_bits
        ):
            raise InvalidHandshake("permessage-deflate: server_max_window_bits not honoured")
        client_bits = _window_bits(seen, "client_max_window_bits")
        if client_bits is not None and not self.client_max_window_bits:
            raise InvalidHandshake("permessage-deflate: client_max_window_bits not offered")
        if client_bits is None and self.client_max_window_bits not in (None, True, False):
            client_bits = self.client_max_window_bits
        return Deflate(
            client_no_context_takeover="client_no_context_takeover" in seen
            or self.client_no_context_takeover,
            server_no_context_takeover="server_no_context_takeover" in seen,
            client_max_window_bits=client_bits or 15,
            server_max_window_bits=server_bits or 15,
        )


def _window_bits(params: dict, key: str) -> int | None:
    if key not in params:
        return None
    value = params[key]
    if value is None or not re.fullmatch(r"[89]|1[0-5]", value):
        raise InvalidHandshake(f"permessage-deflate: bad {key}={value!r}")
    return int(value)


class _Deflater:
    """Compression state for one direction of each kind, as the agreed parameters say."""

    def __init__(self, params: Deflate):
        self.params = params
        # zlib refuses an 8-bit window for raw deflate; 9 is the nearest it makes.
        self._cbits = -max(9, int(params.client_max_window_bits))
        self._compressor = zlib.compressobj(wbits=self._cbits)
        self._decompressor = zlib.decompressobj(wbits=-15)  # any window up to 15 inflates

    def compress(self, data) -> bytes:
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        if self.params.client_no_context_takeover:
            self._compressor = zlib.compressobj(wbits=self._cbits)
        return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out

    def decompress(self, data, max_size: int) -> bytes:
        d = self._decompressor
        try:
            out = d.decompress(data, max_size + 1)
            if len(out) <= max_size:
                out += d.decompress(b"\x00\x00\xff\xff", max_size + 1 - len(out))
        except zlib.error as exc:
            raise ProtocolError(1007, f"permessage-deflate: bad compressed data: {exc}") from None
        if len(out) > max_size or d.unconsumed_tail:
            raise ProtocolError(1009, f"message over {max_size} bytes once inflated")
        if self.params.server_no_context_takeover:
            self._decompressor = zlib.decompressobj(wbits=-15)
        return out


# --- the core ------------------------------------------------------------------------------


def _close_payload(code: int, reason: str) -> bytes:
    if code == 1005:
        return b""
    data = code.to_bytes(2, "big") + reason.encode()
    if len(data) > 125:
        raise ValueError("close reason over 123 bytes")
    return data


class ClientProtocol:
    """One client connection's protocol state: handshake, framing, messages, close."""

    def __init__(
        self,
        host: str,
        resource: str = "/",
        *,
        subprotocols=None,
        extra_headers=None,
        compression: Deflate | str | None = None,
        max_size: int | None = 2**20,
        max_frame_size: int | None = None,
        key: bytes | None = None,
    ):
        if compression == "deflate":
            compression = Deflate()
        elif compression is not None and not isinstance(compression, Deflate):
            raise ValueError(f"compression must be None, 'deflate' or a Deflate: {compression!r}")
        self.host, self.resource = host, resource
        self.subprotocols = list(subprotocols or ())
        self.extra_headers = list(
            extra_headers.items() if hasattr(extra_headers, "items") else extra_headers or ()
        )
        self.offer = compression
        self.max_size = max_size if max_size is not None else 2**62
        self.max_frame_size = max_frame_size if max_frame_size is not None else self.max_size
        self.key = base64.b64encode(key or os.urandom(16))
        self.state = State.CONNECTING
        self.plain_open = False  # open without compression: frame() alone makes a message
        self.subprotocol: str | None = None
        self.deflate: Deflate | None = None  # agreed parameters
        self._deflater: _Deflater | None = None
        self.close_code: int | None = None  # the peer's close frame
        self.close_reason = ""
        self.close_sent: tuple[int, str] | None = None
        self._out: list[bytes] = []
        # Receive buffer: whole frames are parsed in place; the partial tail is moved down.
        self._buf = bytearray(MIN_READ * 4)
        self._view = memoryview(self._buf)
        self._ptr = ffi.from_buffer(self._buf)
        self._start = self._end = 0
        self._scan = ffi.new("al_ws_scan_state *")
        self._frames = ffi.new("uint64_t[]", 2 * SCAN_CAP)
        # Addresses for _ws_py.Receiver/dispatch, which take them as ints.
        self.frames_addr = int(ffi.cast("uintptr_t", self._frames))
        self.scan_addr = int(ffi.cast("uintptr_t", self._scan))
        self._stop = 0
        self._jbuf = bytearray(0)  # join_text's output, sized to the receive buffer
        self._flags = lib.AL_WS_CHECK_UTF8
        # A fragmented message being assembled: (opcode, compressed, parts, size).
        self._frag_opcode = 0
        self._frag_compressed = False
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._frag_utf8 = None
        self.view = self._view  # the receive buffer, which scanned frames point into

    # -- handshake ---------------------------------------------------------------------

    def request(self) -> bytes:
        """The opening handshake request (RFC 6455 4.1)."""
        lines = [
            f"GET {self.resource} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(self.subprotocols)}")
        if self.offer:
            lines.append(f"Sec-WebSocket-Extensions: {self.offer.offer()}")
        for name, value in self.extra_headers:
            if "\r" in f"{name}{value}" or "\n" in f"{name}{value}":
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _accept_handshake(self, head: bytes) -> Accepted:
        try:
            text = head.decode("iso-8859-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise InvalidHandshake("undecodable response") from None
        status, *header_lines = text.split("\r\n")
        m = re.fullmatch(r"HTTP/1\.1 (\d{3})(?: .*)?", status)
        if not m:
            raise InvalidHandshake(f"not an HTTP/1.1 status line: {status[:80]!r}")
        headers = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise InvalidHandshake(f"malformed header line: {line[:80]!r}")
            headers.append((name, value.strip()))
        if m.group(1) != "101":
            raise InvalidHandshake(f"server answered {status[9:80]!r}, not 101 Switching Protocols")

        def values(name: str) -> list[str]:
            return [v for k, v in headers if k.lower() == name]

        def tokens(name: str) -> list[str]:
            return [t.strip().lower() for v in values(name) for t in v.split(",") if t.strip()]

        if "websocket" not in tokens("upgrade"):
            raise InvalidHandshake("missing 'Upgrade: websocket'")
        if "upgrade" not in tokens("connection"):
            raise InvalidHandshake("missing 'Connection: Upgrade'")
        expected = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()
        if values("sec-websocket-accept") != [expected]:
            raise InvalidHandshake("Sec-WebSocket-Accept does not match our key")
        protocols = [t.strip() for v in values("sec-websocket-protocol") for t in v.split(",")]
        if len(protocols) > 1 or (protocols and protocols[0] not in self.subprotocols):
            raise InvalidHandshake(f"subprotocol not offered: {', '.join(protocols)}")
        extensions = [t.strip() for v in values("sec-websocket-extensions") for t in v.split(",")]
        extensions = [e for e in extensions if e]
        if extensions:
            if not self.offer or len(extensions) > 1:
                raise InvalidHandshake(f"extension not offered: {', '.join(extensions)}")
            self.deflate = self.offer.accept(extensions[0])
            self._deflater = _Deflater(self.deflate)
            self._flags |= lib.AL_WS_ALLOW_RSV1
        self.subprotocol = protocols[0] if protocols else None
        self.state = State.OPEN
        self.plain_open = self._deflater is None
        return Accepted(self.subprotocol, extensions[0] if extensions else None, tuple(headers))

    # -- receiving ---------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Free space at the end of the receive buffer (at least MIN_READ bytes)."""
        if not self._end:  # all consumed: the whole buffer, no slice to make
            return self._view
        if len(self._buf) - self._end < MIN_READ:
            self._make_room(MIN_READ)
        return self._view[self._end :]

    def _make_room(self, room: int) -> None:
        used = self._end - self._start
        size = len(self._buf)
        if used + room > size:  # grow: a new buffer, since views of the old one may be held
            size = max(size * 2, used + room)
            buf = bytearray(size)
            buf[:used] = self._view[self._start : self._end]
            self._buf, self._view, self._ptr = buf, memoryview(buf), ffi.from_buffer(buf)
            self.view = self._view
        elif used:
            self._buf[:used] = self._view[self._start : self._end]
        self._start, self._end = 0, used

    def buffer_updated(self, nbytes: int) -> list:
        """``nbytes`` were written into ``get_buffer()``; returns the events they complete."""
        self._end += nbytes
        events: list = []
        try:
            self._process(events)
        except ProtocolError as exc:
            exc.events = events
            raise
        return events

    def commit(self, nbytes: int) -> None:
        """``nbytes`` were written into ``get_buffer()``; the caller will ``scan()`` them."""
        self._end += nbytes

    def receive_data(self, data) -> list:
        """Feed received bytes; returns the events they complete (see module doc)."""
        events: list = []
        data = memoryview(data)
        try:
            while True:
                room = self.get_buffer()
                n = min(len(room), len(data))
                room[:n] = data[:n]
                data = data[n:]
                self._end += n
                self._process(events)
                if not data:
                    return events
        except ProtocolError as exc:
            exc.events = events
            raise

    def _process(self, events: list) -> None:
        if self.state is State.CONNECTING:
            head_end = self._buf.find(b"\r\n\r\n", self._start, self._end)
            if head_end < 0:
                if self._end - self._start > MAX_HEADERS:
                    self.state = State.CLOSED
                    raise InvalidHandshake(f"response headers over {MAX_HEADERS} bytes")
                return
            head = bytes(self._view[self._start : head_end])
            self._start = head_end + 4
            try:
                events.append(self._accept_handshake(head))
            except InvalidHandshake:
                self.state = State.CLOSED
                raise
        if self.state is State.CLOSED:
            self._start = self._end = 0  # anything after the close frame is discarded
        while self.state is not State.CLOSED:
            n = self.scan()
            view, it = self.view, iter(_unpack(self._frames, 2 * n))
            for meta, size in zip(it, it):
                kind = meta & 255
                if kind == 0x81 or kind == 0x82:
                    o = meta >> 8
                    events.append(Message(kind & 15, bytes(view[o : o + size])))
                else:
                    event = self.handle_frame(meta, size)
                    if event is not None:
                        events.append(event)
                    if self.state is State.CLOSED:
                        break
            if not self.scan_done():
                return

    def scan(self) -> int:
        """Parse the buffered whole frames' headers (in C); returns how many.

        Frame i is ``frame_at(i)``: (payload offset in ``view`` << 8 | the frame's first
        byte, payload length). Plain one-frame text (0x81, UTF-8 already checked) and binary
        (0x82) messages can be read straight from ``view`` (or handed out by
        ``_ws_py.dispatch``); every other frame goes through ``handle_frame(meta, size)``;
        then ``scan_done()`` must follow.
        """
        scan = self._scan
        r = _scan(
            self._ptr, self._start, self._end, len(self._buf), self._frames, SCAN_CAP,
            self.max_frame_size, self._flags, scan,
        )  # fmt: skip
        self._stop = r >> 16
        self._start += scan.consumed
        return r & 0xFFFF

    def receive_stopped(self) -> tuple[int, int]:
        """Adopt the scan of a ``_ws_py.Receiver`` read that stopped, as if by ``scan()``:
        (frames it found, of which it dispatched); ``scan_done()`` must follow."""
        st = self._scan
        self._start += st.consumed
        self._stop = st.stop
        return st.frames, st.taken

    def frame_at(self, i: int) -> tuple[int, int]:
        """(meta, size) of frame i of the last scan."""
        return self._frames[2 * i], self._frames[2 * i + 1]

    def join_text(self, n: int) -> memoryview | None:
        """The last scan's n frames as one JSON array of their payloads, if every one is a
        one-frame text message (else None): a whole read decoded in one decoder call."""
        if len(self._jbuf) < len(self._buf) + 2:
            self._jbuf = bytearray(len(self._buf) + 2)
            self._jview, self._jptr = memoryview(self._jbuf), ffi.from_buffer(self._jbuf)
        size = _join(self._ptr, self._frames, n, 0x81, self._jptr, len(self._jbuf), 91, 44, 93)
        return self._jview[:size] if size > 0 else None

    def scan_done(self) -> bool:
        """Release the frames of the last scan; True if another scan may find more."""
        if self._start == self._end:
            self._start = self._end = 0
        stop = self._stop
        if not stop:
            return False
        scan = self._scan
        if stop & lib.AL_WS_STOP_ERROR:
            code, reason = _SCAN_ERRORS[scan.error]
            self.fail(code, reason)
        if stop & lib.AL_WS_STOP_NEED:
            self._make_room(scan.need - (self._end - self._start))  # a big frame: grow
        return bool(stop & lib.AL_WS_STOP_FULL)

    def fail(self, code: int, reason: str):
        """Fail the connection: queue a close frame with ``code`` and raise ProtocolError."""
        if self.state in (State.OPEN, State.CONNECTING):
            self._out.append(self.frame(0x88, _close_payload(code, "")))
            self.close_sent = (code, "")
        self.state = State.CLOSED
        self.plain_open = False
        self._start = self._end = 0
        raise ProtocolError(code, reason)

    def handle_frame(self, meta: int, size: int):
        """Everything but a plain single-frame message: control frames, fragments, deflate."""
        kind, o = meta & 255, meta >> 8
        payload = bytes(self.view[o : o + size])
        opcode = kind & 15
        if self.state is State.CLOSED:
            return None
        if opcode >= 8:
            return self._control(opcode, payload)
        fin, compressed = kind & 0x80, kind & 0x40
        if opcode:  # first frame of a message
            if fin:
                return self._message(opcode, payload, compressed)
            self._frag_opcode, self._frag_compressed = opcode, compressed
            self._frag_parts, self._frag_size = [], 0
            self._frag_utf8 = (
                codecs.getincrementaldecoder("utf-8")()
                if opcode == 1 and not compressed else None
            )  # fmt: skip
        self._frag_size += len(payload)
        if self._frag_size > self.max_size and not self._frag_compressed:
            self.fail(1009, f"message over {self.max_size} bytes")
        if self._frag_utf8 is not None:  # fail fast on bad UTF-8 (RFC 6455 8.1)
            try:
                self._frag_utf8.decode(payload, final=bool(fin))
            except UnicodeDecodeError:
                self.fail(1007, "text message is not valid UTF-8")
        self._frag_parts.append(payload)
        if not fin:
            return None
        data = b"".join(self._frag_parts)
        self._frag_parts = []
        return self._message(self._frag_opcode, data, self._frag_compressed, checked=True)

    def _message(self, opcode: int, data: bytes, compressed, checked: bool = False) -> Message:
        if compressed:
            try:
                data = self._deflater.decompress(data, self.max_size)
            except ProtocolError as exc:
                self.fail(exc.code, exc.reason)
            checked = False
        elif len(data) > self.max_size:
            self.fail(1009, f"message over {self.max_size} bytes")
        if opcode == 1 and not checked and not lib.al_ws_utf8_valid(data, len(data)):
            self.fail(1007, "text message is not valid UTF-8")
        return Message(opcode, data)

    def _control(self, opcode: int, payload: bytes):
        if opcode == 9:
            if self.state is State.OPEN:
                self._out.append(self.frame(0x8A, payload))
            return Ping(payload)
        if opcode == 10:
            return Pong(payload)
        if len(payload) == 1:
            self.fail(1002, "close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big") if payload else 1005
        if payload and not is_valid_close_code(code):
            self.fail(1002, f"invalid close code {code}")
        if not lib.al_ws_utf8_valid(payload[2:], len(payload) - 2 if payload else 0):
            self.fail(1007, "close reason is not valid UTF-8")
        reason = payload[2:].decode()
        self.close_code, self.close_reason = code, reason
        if self.state is State.OPEN:  # echo the code (RFC 6455 5.5.1)
            self._out.append(self.frame(0x88, payload[:2]))
            self.close_sent = (code, "")
        self.state = State.CLOSED
        self.plain_open = False
        return Close(code, reason)

    # -- sending -----------------------------------------------------------------------

    def frame(self, first: int, payload) -> bytes:
        """One masked frame with this first byte (fin, rsv1, opcode) around payload."""
        return _frame(first, payload)

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise ConnectionClosedError(self.close_code or 1006, self.close_reason)

    def send_text(self, text: str) -> bytes:
        return self.send_message(1, text.encode())

    def send_binary(self, data) -> bytes:
        return self.send_message(2, data)

    def send_message(self, opcode: int, data) -> bytes:
        """One frame for a text (1) or binary (2) message, compressed if agreed."""
        self._check_open()
        if self._deflater is not None:
            return self.frame(0xC0 | opcode, self._deflater.compress(data))
        return self.frame(0x80 | opcode, data)

    def send_fragments(self, opcode: int, parts) -> bytes:
        """One message as several frames (uncompressed), for peers that test reassembly."""
        self._check_open()
        parts = list(parts)
        frames = []
        for i, part in enumerate(parts):
            fin = 0x80 if i == len(parts) - 1 else 0
            frames.append(self.frame(fin | (opcode if i == 0 else 0), part))
        return b"".join(frames)

    def send_ping(self, data: bytes = b"") -> bytes:
        self._check_open()
        if len(data) > 125:
            raise ValueError("ping payload over 125 bytes")
        return self.frame(0x89, data)

    def send_pong(self, data: bytes = b"") -> bytes:
        self._check_open()
        if len(data) > 125:
            raise ValueError("pong payload over 125 bytes")
        return self.frame(0x8A, data)

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Our close frame; the state becomes CLOSING until the peer's arrives."""
        if code != 1005 and not is_valid_close_code(code):
            raise ValueError(f"invalid close code {code}")
        payload = _close_payload(code, reason)
        self._check_open()
        self.state = State.CLOSING
        self.plain_open = False
        self.close_sent = (code, reason)
        return self.frame(0x88, payload)

    def data_to_send(self) -> bytes:
        """Replies owed to the peer (pongs, the close echo or failure's close frame)."""
        out, self._out = b"".join(self._out), []
        return out
