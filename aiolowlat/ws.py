"""WebSocket client (RFC 6455/7692) on any asyncio loop, in two styles.

The websockets library's style::

    async with aiolowlat.ws.connect("wss://host/stream") as ws:
        await ws.send('{"op": "subscribe"}')
        async for msg in ws:          # str or bytes; ws.rx_ns is its receive time
            ...

    async for ws in aiolowlat.ws.connect(url):   # reconnects with backoff and jitter
        await ws.send(subscribe)                  # resubscribe on every connection
        async for msg in ws:                      # ends when this connection closes
            ...

and picows's callback style for the lowest latency: subclass ``WSListener`` and
``transport, listener = await ws_connect(Listener, url)``; ``on_ws_frame`` gets each
message as a ``WSFrame`` (one object reused per connection; its payload is bytes, yours to
keep), called from C for every message of a read after one C scan of the whole read.

On the aiolowlat loop connections use its own transports (io_uring; TLS records in C); on
any other loop, aiofastnet's C socket and TLS transports, as picows does (the caller's
SSLContext, OpenSSL driven directly). ``fastnet=False`` takes the loop's own transports
anyway, ``fastnet=True`` aiofastnet's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import ssl as _ssl
import time
import urllib.parse
from collections import deque

from .protocols.websocket import (
    SCAN_CAP,
    ClientProtocol,
    Close,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    Deflate,
    InvalidHandshake,
    Message,
    Opcode,
    Ping,
    Pong,
    ProtocolError,
    State,
    WebSocketError,
    _py,
)

__all__ = [
    "ConnectionClosed", "ConnectionClosedError", "ConnectionClosedOK", "Deflate",
    "InvalidHandshake", "Opcode", "ProtocolError", "WSFrame", "WSListener", "WSTransport",
    "WebSocket", "WebSocketError", "connect", "ws_connect",
]  # fmt: skip

log = logging.getLogger("aiolowlat.ws")
_OPEN, _CLOSED = State.OPEN, State.CLOSED
_time_ns = time.time_ns
_dispatch, _frame = _py.dispatch, _py.frame

# One received message or control frame: opcode, payload (bytes, yours to keep), rx_ns,
# fin (always True: messages arrive whole) and close_code/close_reason. One object per
# connection, reused from call to call as picows does; a C type (csrc/ws.c).
WSFrame = _py.WSFrame


class WSListener:
    """Callbacks of one connection (override what you need).

    For feeds of JSON text messages, set ``batch_decoder`` (e.g.
    ``msgspec.json.Decoder(list[Trade])``): every read whose frames are all one-frame text
    messages is then decoded in one call, as a JSON array, and given to ``on_ws_batch``;
    any other read, or one that does not decode, goes frame by frame to ``on_ws_frame``.
    """

    batch_decoder = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        pass

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        pass

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        pass

    def on_ws_batch(self, transport: WSTransport, messages: list, rx_ns: int) -> None:
        """The messages of one read, decoded by ``batch_decoder`` (in order)."""


def _parse_url(url: str):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    return secure, parts.hostname, port, resource, host_header


class WSTransport(asyncio.BufferedProtocol):
    """The connection: the loop's protocol (reads into the core's buffer) and the user's
    handle to send, ping and close. ``transport`` is the underlying asyncio transport."""

    def __init__(self, core: ClientProtocol, listener_factory, *, ping_interval=None,
                 ping_timeout=None, close_timeout=10.0):  # fmt: skip
        self.core = core
        self._listener_factory = listener_factory
        self.listener: WSListener | None = None
        self.transport: asyncio.Transport | None = None
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self.handshake = self._loop.create_future()
        self.disconnected = self._loop.create_future()
        self._frame = WSFrame()
        # Once open, the loop calls C for every read: get_buffer and buffer_updated are the
        # Receiver's (csrc/ws.c), which gives back to the Python methods what is not common.
        general = WSTransport.buffer_updated.__get__(self)
        self._rx = _py.Receiver(core, _OPEN, general, self._c_read_stopped, self._c_read_failed)
        self.get_buffer, self.buffer_updated = self._rx.get_buffer, self._rx.buffer_updated
        self._on_frame = self._on_batch = self._batch_decode = None
        # What C hands plain messages to: on_ws_frame(self, frame), or a queue's append.
        self._fast_call = self._fast_arg = self._after_read = None
        self._pong_waiters: dict[bytes, tuple[asyncio.Future, int]] = {}
        self._keepalive: asyncio.Task | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._write_ok: asyncio.Future | None = None
        self.error: BaseException | None = None  # why the connection failed, if it did
        self.close_code: int | None = None  # the peer's close code; 1006 when it sent none
        self.close_reason = ""

    # -- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.core.request())

    def get_buffer(self, sizehint):  # the Receiver's, per instance
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        """Every read until the connection is open (and, with batch_decoder, after): an open
        connection's reads go to the Receiver's buffer_updated, in C."""
        rx_ns = _time_ns()
        core = self.core
        try:
            if core.state is not _OPEN:
                try:
                    events = core.buffer_updated(nbytes)
                except ProtocolError as exc:  # after the handshake, in the same read
                    for event in exc.events:
                        self._event(event, rx_ns)
                    raise
                for event in events:
                    self._event(event, rx_ns)
                self._flush()
                return
            core.commit(nbytes)
            self._frame.rx_ns = rx_ns
            self._read(rx_ns)
            if self._after_read is not None:
                self._after_read(self)
            if core._out:
                self._flush()
        except (ProtocolError, InvalidHandshake) as exc:
            self._fail(exc)
        except Exception as exc:  # the listener's bug: report it, close as RFC 6455 says
            self._c_read_failed(exc)

    def _c_read_stopped(self, rx_ns):
        """The Receiver's read stopped at a frame for Python (control, fragment, error)."""
        core = self.core
        try:
            if self._finish_scan(*core.receive_stopped(), rx_ns):
                self._read(rx_ns)
            if self._after_read is not None:
                self._after_read(self)
            if core._out:
                self._flush()
        except Exception as exc:
            self._c_read_failed(exc)

    def _c_read_failed(self, exc):
        if isinstance(exc, (ProtocolError, InvalidHandshake)):
            self._fail(exc)
        else:  # the listener's bug: report it, close as RFC 6455 says
            log.error("WebSocket listener raised; closing with 1011", exc_info=exc)
            self._fail(exc, 1011)

    def _read(self, rx_ns):
        """Scan and dispatch until no whole frame is left (in batches if asked for)."""
        core, batch_decode = self.core, self._batch_decode
        while True:
            n = core.scan()
            if batch_decode is not None and n:
                joined = core.join_text(n)
                if joined is not None:
                    try:
                        messages = batch_decode(joined)
                    except Exception:  # not all of the expected type: frame by frame
                        messages = None
                    if messages is not None:
                        self._on_batch(self, messages, rx_ns)
                        if core.scan_done():
                            continue
                        return
            i = _dispatch(
                core._buf, core.frames_addr, 0, n, self._frame, self._fast_call, self._fast_arg
            )
            if not self._finish_scan(n, i, rx_ns):
                return

    def _finish_scan(self, n, i, rx_ns) -> bool:
        """Frames i.. of the last scan (control frames, fragments and compressed messages
        here, plain messages from C); True if another scan may find more."""
        core, frame, call, arg = self.core, self._frame, self._fast_call, self._fast_arg
        while i < n:
            event = core.handle_frame(*core.frame_at(i))
            if event is not None:
                self._event(event, rx_ns)
                if core.state is _CLOSED:  # nothing follows a close frame
                    core._start = core._end = 0
                    return False
            i = _dispatch(core._buf, core.frames_addr, i + 1, n, frame, call, arg)
        return core.scan_done()

    def _event(self, event, rx_ns):
        frame = self._frame
        frame.rx_ns = rx_ns
        if type(event) is Message:
            frame.opcode, frame.payload = event.opcode, event.payload
        elif type(event) is Ping:
            frame.opcode, frame.payload = Opcode.PING, event.payload
        elif type(event) is Pong:
            frame.opcode, frame.payload = Opcode.PONG, event.payload
            self._pong(event.payload)
        elif type(event) is Close:
            self.close_code, self.close_reason = event.code, event.reason
            frame.opcode, frame.payload = Opcode.CLOSE, b""
            frame.close_code, frame.close_reason = event.code, event.reason
            self._flush()  # the echo
            self._expect_close()
        else:  # Accepted
            self._opened()
            return
        self._on_frame(self, frame)

    def _opened(self):
        self.listener = self._listener_factory()
        self._on_frame = self.listener.on_ws_frame
        appends = getattr(self.listener, "_appends", None)  # _Queue: message, rx_ns
        if appends is not None:
            self._fast_call, self._fast_arg = appends, None
            self._after_read = self.listener.after_read
        else:
            self._fast_call, self._fast_arg = self._on_frame, self
        self._on_batch = self.listener.on_ws_batch
        decoder = getattr(self.listener, "batch_decoder", None)
        self._batch_decode = decoder.decode if decoder is not None else None
        if self._batch_decode is None:  # batches are joined and decoded in Python
            core = self.core
            after = None if self._after_read is None else functools.partial(self._after_read, self)
            self._rx.arm(
                core.frames_addr, core.scan_addr, SCAN_CAP, core.max_frame_size, core._flags,
                self._frame, self._fast_call, self._fast_arg, after,
            )  # fmt: skip
        if not self.handshake.done():
            self.handshake.set_result(None)
        self.listener.on_ws_connected(self)
        if self.ping_interval:
            self._keepalive = self._loop.create_task(self._keep_alive())

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        self._rx.disarm()
        if self.close_code is None:
            self.close_code = 1006
            if self.error is None:
                self.error = exc or ConnectionError("connection closed without a close frame")
        if self._close_timer:
            self._close_timer.cancel()
        if self._keepalive:
            self._keepalive.cancel()
        for waiter, _ in self._pong_waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionClosedError(self.close_code, self.close_reason))
        self._pong_waiters.clear()
        if self._write_ok and not self._write_ok.done():
            self._write_ok.set_result(None)
        if not self.handshake.done():
            self.handshake.set_exception(
                self.error if isinstance(self.error, WebSocketError)
                else InvalidHandshake(f"connection lost during the handshake: {self.error}")
            )  # fmt: skip
            self.handshake.exception()  # retrieved: connect() reports it
        elif self.listener is not None:
            try:
                self.listener.on_ws_disconnected(self)
            except Exception:
                log.exception("on_ws_disconnected raised")
        if not self.disconnected.done():
            self.disconnected.set_result(None)

    def pause_writing(self):
        self._write_ok = self._loop.create_future()

    def resume_writing(self):
        if self._write_ok and not self._write_ok.done():
            self._write_ok.set_result(None)

    # -- failing and closing ------------------------------------------------------------

    def _flush(self):
        data = self.core.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, exc: BaseException, code: int | None = None):
        """Fail the connection: send the close frame the error calls for, then close."""
        if self.error is None:
            self.error = exc
        if code is not None and self.core.state is State.OPEN:
            self.transport.write(self.core.send_close(code, ""))
        self._flush()
        if self.close_code is None:
            self.close_code = 1006
        self.transport.close()

    def _expect_close(self):
        """The server closes TCP first (RFC 6455 7.1.1); abort if it does not in time."""
        if self._close_timer is None and not self.transport.is_closing():
            self._close_timer = self._loop.call_later(self.close_timeout, self.transport.abort)

    # -- sending ------------------------------------------------------------------------

    def send(self, opcode: int, payload) -> None:
        """Send one message (TEXT/BINARY, compressed if agreed) or a control frame."""
        if (opcode == 1 or opcode == 2) and self.core.plain_open:
            self.transport.write(_frame(0x80 | opcode, payload))
            return
        if self.core.state is not State.OPEN:
            raise ConnectionClosedError(self.close_code or 1006, self.close_reason)
        if opcode == Opcode.PING:
            data = self.core.send_ping(payload)
        elif opcode == Opcode.PONG:
            data = self.core.send_pong(payload)
        elif opcode == Opcode.CLOSE:
            return self.send_close()
        else:
            data = self.core.send_message(opcode, payload)
        self.transport.write(data)

    def send_ping(self, payload: bytes = b"") -> None:
        self.send(Opcode.PING, payload)

    def send_pong(self, payload: bytes = b"") -> None:
        self.send(Opcode.PONG, payload)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake; the connection ends when the server closes TCP."""
        if self.core.state is State.OPEN:
            self.transport.write(self.core.send_close(code, reason))
            self._expect_close()

    def disconnect(self) -> None:
        """Close TCP now (after what is queued), without a close handshake."""
        if self.transport is not None:
            self.transport.close()

    async def wait_disconnected(self) -> None:
        await asyncio.shield(self.disconnected)

    async def drain(self) -> None:
        if self._write_ok is not None and not self._write_ok.done():
            await self._write_ok

    def ping(self, payload: bytes | None = None) -> asyncio.Future:
        """Send a ping; the future resolves to the round trip in seconds when its pong comes."""
        payload = os.urandom(4) if payload is None else payload
        waiter = self._loop.create_future()
        self.send(Opcode.PING, payload)
        self._pong_waiters[bytes(payload)] = (waiter, time.perf_counter_ns())
        return waiter

    def _pong(self, payload: bytes):
        # A pong acknowledges its ping and every earlier one (RFC 6455 5.5.3).
        if bytes(payload) not in self._pong_waiters:
            return
        now = time.perf_counter_ns()
        for key in list(self._pong_waiters):
            waiter, sent = self._pong_waiters.pop(key)
            if not waiter.done():
                waiter.set_result((now - sent) / 1e9)
            if key == payload:
                break

    async def _keep_alive(self):
        """Ping every ping_interval; no pong within ping_timeout closes with 1011."""
        try:
            while self.core.state is State.OPEN:
                await asyncio.sleep(self.ping_interval)
                if self.core.state is not State.OPEN:
                    return
                waiter = self.ping()
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), self.ping_timeout)
                except TimeoutError:
                    log.warning("no pong within %.1f s: closing with 1011", self.ping_timeout)
                    self._fail(TimeoutError("keepalive ping timeout"), 1011)
                    return
        except (ConnectionClosed, asyncio.CancelledError):
            pass


def _client_ssl(secure: bool, ssl):
    if not secure:
        if ssl not in (None, False):
            raise ValueError("ssl= is for wss:// URLs only")
        return None
    if ssl in (None, True):
        return _ssl.create_default_context()  # verification and SNI on
    if ssl is False:
        raise ValueError("a wss:// URL needs TLS: ssl=False is not allowed")
    return ssl


def _create_connection(loop, fastnet: bool | None):
    """aiofastnet's create_connection (C socket and TLS transports, OpenSSL driven directly
    from the caller's SSLContext: what picows runs on) or the loop's own.

    fastnet=None, the default, takes the aiolowlat loop's own transports (io_uring, TLS
    records in C) and aiofastnet's on any other loop: asyncio's TLS transport is Python (1.3x
    picows' round trip in benchmarks/ws_feed.py), uvloop's Cython (1.1x)."""
    if fastnet is False or (fastnet is None and getattr(loop, "native_tls", False)):
        return loop.create_connection
    try:
        import aiofastnet
    except ImportError:
        if fastnet:
            raise ImportError("fastnet=True needs aiofastnet: pip install aiofastnet") from None
        return loop.create_connection
    return functools.partial(aiofastnet.create_connection, loop)


async def _open(listener_factory, url: str, *, ssl=None, server_hostname=None,
                compression=None, max_size=2**20, max_frame_size=None, ping_interval=20.0,
                ping_timeout=20.0, open_timeout=10.0, close_timeout=10.0, extra_headers=None,
                subprotocols=None, fastnet=None, **conn_kwargs) -> WSTransport:  # fmt: skip
    secure, host, port, resource, host_header = _parse_url(url)
    core = ClientProtocol(
        host_header, resource, subprotocols=subprotocols, extra_headers=extra_headers,
        compression=compression, max_size=max_size, max_frame_size=max_frame_size,
    )  # fmt: skip
    ssl_ctx = _client_ssl(secure, ssl)
    if ssl_ctx is not None:
        conn_kwargs["server_hostname"] = server_hostname or host
    loop = asyncio.get_running_loop()
    proto = WSTransport(core, listener_factory, ping_interval=ping_interval,
                        ping_timeout=ping_timeout, close_timeout=close_timeout)  # fmt: skip
    async with asyncio.timeout(open_timeout):
        create_connection = _create_connection(loop, fastnet)
        await create_connection(lambda: proto, host, port, ssl=ssl_ctx, **conn_kwargs)
        try:
            await proto.handshake
        except BaseException:
            if proto.transport is not None:
                proto.transport.abort()
            raise
    return proto


async def ws_connect(listener_factory, url: str, **kwargs) -> tuple[WSTransport, WSListener]:
    """Open a connection whose messages go to ``listener_factory()``'s callbacks.

    Keywords as ``connect``'s; heartbeats are off unless ``ping_interval`` is given.
    """
    kwargs.setdefault("ping_interval", None)
    proto = await _open(listener_factory, url, **kwargs)
    return proto, proto.listener


# --- the websockets-style interface -----------------------------------------------------------


class _Queue(WSListener):
    """Listener that keeps messages for ``WebSocket.recv``; pauses reading when full."""

    HIGH, LOW = 4096, 1024

    def __init__(self):
        self.messages: deque = deque()  # str or bytes
        self.rx_ns: deque = deque()  # each message's receive time
        self._appends = (self.messages.append, self.rx_ns.append)  # where C puts them
        self.waiter: asyncio.Future | None = None
        self.paused = False

    def on_ws_frame(self, transport, frame):  # messages C did not take: deflated, fragmented
        opcode = frame.opcode
        if opcode == 1:
            self.messages.append(str(frame.payload, "utf-8"))
        elif opcode == 2:
            self.messages.append(bytes(frame.payload))
        else:
            return
        self.rx_ns.append(frame.rx_ns)
        self.after_read(transport)

    def after_read(self, transport):
        """Wake recv(); stop reading while too many messages wait."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if len(self.messages) > self.HIGH and not self.paused:
            self.paused = True
            transport.transport.pause_reading()

    def on_ws_disconnected(self, transport):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class WebSocket:
    """An open connection with the websockets library's interface."""

    def __init__(self, proto: WSTransport):
        self._proto = proto
        self._queue: _Queue = proto.listener
        self.rx_ns = 0  # receive time (time.time_ns()) of the message recv() returned last
        self._end_quietly = False  # set by the reconnecting iterator

    @property
    def transport(self) -> asyncio.Transport:
        return self._proto.transport

    @property
    def subprotocol(self) -> str | None:
        return self._proto.core.subprotocol

    @property
    def close_code(self) -> int | None:
        return self._proto.close_code

    @property
    def close_reason(self) -> str:
        return self._proto.close_reason

    @property
    def state(self) -> State:
        return self._proto.core.state

    def _closed_error(self) -> ConnectionClosed:
        proto = self._proto
        err = proto.error
        if isinstance(err, ProtocolError):
            return ConnectionClosedError(err.code, err.reason)
        code, reason = proto.close_code or 1006, proto.close_reason
        if code in (1000, 1001) and err is None:
            return ConnectionClosedOK(code, reason)
        return ConnectionClosedError(code, reason or (str(err) if err else ""))

    async def recv(self) -> str | bytes:
        """The next message; raises ConnectionClosed once the connection is closed."""
        q = self._queue
        while not q.messages:
            if self._proto.disconnected.done():
                raise self._closed_error()
            q.waiter = self._proto._loop.create_future()
            await q.waiter
        msg, self.rx_ns = q.messages.popleft(), q.rx_ns.popleft()
        if q.paused and len(q.messages) < q.LOW:
            q.paused = False
            self._proto.transport.resume_reading()
        return msg

    def __aiter__(self):
        return self

    async def __anext__(self):
        q = self._queue
        if q.messages and not q.paused:  # recv()'s common case, without its coroutine
            self.rx_ns = q.rx_ns.popleft()
            return q.messages.popleft()
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None
        except ConnectionClosedError:
            if self._end_quietly:
                raise StopAsyncIteration from None
            raise

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._proto.send(Opcode.TEXT, message.encode())
        else:
            self._proto.send(Opcode.BINARY, message)
        await self._proto.drain()

    async def ping(self, data: bytes | None = None) -> asyncio.Future:
        """Send a ping; returns a future resolving to the round trip (s) on its pong."""
        return self._proto.ping(data)

    async def pong(self, data: bytes = b"") -> None:
        self._proto.send_pong(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close handshake, then wait (at most close_timeout) for the server to close TCP."""
        proto = self._proto
        if proto.transport is None or proto.disconnected.done():
            return
        proto.send_close(code, reason)
        try:
            await asyncio.wait_for(asyncio.shield(proto.disconnected), proto.close_timeout)
        except TimeoutError:
            proto.transport.abort()
            await proto.disconnected

    async def wait_closed(self) -> None:
        await asyncio.shield(self._proto.disconnected)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


class connect:  # noqa: N801 - used as a function, as websockets.connect is
    """``await connect(url)``, ``async with connect(url) as ws``, or ``async for ws in
    connect(url)`` to reconnect forever with exponential backoff and jitter."""

    def __init__(self, url: str, *, backoff_initial: float = 0.1, backoff_max: float = 10.0,
                 backoff_factor: float = 2.0, **kwargs):  # fmt: skip
        self.url, self.kwargs = url, kwargs
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.backoff_factor = backoff_factor
        self.connections = 0  # successful handshakes by the reconnecting iterator
        self.failures = 0  # failed attempts (refused, timed out, bad handshake)
        self._ws: WebSocket | None = None

    async def _connect(self) -> WebSocket:
        return WebSocket(await _open(_Queue, self.url, **self.kwargs))

    def __await__(self):
        return self._connect().__await__()

    async def __aenter__(self) -> WebSocket:
        self._ws = await self._connect()
        return self._ws

    async def __aexit__(self, *exc):
        await self._ws.close()

    async def __aiter__(self):
        delay = self.backoff_initial
        while True:
            try:
                ws = await self._connect()
            except (OSError, TimeoutError, WebSocketError) as exc:
                self.failures += 1
                log.warning("connect to %s failed (%s); retrying", self.url, exc)
            else:
                self.connections += 1
                delay = self.backoff_initial
                ws._end_quietly = True
                try:
                    yield ws
                finally:
                    await ws.close()
                log.info("connection to %s closed (%s); reconnecting", self.url, ws.close_code)
            # Full jitter over the upper half: spreads a crowd of clients, keeps growth.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * self.backoff_factor, self.backoff_max)
