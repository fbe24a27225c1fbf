"""The aiolowlat event loop: asyncio's whole API, with its I/O on io_uring.

The loop is asyncio's Unix loop (so TLS, subprocesses, signals, pipes, happy
eyeballs and every public method behave exactly as asyncio's) with the engine
swapped: the selector is an io_uring (_ring.Ring), stream sockets use the C
core's multishot recv and ordered sends (_stream), servers accept by multishot
accept, and sock_recv / sock_recv_into / sock_sendall / sock_connect /
sock_accept are io_uring operations. add_reader / add_writer and the remaining
socket calls are served by io_uring poll requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import heapq
import importlib.util
import os
import signal
import socket
import sys
import threading
import weakref
from asyncio import base_events, constants, events, format_helpers, sslproto
from collections import deque

import msgspec

from ._datagram import UringDatagramTransport, pack_sockaddr
from ._native import ffi, lib
from ._native._evloop import LoopCore
from ._ring import CQE_F_MORE, Ring
from ._stream import UringStreamTransport

_ECANCELED = errno.ECANCELED
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# picows' TLS layer (OpenSSL driven from C with the caller's SSLContext), imported on the
# first TLS connection: importing aiofastnet costs ~17 ms, a fifth of this module's.
HAVE_FAST_TLS = importlib.util.find_spec("aiofastnet") is not None


@functools.cache
def _fast_tls():
    """(SSLTransport_Transport, start_tls, SSL_BIO_SIZE_DEFAULTS) from aiofastnet."""
    from aiofastnet.api_start_tls import start_tls
    from aiofastnet.constants import SSL_BIO_SIZE_DEFAULTS
    from aiofastnet.ssl_transport import SSLTransport_Transport

    return SSLTransport_Transport, start_tls, SSL_BIO_SIZE_DEFAULTS


def _tls_layer(loop, protocol, sslcontext, waiter, server_side, server_hostname,
               handshake_timeout, shutdown_timeout):
    """(app transport, protocol for the socket transport) of a TLS connection. aiofastnet's
    layer when installed: asyncio's SSLProtocol is Python and cost 1.3-1.7x its round trip
    (benchmarks/ws_feed.py, picows-std on asyncio's loop); else asyncio's."""
    if handshake_timeout is None:
        handshake_timeout = constants.SSL_HANDSHAKE_TIMEOUT
    if shutdown_timeout is None:
        shutdown_timeout = constants.SSL_SHUTDOWN_TIMEOUT
    if not HAVE_FAST_TLS:
        tls = sslproto.SSLProtocol(loop, protocol, sslcontext, waiter, server_side,
                                   server_hostname,
                                   ssl_handshake_timeout=handshake_timeout,
                                   ssl_shutdown_timeout=shutdown_timeout)  # fmt: skip
        return tls._app_transport, tls
    layer, _, bio_sizes = _fast_tls()
    tls = layer(loop, protocol, sslcontext, server_side, handshake_timeout, shutdown_timeout,
                bio_sizes["ssl_incoming_bio_size"], bio_sizes["ssl_outgoing_bio_size"],
                waiter=waiter, server_hostname=server_hostname)
    return tls, tls.get_tls_protocol()


def _oserror(res: int, what: str = "") -> OSError:
    # OSError(errno, ...) picks the subclass (ConnectionRefusedError, ...) as asyncio's does.
    return OSError(-res, f"{what}{os.strerror(-res)}" if what else os.strerror(-res))


class Loop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose I/O runs on io_uring."""

    native_tls = HAVE_FAST_TLS  # ssl= records handled in C (see _tls_layer)

    def __init__(self, *, busy_poll: bool = False, sqpoll: bool = False,
                 ring_entries: int = 4096, recv_buffers: int = 1024,
                 recv_buffer_size: int = 16384):
        self._closed = True  # until set up: a loop whose ring failed is not "unclosed"
        ring = Ring(entries=ring_entries, nbufs=recv_buffers, bufsize=recv_buffer_size,
                    busy_poll=busy_poll, sqpoll=sqpoll)
        self._ring = ring
        self._accepts = {}  # listening fd -> token of its multishot accept
        self._unclaimed = weakref.WeakKeyDictionary()  # sock -> results of cancelled calls
        self._waiting = weakref.WeakKeyDictionary()  # sock -> calls that could take them
        super().__init__(selector=ring)
        ring.on_error = self.call_exception_handler
        self._core = LoopCore(self, ring, ring._disp, (events.Handle, events.TimerHandle),
                              _report_handle_error, self._clock_resolution, busy_poll,
                              (base_events.BaseEventLoop.call_soon,
                               base_events.BaseEventLoop.call_later,
                               base_events.BaseEventLoop.call_at))
        self._run_once = self._core.run_once  # run_forever calls it: skip a Python frame
        # Tasks and futures schedule every step through call_soon, and every timeout and
        # sleep through call_later: in C, they are asyncio's without its Python frames
        # (asyncio's own in debug mode or once closed).
        self.call_soon = self._core.call_soon
        self.call_later = self._core.call_later
        self.call_at = self._core.call_at

    @property
    def busy_poll(self) -> bool:
        return self._ring.busy_poll

    def ring_stats(self) -> dict:
        """Counters of the io_uring core (CQEs, ENOBUFS re-arms, short sends, ...)."""
        return self._ring.stats()

    def _run_once(self):
        """One iteration, asyncio's, in C (csrc/evloop.c LoopCore.run_once)."""
        self._core.run_once()

    def run_forever(self):
        # As uvloop does: while the loop runs in the main thread, every signal writes the
        # self-pipe, so a Python-level handler (asyncio.Runner's Ctrl-C, signal.signal) runs
        # at once. Without it, a signal taken by another thread, or landing between the last
        # bytecode and the ring's wait, leaves the wait asleep until its next event (asyncio's
        # own loop behaves so).
        wakes = self._csock is not None and threading.current_thread() is threading.main_thread()
        if wakes:
            old = signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)
        try:
            super().run_forever()
        finally:
            if wakes and not self._signal_handlers:  # add_signal_handler's own stays set
                signal.set_wakeup_fd(old)

    def _drop_cancelled_timers(self):
        scheduled = self._scheduled
        if (len(scheduled) > base_events._MIN_SCHEDULED_TIMER_HANDLES and
                self._timer_cancelled_count / len(scheduled) >
                base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION):
            live = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    live.append(handle)
            heapq.heapify(live)
            scheduled[:] = live  # in place: _run_once holds this list object
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(scheduled)._scheduled = False

    def _run_ready_debug(self, ntodo):
        """Debug mode: time each callback and warn about slow ones, as asyncio does."""
        for _ in range(ntodo):
            handle = self._ready.popleft()
            if handle._cancelled:
                continue
            try:
                self._current_handle = handle
                t0 = self.time()
                handle._run()
                dt = self.time() - t0
                if dt >= self.slow_callback_duration:
                    base_events.logger.warning("Executing %s took %.3f seconds",
                                               base_events._format_handle(handle), dt)
            finally:
                self._current_handle = None

    # -- wake-ups: call_soon_threadsafe writes the ring's eventfd --

    def _write_to_self(self):
        try:
            os.eventfd_write(self._ring.wake_fd, 1)
        except (OSError, AttributeError):
            pass  # closed meanwhile: nothing left to wake

    # -- transports --

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return UringStreamTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, *,
                            server_side=False, server_hostname=None, extra=None, server=None,
                            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        """TLS on the io_uring stream transport (asyncio's own puts it on a selector one),
        its records handled by a C layer when aiofastnet is there (see _tls_layer)."""
        tls, tls_protocol = _tls_layer(self, protocol, sslcontext, waiter, server_side,
                                       server_hostname, ssl_handshake_timeout,
                                       ssl_shutdown_timeout)
        self._make_socket_transport(rawsock, tls_protocol, extra=extra, server=server)
        return tls

    async def start_tls(self, transport, protocol, sslcontext, *, server_side=False,
                        server_hostname=None, ssl_handshake_timeout=None,
                        ssl_shutdown_timeout=None):
        """asyncio's start_tls, with the TLS layer _make_ssl_transport uses."""
        kw = {"server_side": server_side, "server_hostname": server_hostname,
              "ssl_handshake_timeout": ssl_handshake_timeout,
              "ssl_shutdown_timeout": ssl_shutdown_timeout}
        if not HAVE_FAST_TLS or not isinstance(transport, UringStreamTransport):
            return await super().start_tls(transport, protocol, sslcontext, **kw)
        return await _fast_tls()[1](self, transport, protocol, sslcontext, **kw)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        return UringDatagramTransport(self, sock, protocol, address, waiter, extra)

    def _start_serving(self, protocol_factory, sock, sslcontext=None, server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        fd = sock.fileno()
        args = (protocol_factory, sock, sslcontext, server, backlog,
                ssl_handshake_timeout, ssl_shutdown_timeout)

        def on_accept(res, flags):
            serving = self._accepts.get(fd) == tok
            if res >= 0:
                if not serving:
                    os.close(res)
                else:
                    self._accepted(res, *args)
            elif -res in _ACCEPT_RESOURCE_ERRORS:
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": _oserror(res), "socket": sock})
            elif -res != _ECANCELED and serving:
                self.call_exception_handler({
                    "message": "io_uring accept failed", "exception": _oserror(res),
                    "socket": sock})
            if flags & CQE_F_MORE or not serving:
                return
            del self._accepts[fd]
            if res >= 0:
                self._start_serving(*args)  # the kernel ended the multishot: re-arm
            elif -res in _ACCEPT_RESOURCE_ERRORS:
                self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving, *args)

        tok = self._ring.submit_op(lib.al_op_accept_multishot, on_accept, fd)
        self._accepts[fd] = tok

    def _accepted(self, fd, protocol_factory, sock, sslcontext, server, backlog,
                  ssl_handshake_timeout, ssl_shutdown_timeout):
        conn, peer = _accepted_socket(fd)
        self.create_task(self._accept_connection2(
            protocol_factory, conn, {"peername": peer}, sslcontext, server,
            ssl_handshake_timeout, ssl_shutdown_timeout))

    def _stop_serving(self, sock):
        tok = self._accepts.pop(sock.fileno(), None)
        if tok is not None:
            self._ring.cancel_op(tok)
        sock.close()

    # -- sock_* as io_uring operations --

    def _sock_op(self, sock, prep, value_of, *args, keep=None, kept_of=None, take=None,
                 what=""):
        """Run one op on ``sock``; its future gets ``value_of(res)`` or the OSError.

        io_uring may complete an op that its caller has cancelled meanwhile (the
        recv had already read): such a result (as ``kept_of(res)``, by default the
        value) goes to the next call of the kind ``keep`` on the socket, as asyncio
        would have left the bytes in the socket: to one already waiting, as
        ``take(result)``, or else to the next one made. A call can be waiting already
        when the cancel reaches the kernel after a new call was made (under SQPOLL the
        SQ thread takes the cancel when it gets to it), or when the result is reaped
        after it was made.
        """
        base_events._check_ssl_socket(sock)
        if self._debug and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        fut = self.create_future()

        def on_cqe(res, flags):
            if res < 0:
                if not fut.done():
                    fut.set_exception(_oserror(res, what))
            elif not fut.done():
                fut.set_result(value_of(res))
            elif keep is not None:
                self._hand_over(sock, keep, (kept_of or value_of)(res))

        tok = self._ring.submit_op(prep, on_cqe, sock.fileno(), *args)
        if keep is None:
            fut.add_done_callback(lambda f: f.cancelled() and self._ring.cancel_op(tok))
            return fut
        waiting = self._waiting.setdefault(sock, {}).setdefault(keep, {})
        waiting[fut] = take or (lambda value: value)

        def done(f):
            waiting.pop(f, None)
            self._ring.cancel_op(tok)  # if still pending: cancelled, or answered by a hand-over

        fut.add_done_callback(done)
        return fut

    def _hand_over(self, sock, keep, value):
        """A cancelled call's result: to the oldest call of its kind still waiting on
        ``sock`` (whose own op is then cancelled, its result handed on in turn), or
        kept for the next call."""
        waiting = self._waiting.get(sock, {}).get(keep)
        for fut, take in list(waiting.items()) if waiting else ():
            if not fut.done():
                fut.set_result(take(value))
                return
        self._unclaimed.setdefault(sock, {}).setdefault(keep, deque()).append(value)

    def _claim(self, sock, keep):
        """A result kept from a cancelled call on ``sock`` (see _sock_op), or None."""
        kept = self._unclaimed.get(sock, {}).get(keep)
        return kept.popleft() if kept else None

    def _keep_rest(self, sock, data, limit):
        """The first ``limit`` bytes of a kept result; the rest stays first in line."""
        if len(data) > limit:
            self._unclaimed.setdefault(sock, {}).setdefault("recv", deque()).appendleft(
                data[limit:])
            data = data[:limit]
        return data

    async def sock_recv(self, sock, n):
        def take(data):  # a cancelled call's bytes, for this one
            return self._keep_rest(sock, data, n)

        kept = self._claim(sock, "recv")
        if kept is not None:
            return take(kept)
        buf = bytearray(n)
        cbuf = ffi.from_buffer(buf)
        return await self._sock_op(sock, lib.al_op_recv, lambda res: bytes(buf[:res]),
                                   cbuf, n, 0, keep="recv", take=take)

    async def sock_recv_into(self, sock, buf):
        cbuf = ffi.from_buffer(buf, require_writable=True)

        def take(data):  # a cancelled call's bytes, into this one's buffer
            data = self._keep_rest(sock, data, len(cbuf))
            cbuf[0:len(data)] = data
            return len(data)

        kept = self._claim(sock, "recv")
        if kept is not None:
            return take(kept)

        # A cancelled call's bytes are in the caller's buffer: keep a copy of them.
        return await self._sock_op(sock, lib.al_op_recv, lambda res: res, cbuf, len(cbuf), 0,
                                   keep="recv", kept_of=lambda res: bytes(cbuf[0:res]),
                                   take=take)

    async def sock_sendall(self, sock, data):
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            chunk = ffi.from_buffer(view[pos:])  # referenced by the op until it completes
            pos += await self._sock_op(sock, lib.al_op_send, lambda res, c=chunk: res,
                                       chunk, len(chunk), 0)

    async def sock_connect(self, sock, address):
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self)
            _, _, _, _, address = resolved[0]
        addr = pack_sockaddr(sock.family, address)
        return await self._sock_op(sock, lib.al_op_connect, lambda res, a=addr: None,
                                   addr, len(addr), what=f"Connect call failed {address}: ")

    async def sock_accept(self, sock):
        kept = self._claim(sock, "accept")
        if kept is not None:
            return kept
        return await self._sock_op(sock, lib.al_op_accept, _accepted_socket, keep="accept")


def _report_handle_error(handle, exc):
    """What asyncio's Handle._run says when its callback raises (LoopCore ran the callback)."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _accepted_socket(fd):
    conn = socket.socket(fileno=fd)
    conn.setblocking(False)  # the fd is O_NONBLOCK; make the object agree
    try:
        peer = conn.getpeername()
    except OSError:
        peer = None
    return conn, peer


def new_event_loop(*, busy_poll: bool = False, sqpoll: bool = False, **ring_options) -> Loop:
    """A new aiolowlat loop; ``busy_poll`` spins on the completion queue instead of sleeping.

    ``ring_options``: ring_entries (SQ size), recv_buffers (a power of two) and
    recv_buffer_size, the provided-buffer pool shared by all stream receives.
    """
    return Loop(busy_poll=busy_poll, sqpoll=sqpoll, **ring_options)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's policy with aiolowlat loops (as uvloop.EventLoopPolicy)."""

    def _loop_factory(self):
        return new_event_loop()


def install() -> None:
    """Make aiolowlat the loop of every later asyncio.run() / new_event_loop()."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, config=None, debug=None, busy_poll: bool = False, sqpoll: bool = False):
    """Run a coroutine on a new aiolowlat loop, as asyncio.run() does.

    ``config``: a TOML file (or aiolowlat.config.Settings) that picks the loop
    (uring, uvloop, asyncio) and its mode, and tunes this thread and process as its
    [tuning] says (a report of what took effect goes to stderr; undone at the end),
    logs through structlog off the loop's thread as [log] says, and summarizes (and
    with a port, serves to Prometheus) ``aiolowlat.metrics.registry()`` as [metrics]
    says; ``aiolowlat.config.current()`` returns the settings while the coroutine runs.
    """
    if config is None:
        with asyncio.Runner(debug=debug,
                            loop_factory=lambda: new_event_loop(busy_poll=busy_poll,
                                                                sqpoll=sqpoll)) as runner:
            return runner.run(main)
    from . import config as _config
    from . import log, metrics, tuning

    settings = config if isinstance(config, _config.Settings) else _config.load(config)
    if busy_poll or sqpoll:  # the caller's explicit asks add to the file's
        settings = msgspec.structs.replace(settings, busy_poll=settings.busy_poll or busy_poll,
                                           sqpoll=settings.sqpoll or sqpoll)
    with contextlib.ExitStack() as undo:  # each step undone, in reverse, however the run ends
        _config._make_current(settings)
        undo.callback(_config._make_current, None)
        undo.callback(log.setup_logging(settings.log.format, level=settings.log.level).close)
        # Tuning applies to this thread, which runs the loop.
        tuner = tuning.apply(settings.tuning)
        undo.callback(tuner.restore)
        if tuner.findings:
            print(tuning.format_findings(tuner.findings), file=sys.stderr, flush=True)
        runner = undo.enter_context(
            asyncio.Runner(debug=debug, loop_factory=_config.loop_factory(settings)))
        return runner.run(metrics._serve_run_metrics(main, settings))
