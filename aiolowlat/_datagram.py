"""Datagram transport (UDP, Unix datagrams) on the io_uring core.

Datagrams arrive by a multishot recvmsg into the loop's provided buffers, with
the sender's address beside each payload; each sendto() becomes one sendmsg
operation, submitted with the loop's next wait. Semantics follow asyncio's
_SelectorDatagramTransport: errors of a send or receive go to error_received()
and the endpoint stays open.

The hot paths are C (csrc/evloop.c): while ``_fast_proto`` is the transport's
DgramReceiver, the dispatcher calls ``protocol.datagram_received`` itself, and
``transport.sendto`` is a DgramSender that sends bytes to a connected or already
packed address without a Python frame; everything else falls back to the Python
methods here.
"""

from __future__ import annotations

import os
import socket
import struct
from asyncio import transports
from asyncio.log import logger

from ._native import ffi, lib
from ._native._evloop import DgramReceiver, DgramSender
from ._stream import UringTransport

NAME_SPACE = lib.AL_DGRAM_NAME_SPACE
CONTROL_SPACE = lib.AL_DGRAM_CONTROL_SPACE
_ADDR_CACHE_MAX = 4096  # distinct peers remembered, so a feed's sender is parsed once
_DGRAM_SEND = int(ffi.cast("uintptr_t", ffi.addressof(lib, "al_dgram_send")))


def pack_sockaddr(family: int, address) -> bytes:
    """The C sockaddr for a Python address, resolving names as socket.sendto would."""
    if family == socket.AF_UNIX:
        path = os.fsencode(address)
        return struct.pack("=H", family) + path + (b"" if path[:1] == b"\0" else b"\0")
    host, port = address[:2]
    try:
        packed = socket.inet_pton(family, host.split("%", 1)[0])
    except OSError:  # a name: resolve it (blocking, exactly as sock.sendto does)
        info = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        return pack_sockaddr(family, info[0][4])
    if family == socket.AF_INET:
        return struct.pack("=H", family) + struct.pack("!H", port) + packed + bytes(8)
    flowinfo, scope_id = (tuple(address[2:4]) + (0, 0))[:2]
    return struct.pack("=H", family) + struct.pack("!HI", port, flowinfo) + packed \
        + struct.pack("=I", scope_id)


def call_protocol(transport, callback, *args):
    """As asyncio's datagram transport: a protocol's exception is reported and the
    endpoint stays open (a feed must not stop on one bad callback)."""
    try:
        callback(*args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        transport._loop.call_exception_handler({
            "message": f"Exception in {callback.__qualname__}", "exception": exc,
            "transport": transport, "protocol": transport._protocol})


def unpack_sockaddr(raw: bytes):
    """A kernel sockaddr as the address tuple (or path) socket.recvfrom returns."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        port, flowinfo = struct.unpack_from("!HI", raw, 2)
        return socket.inet_ntop(family, raw[8:24]), port, flowinfo, \
            struct.unpack_from("=I", raw, 24)[0]
    if family == socket.AF_UNIX:
        path = raw[2:]
        return os.fsdecode(path.split(b"\0", 1)[0]) if path[:1] != b"\0" else path
    return raw


class UringDatagramTransport(UringTransport, transports.DatagramTransport):
    """asyncio's datagram transport on io_uring; with ``timestamps`` (the socket set up
    for SO_TIMESTAMPING) each datagram carries its kernel receive time, which a
    protocol with ``datagrams_received(batch)`` gets as (data, addr, rx_ns) tuples,
    all of one loop iteration in one call."""

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None, *,
                 timestamps=False):
        self._timestamps = timestamps
        self._name_gap = NAME_SPACE + (CONTROL_SPACE if timestamps else 0)
        self._batch = []
        self._batched = False
        self._address = address  # the connected peer, if any
        self._family = sock.family
        self._packed = {}  # address -> C sockaddr
        self._peers = {}   # C sockaddr -> address
        self._receiver = DgramReceiver(self._peers, self._name_gap)
        super().__init__(loop, sock, protocol, waiter, extra)

    def _open_conn(self):
        conn = lib.al_dgram_new(self._c, self._sock_fd, self._token, self._timestamps)
        # An instance attribute: protocols call transport.sendto straight into C.
        self.sendto = self._writer = DgramSender(
            self, int(ffi.cast("uintptr_t", self._c)), _DGRAM_SEND,
            self._address if self._address else None, self._packed)
        return conn

    def set_protocol(self, protocol):
        self._batched = callable(getattr(protocol, "datagrams_received", None))
        super().set_protocol(protocol)

    def _sync_fast_path(self):
        super()._sync_fast_path()
        receiver = self._receiver
        if self._paused or self._stash or self._protocol is None:
            receiver.protocol = receiver.batch = None
            self._fast_proto = None
        elif self._batched:  # C appends to the batch that _flush_batch hands over
            receiver.protocol, receiver.batch = None, self._batch
            receiver.batching = self._ring.batching
            self._fast_proto = receiver
        else:
            receiver.protocol, receiver.batch = self._protocol, None
            self._fast_proto = receiver

    def _call_connection_lost(self, exc):
        try:
            super()._call_connection_lost(exc)
        finally:
            self._receiver.protocol = self._receiver.batch = None  # hold no reference to them

    def _peer(self, raw):
        """The address for a raw sockaddr, decoded once per sender and cached."""
        addr = self._peers.get(raw)
        if addr is None:
            if len(self._peers) >= _ADDR_CACHE_MAX:
                self._peers.clear()
            addr = self._peers[raw] = unpack_sockaddr(raw)
        return addr

    def _on_dgram(self, n, aux, rx_ns):
        """A datagram the C dispatcher did not deliver itself: stash, batch or call."""
        off = aux & 0xFFFFFFFFFF
        name_off = off - self._name_gap
        addr = self._peer(self._pool[name_off:name_off + (aux >> 40)].tobytes())
        data = self._pool[off:off + n].tobytes()
        if self._paused or self._stash:
            self._stash.append((data, addr, rx_ns))
        elif self._batched:
            if not self._batch:
                self._ring.batching.append(self)
            self._batch.append((data, addr, rx_ns))
        else:
            self._call(self._protocol.datagram_received, data, addr)

    def _dgram_failed(self, protocol, exc):
        """datagram_received, called from C, raised: report it as call_protocol does."""
        self._loop.call_exception_handler({
            "message": f"Exception in {protocol.datagram_received.__qualname__}",
            "exception": exc, "transport": self, "protocol": self._protocol})

    def _flush_batch(self):
        batch, self._batch = self._batch, []
        if self._receiver.batch is not None:
            self._receiver.batch = self._batch
        if not self._conn_lost:
            self._call(self._protocol.datagrams_received, batch)

    def _call(self, callback, *args):
        call_protocol(self, callback, *args)

    def _deliver_stashed(self, item):
        if self._batched:
            self._protocol.datagrams_received([item])
        else:
            self._protocol.datagram_received(*item[:2])

    def _on_error(self, res):
        self._protocol.error_received(OSError(-res, os.strerror(-res)))

    def sendto(self, data, addr=None):
        """Python's side of sendto(): the C DgramSender (self.sendto) comes here for what
        it does not handle itself (not bytes, a new address, errors, closing)."""
        self._sendto(data, addr)

    def _sendto(self, data, addr=None):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if not data:
            return
        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = None
        if self._conn_lost or self._conn is None or self._closing:
            if self._writes_after_close >= 5:
                logger.warning("socket.send() raised exception.")
            self._writes_after_close += 1  # not _conn_lost: connection_lost must still come
            return
        if addr is None:
            name = ffi.NULL
            namelen = 0
        else:
            name = self._packed.get(addr)
            if name is None:
                if len(self._packed) >= _ADDR_CACHE_MAX:
                    self._packed.clear()
                name = self._packed[addr] = pack_sockaddr(self._family, addr)
            namelen = len(name)
        if type(data) is not bytes:
            data = ffi.from_buffer(data)
        self._after_sendto(lib.al_dgram_send(self._c, self._conn, data, len(data), name, namelen))

    def _after_sendto(self, pending):
        """A datagram was queued: report an error, pause the protocol above the high water."""
        if pending < 0:
            self._protocol.error_received(OSError(-pending, os.strerror(-pending)))
        elif pending > self._high_water:
            self._maybe_pause_protocol()
            if self._protocol_paused:
                lib.al_conn_notify_drain(self._conn, self._low_water)
