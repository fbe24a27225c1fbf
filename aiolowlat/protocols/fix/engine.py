"""asyncio adapters for the FIX session: ``Session`` (send/receive), initiator, acceptor.

The protocol objects only move bytes and time between a transport and the sans-I/O
``FixSession``; timers are one ``call_later`` that is moved only when a deadline comes
earlier. The initiator reconnects with exponential backoff; the acceptor serves many
sessions on one port, picking the session from the first message's CompIDs. Either runs
over TLS with ``ssl=`` (an SSLContext), or with the one its settings' TLS keys made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from .codec import FixMessage, FrameReader, Garbled, decode
from .messages import FixStruct, from_fix
from .orders import OrderTracker
from .session import (
    AppMessage,
    Disconnect,
    FixSession,
    LoggedOn,
    LoggedOut,
    MessageDropped,
    RejectReceived,
    RejectSent,
    SessionNotReady,
)
from .settings import SessionSettings

__all__ = ["FixAcceptor", "FixInitiator", "Session", "SessionNotReady"]

log = logging.getLogger("aiolowlat.fix")


class Session:
    """One FIX session on the running loop: ``await send(msg)``, ``await receive()``.

    Received application messages go to ``on_message(session, msg)`` if given, else to a
    queue read by ``receive()``. Our orders are tracked in ``orders`` (an OrderTracker).
    """

    def __init__(self, settings: SessionSettings, *, store=None,
                 on_message: Callable[[Session, object], None] | None = None):
        self.settings = settings
        self.core = FixSession(settings.config, store if store is not None else
                               settings.open_store())
        self.orders = OrderTracker()
        self.on_message = on_message
        self.rejects: list[FixMessage] = []  # session Rejects received
        self.rejects_sent: list[RejectSent] = []
        self.dropped = 0
        self.callback_errors = 0
        self.logons = 0
        self.last_logout_text = ""
        self.last_error: Exception | None = None  # why the last connection failed, if it did
        self._logged_on_this_connection = False
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._transport: asyncio.Transport | None = None
        self._logged_on = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._paused = False
        self._drain_waiter: asyncio.Future | None = None

    # ---- public --------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, str, str]:
        return self.settings.config.key

    @property
    def is_logged_on(self) -> bool:
        return self.core.is_logged_on

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def wait_logged_on(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._logged_on.wait(), timeout)

    async def wait_disconnected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._disconnected.wait(), timeout)

    async def send(self, msg, *, timeout: float | None = None) -> int:
        """Send a FixStruct (or ``(msg_type, fields)``) once logged on; returns its MsgSeqNum.

        The message is in the store before it is written; waits for the logon (up to
        ``timeout``) and for the transport to take more data."""
        if not self.core.is_logged_on:
            await self.wait_logged_on(timeout)
        seq = self.send_nowait(msg)
        if self._paused:
            await self._drain()
        return seq

    def send_nowait(self, msg) -> int:
        """``send`` without waiting: raises SessionNotReady if not logged on."""
        if isinstance(msg, FixStruct):
            seq = self.core.send(msg.MSG_TYPE, msg.to_fields(), time.time())
            self.orders.sent(msg)
        else:
            msg_type, fields = msg
            seq = self.core.send(msg_type, fields, time.time())
        self._flush()
        return seq

    async def receive(self):
        """The next application message (typed if it is one of messages.py's)."""
        return await self._inbox.get()

    async def logout(self, text: str = "", timeout: float = 5.0) -> None:
        """Logout handshake, then the connection closes; bounded by ``timeout``."""
        if self._transport is None:
            return
        self._handle(self.core.logout(time.time(), text))
        try:
            await asyncio.wait_for(self._disconnected.wait(), timeout)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Close the connection without a Logout."""
        if self._transport is not None:
            self._transport.close()

    def close_store(self) -> None:
        self.core.store.close()

    # ---- called by the protocol ----------------------------------------------------------

    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._logged_on_this_connection = False
        self._paused = False
        self._disconnected.clear()
        self._handle(self.core.connection_made(time.time()))

    def _feed(self, data: bytes) -> None:
        self._handle(self.core.receive_data(data, time.time()))

    def _detach(self, exc: Exception | None = None) -> None:
        if exc is None and not self._logged_on_this_connection:
            # E.g. a TLS acceptor that wants a client certificate: under TLS 1.3 it hangs up
            # after our side of the handshake completed, and sends us no reason.
            exc = ConnectionResetError("connection closed before the Logon was answered"
                                       + (f" ({self.last_logout_text})"
                                          if self.last_logout_text else ""))
        if exc is not None:
            self.last_error = exc
            log.warning("fix connection lost %s: %r", self.key, exc)
        self._transport = None
        self._logged_on.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handle(self.core.connection_lost(time.time()))
        self._disconnected.set()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("FIX connection lost"))

    def _pause(self) -> None:
        self._paused = True

    def _resume(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def _drain(self) -> None:
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = asyncio.get_running_loop().create_future()
        await self._drain_waiter

    # ---- internals -----------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def _handle(self, events: list) -> None:
        self._flush()
        for ev in events:
            kind = type(ev)
            if kind is AppMessage:
                self._deliver(ev.msg)
            elif kind is LoggedOn:
                self.logons += 1
                self._logged_on_this_connection = True
                self.last_error = None
                self._logged_on.set()
                log.info("fix logon %s reset=%s", self.key, ev.reset)
            elif kind is RejectReceived:
                self.rejects.append(ev.msg)
                log.warning("fix session reject received %s: %s", self.key, ev.msg)
            elif kind is RejectSent:
                self.rejects_sent.append(ev)
            elif kind is MessageDropped:
                self.dropped += 1
                log.warning("fix dropped %s: %s", self.key, ev.reason)
            elif kind is LoggedOut:
                self.last_logout_text = ev.text
                self._logged_on.clear()
                log.info("fix logout %s: %s", self.key, ev.text)
            elif kind is Disconnect:
                log.info("fix disconnect %s: %s", self.key, ev.reason)
                self._logged_on.clear()
                if self._transport is not None:
                    self._transport.close()
        self._schedule()

    def _deliver(self, msg: FixMessage) -> None:
        try:
            typed = from_fix(msg)
        except (ValueError, TypeError) as exc:  # only without dictionary validation
            log.warning("fix message not readable as its type (%s): %s", exc, msg)
            typed = msg
        self.orders.received(typed)
        if self.on_message is not None:
            try:
                self.on_message(self, typed)
            except Exception:  # the application's bug must not take the session down
                self.callback_errors += 1
                log.exception("fix on_message failed %s", self.key)
        else:
            self._inbox.put_nowait(typed)

    def _schedule(self) -> None:
        deadline = self.core.next_deadline()
        if deadline is None or self._transport is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # fires first anyway, then reschedules
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._handle(self.core.on_timer(time.time()))


class _SessionProtocol(asyncio.Protocol):
    """Bytes between a transport and one Session (chosen now, or by the first message)."""

    def __init__(self, session: Session | None = None, router=None):
        self.session = session
        self._router = router
        self._pending = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        if self.session is not None:
            if self.session.connected:
                transport.close()
                self.session = None
                return
            self.session._attach(transport)

    def data_received(self, data):
        if self.session is not None:
            self.session._feed(data)
            return
        if self._router is None or self.transport.is_closing():
            return
        self._pending += data
        reader = FrameReader()
        reader.feed(self._pending)
        first = next(iter(reader.frames()), None)
        if first is None:
            if len(self._pending) > 65536:
                self.transport.close()
            return
        session = None if type(first) is Garbled else self._router(_decode_or_none(first))
        if session is None or session.connected:
            log.warning("fix acceptor: no free session for %r", first[:120])
            self.transport.close()
            return
        self.session = session
        session._attach(self.transport)
        pending, self._pending = self._pending, b""
        session._feed(pending)

    def connection_lost(self, exc):
        if self.session is not None and self.session._transport is self.transport:
            self.session._detach(exc)

    def pause_writing(self):
        if self.session is not None:
            self.session._pause()

    def resume_writing(self):
        if self.session is not None:
            self.session._resume()


def _decode_or_none(frame: bytes) -> FixMessage | None:
    try:
        return decode(frame)
    except ValueError:
        return None


class FixInitiator:
    """Connects one session, logs on, and reconnects with exponential backoff.

    ``ssl``: an SSLContext for TLS (default: the settings' one; ``False`` forces plain TCP).
    The server's name checked is ``settings.server_hostname`` or else ``settings.host``.
    """

    def __init__(self, settings: SessionSettings, *, store=None, on_message=None, ssl=None):
        self.settings = settings
        self.session = Session(settings, store=store, on_message=on_message)
        self.ssl = (settings.ssl if ssl is None else ssl) or None
        self.connects = 0
        self.connect_failures = 0
        self.last_error: Exception | None = None  # the last failed connect (e.g. a bad cert)
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> Session:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self.session

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.settings.reconnect_interval
        tls = {}
        if self.ssl is not None:
            tls = {"ssl": self.ssl,
                   "server_hostname": self.settings.server_hostname or self.settings.host}
        while not self._stopping:
            try:
                await loop.create_connection(lambda: _SessionProtocol(self.session),
                                             self.settings.host, self.settings.port, **tls)
            except OSError as exc:  # ssl.SSLError (a refused certificate) is one too
                self.connect_failures += 1
                self.last_error = exc
                log.warning("fix connect %s:%s failed (%r); retry in %.1fs",
                            self.settings.host, self.settings.port, exc, delay)
            else:
                self.connects += 1
                self.last_error = None
                logons = self.session.logons
                await self.session._disconnected.wait()
                if self.session.logons > logons:
                    delay = self.settings.reconnect_interval  # it worked: start over
            if self._stopping:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.max_reconnect_interval)

    async def wait_logged_on(self, timeout: float) -> None:
        """Wait for the logon; on timeout raise why connecting failed (e.g. an
        ssl.SSLCertVerificationError), or TimeoutError if nothing failed."""
        try:
            await self.session.wait_logged_on(timeout)
        except TimeoutError:
            error = self.last_error or self.session.last_error
            if error is not None:
                raise error from None
            raise

    async def stop(self, timeout: float = 5.0) -> None:
        """Log out (if logged on), stop reconnecting, close the store."""
        self._stopping = True
        if self.session.connected:
            await self.session.logout(timeout=timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.session.close_store()

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


class FixAcceptor:
    """One listening port, many sessions keyed by (BeginString, SenderCompID, TargetCompID).

    ``template`` (optional) accepts unknown counterparties: a session is created from it
    with the counterparty's CompID as TargetCompID (like QuickFIX's dynamic sessions).
    ``ssl`` (an SSLContext) serves TLS; by default the sessions' settings say, and they must
    agree, as one port has one TLS set-up.
    """

    def __init__(self, settings: Iterable[SessionSettings] = (), *, template=None,
                 on_message=None, on_session: Callable[[Session], None] | None = None,
                 ssl=None):
        self.sessions: dict[tuple[str, str, str], Session] = {}
        self.template = template
        self.on_message = on_message
        self.on_session = on_session
        self.refused = 0
        self._server: asyncio.Server | None = None
        for s in settings:
            self._add(s)
        if ssl is None:
            contexts = {id(s.ssl): s.ssl for s in self._all_settings()}
            if len(contexts) > 1:
                raise ValueError("the sessions of one acceptor port must have the same TLS "
                                 "settings (or pass ssl=)")
            ssl = next(iter(contexts.values()), None)
        self.ssl = ssl or None

    def _all_settings(self) -> list[SessionSettings]:
        found = [s.settings for s in self.sessions.values()]
        return found + ([self.template] if self.template is not None else [])

    def _add(self, settings: SessionSettings) -> Session:
        if settings.config.initiator:
            raise ValueError(f"session {settings.config.key} is not an acceptor session")
        session = Session(settings, on_message=self.on_message)
        self.sessions[settings.config.key] = session
        if self.on_session is not None:
            self.on_session(session)
        return session

    def _route(self, msg: FixMessage | None) -> Session | None:
        if msg is None or msg.msg_type != b"A":
            self.refused += 1
            return None
        begin = msg.get_str(8, "")
        key = (begin, msg.get_str(56, ""), msg.get_str(49, ""))
        session = self.sessions.get(key)
        if session is None and self.template is not None:
            tpl = self.template
            if tpl.config.begin_string == begin and tpl.config.sender_comp_id == key[1]:
                config = replace(tpl.config, target_comp_id=key[2], initiator=False)
                session = self._add(replace(tpl, config=config))
        if session is None:
            self.refused += 1
        return session

    async def start(self, host: str | None = None, port: int | None = None, **kwargs):
        """Listen on host:port (default: the first session's SocketAcceptHost/Port)."""
        first = next(iter(self.sessions.values()), None)
        base = first.settings if first is not None else self.template
        host = host if host is not None else (base.host if base else "127.0.0.1")
        port = port if port is not None else (base.port if base else 0)
        loop = asyncio.get_running_loop()
        kwargs.setdefault("ssl", self.ssl)
        self._server = await loop.create_server(
            lambda: _SessionProtocol(router=self._route), host, port, **kwargs
        )
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self, timeout: float = 5.0) -> None:
        """Log every connected session out, stop listening, close the stores."""
        if self._server is not None:
            self._server.close()
        sessions = [s for s in self.sessions.values() if s.connected]
        await asyncio.gather(*(s.logout(timeout=timeout) for s in sessions))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for s in self.sessions.values():
            s.close_store()

    async def __aenter__(self) -> FixAcceptor:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

