"""Transports on the io_uring core: the shared base and the stream transport (TCP, Unix).

Bytes arrive by a multishot recv into the loop's provided buffers; writes are
copied into the C core's per-connection queue and sent in order, submitted with
the loop's next wait. Semantics follow asyncio's _SelectorSocketTransport.

The hot paths are C (csrc/evloop.c): bytes reach the protocol without a Python
frame of ours while ``_fast_proto`` is set, and ``transport.write`` is a C Writer
while ``_sync_fast_path`` says the connection takes bytes; everything else falls
back to the Python methods here.
"""

from __future__ import annotations

import os
import socket
import warnings
from asyncio import constants, futures, protocols, transports
from asyncio.log import logger

from ._native import ffi, lib
from ._native._evloop import Writer

_conn_send = lib.al_conn_send
_CONN_SEND = int(ffi.cast("uintptr_t", ffi.addressof(lib, "al_conn_send")))


def _set_nodelay(sock):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM \
            and sock.proto == socket.IPPROTO_TCP:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class UringTransport(transports._FlowControlMixin):
    """What stream and datagram transports share: the C conn, reading, closing."""

    _sock = None
    _fast_proto = None  # the protocol, when the C dispatcher may call data_received itself
    _writer = None      # a stream's write() in C (Writer), when it has one

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        super().__init__(extra, loop)
        self._extra["socket"] = sock
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._ring = ring = loop._ring
        self._pool = ring.pool
        self._token = ring.new_token()
        self._c = ring.c  # valid while self._conn is: the ring frees conns before itself
        self._conn = self._open_conn()
        if self._conn == ffi.NULL:
            raise MemoryError("no memory for an io_uring connection")
        ring.conns[self._token] = self
        self._server = server
        self._closing = False      # close() or abort() called
        self._paused = False       # pause_reading() in effect
        self._conn_lost = 0        # connection_lost scheduled
        self._writes_after_close = 0  # asyncio warns after a few of these
        self._lost_exc = None
        self._stash = []           # bytes that arrived after pause_reading()
        self._protocol_connected = False
        self.set_protocol(protocol)
        if server is not None:
            server._attach()
        loop._transports[self._sock_fd] = self
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return f"<{type(self).__name__} fd={self._sock_fd} {state}>"

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # -- protocol --

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._protocol_connected = True
        self._sync_fast_path()

    def _sync_fast_path(self):
        """Tell the C side what it may do without Python: deliver bytes, send bytes."""
        writer = self._writer
        if writer is not None:
            live = self._conn is not None and not self._closing and not self._conn_lost
            writer.conn = int(ffi.cast("uintptr_t", self._conn)) if live else 0
            writer.high_water = self._high_water

    def _set_write_buffer_limits(self, high=None, low=None):
        super()._set_write_buffer_limits(high, low)
        if self._writer is not None:
            self._writer.high_water = self._high_water

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    # -- reading --

    def _start_reading(self):
        if not self._closing and not self._paused and self._conn is not None:
            lib.al_conn_recv_start(self._c, self._conn)

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if self._closing or self._paused:
            return
        self._paused = True
        self._sync_fast_path()
        if self._conn is not None:
            lib.al_conn_recv_stop(self._c, self._conn)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._sync_fast_path()
        self._loop.call_soon(self._drain_stash)

    def _drain_stash(self):
        """Deliver, in order, what raced with pause_reading(); then read again."""
        while self._stash and not self._paused and not self._conn_lost:
            self._deliver_stashed(self._stash.pop(0))
        self._sync_fast_path()
        self._start_reading()

    def _on_drain(self):
        self._maybe_resume_protocol()

    def get_write_buffer_size(self):
        return 0 if self._conn is None else lib.al_conn_pending(self._conn)

    # -- closing --

    def close(self):
        if self._closing:
            return
        self._closing = True
        self._sync_fast_path()
        self._release(abort=False)

    def abort(self):
        self._force_close(None)

    def _fatal_error(self, exc, message="Fatal error on transport"):
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message, "exception": exc,
                "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc):
        if self._conn_lost:
            return
        self._closing = True
        self._lost_exc = exc
        self._sync_fast_path()
        self._release(abort=True)

    def _release(self, abort):
        """Ask the core to let go of the socket; connection_lost follows its release."""
        conn = self._conn
        if conn is None:
            return
        if lib.al_conn_close(self._c, conn, abort):
            self._conn = None  # freed by the core: never pass it to C again
            self._ring.conns.pop(self._token, None)
            self._on_released()

    def _on_released(self):
        self._conn = None
        self._sync_fast_path()
        if not self._conn_lost:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, self._lost_exc)

    def _on_ring_closed(self):
        """The loop closed under us: free the C state; the socket stays the user's."""
        if self._conn is not None:
            lib.al_conn_free(self._conn)
            self._conn = None
            self._sync_fast_path()

    def _call_connection_lost(self, exc):
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._fast_proto = None
            self._loop._transports.pop(self._sock_fd, None)
            self._loop = None
            server, self._server = self._server, None
            if server is not None:
                server._detach()


class UringStreamTransport(UringTransport, transports.Transport):
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        self._eof = False  # write_eof() called
        super().__init__(loop, sock, protocol, waiter, extra, server)
        _set_nodelay(sock)

    def _open_conn(self):
        conn = lib.al_stream_new(self._c, self._sock_fd, self._token)
        # An instance attribute: protocols call transport.write straight into C.
        self.write = self._writer = Writer(self, int(ffi.cast("uintptr_t", self._c)),
                                           _CONN_SEND)
        return conn

    def set_protocol(self, protocol):
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        super().set_protocol(protocol)

    def _sync_fast_path(self):
        super()._sync_fast_path()
        if self._writer is not None and self._eof:
            self._writer.conn = 0
        direct = not (self._buffered or self._paused or self._stash)
        self._fast_proto = self._protocol if direct else None

    def _deliver_stashed(self, item):
        if item is None:
            self._on_eof()
        else:
            self._deliver(item)

    def _on_data(self, n, off):
        data = self._pool[off:off + n].tobytes()
        if self._paused or self._stash:  # keep order behind what is stashed
            self._stash.append(data)
            self._sync_fast_path()
        elif self._buffered:
            self._deliver(data)
        else:  # the hot path: one Python call per event, the protocol's
            try:
                self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _deliver(self, data):
        try:
            if not self._buffered:
                self._protocol.data_received(data)
                return
            view, n = memoryview(data), len(data)
            pos = 0
            while pos < n:
                buf = self._protocol.get_buffer(n - pos)
                size = len(buf)
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                k = min(size, n - pos)
                memoryview(buf).cast("B")[:k] = view[pos:pos + k]
                pos += k
                self._protocol.buffer_updated(k)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _on_eof(self):
        if self._conn_lost:
            return
        if self._paused or self._stash:
            self._stash.append(None)
            self._sync_fast_path()
            return
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def _on_error(self, res):
        exc = OSError(-res, os.strerror(-res))
        if -res in (104, 32):  # ECONNRESET, EPIPE: as asyncio, the subclass the user expects
            exc = (ConnectionResetError if -res == 104 else BrokenPipeError)(-res, os.strerror(-res))
        self._fatal_error(exc, "Fatal read error on socket transport")

    # -- writing --

    def write(self, data):
        """Python's side of write(): the C Writer (self.write) comes here for what it
        does not handle itself (not bytes, closing, closed, after write_eof)."""
        self._write(data)

    def _write(self, data):
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, "
                                f"not {type(data).__name__!r}")
            data = ffi.from_buffer(data)
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._conn_lost or self._conn is None or self._closing:
            if self._writes_after_close >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._writes_after_close += 1  # not _conn_lost: connection_lost must still come
            return
        self._after_send(_conn_send(self._c, self._conn, data, len(data)))

    def _after_send(self, pending):
        """Bytes were queued: fail on an error, pause the protocol above the high water."""
        if pending < 0:
            self._fatal_error(OSError(-pending, os.strerror(-pending)),
                              "Fatal write error on socket transport")
        elif pending > self._high_water:
            self._maybe_pause_protocol()
            if self._protocol_paused:
                lib.al_conn_notify_drain(self._conn, self._low_water)

    def writelines(self, list_of_data):
        self.write(b"".join(list_of_data))

    def write_eof(self):
        if self._closing or self._eof:
            return
        self._eof = True
        self._sync_fast_path()
        if self._conn is not None:
            lib.al_conn_shutdown_wr(self._c, self._conn)

    def can_write_eof(self):
        return True
