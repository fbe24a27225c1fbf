"""The kernel transport: any asyncio loop; readiness by add_reader, reads by recvmmsg in C.

One reader callback drains the socket in batches of up to 64 datagrams per
system call, with each datagram's kernel receive time; a protocol with
``datagrams_received(batch)`` gets everything of one callback in one call.
"""

from __future__ import annotations

import collections
import os
from asyncio import transports
from itertools import accumulate

from .._datagram import NAME_SPACE, call_protocol, unpack_sockaddr
from .._native import ffi, lib

_BATCH = 64
_ROUNDS = 16  # batches per readiness callback, so one busy feed cannot starve the loop


class KernelDatagramTransport(transports._FlowControlMixin, transports.DatagramTransport):
    """A datagram transport on a socket set up by open_udp_socket, for any loop."""

    def __init__(self, loop, sock, protocol, extra=None, *, slot=2048):
        super().__init__(extra, loop)
        self._sock, self._fd, self._slot = sock, sock.fileno(), slot
        self._remote = self._extra.get("peername")  # connected: sendto(data) goes there
        self._extra.update(socket=sock, sockname=sock.getsockname(), peername=self._remote)
        self._buf = ffi.new(f"unsigned char[{slot * _BATCH}]")
        self._view = memoryview(ffi.buffer(self._buf))
        self._lens = ffi.new(f"int32_t[{_BATCH}]")
        self._stamps = ffi.new(f"int64_t[{_BATCH}]")
        self._names = ffi.new(f"unsigned char[{NAME_SPACE * _BATCH}]")
        self._names_view = memoryview(ffi.buffer(self._names))
        self._namelens = ffi.new(f"uint32_t[{_BATCH}]")
        self._peers = {}
        self._out = collections.deque()  # datagrams waiting for the socket to take them
        self.truncated = 0  # datagrams longer than a slot: dropped and counted
        self._closing = self._reading = self._lost = False
        self._protocol = protocol
        self._batched = callable(getattr(protocol, "datagrams_received", None))
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self.resume_reading)

    # -- reading --

    def is_reading(self):
        return self._reading

    def pause_reading(self):
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self):
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self):
        batch = []
        for _ in range(_ROUNDS):
            n = lib.al_recv_batch(self._fd, self._buf, self._slot, _BATCH, self._lens,
                                  self._stamps, self._names, self._namelens)
            if n < 0:
                self._protocol.error_received(OSError(-n, os.strerror(-n)))
                break
            if n:
                self._collect(n, batch)
            if n < _BATCH:
                break
        if not batch:
            return
        if self._batched:
            self._call(self._protocol.datagrams_received, batch)
        else:
            for data, addr, _ in batch:
                self._call(self._protocol.datagram_received, data, addr)

    def _call(self, callback, *args):
        call_protocol(self, callback, *args)  # reported; the rest of the batch goes on

    def _collect(self, n, batch):
        lens = ffi.unpack(self._lens, n)
        stamps = ffi.unpack(self._stamps, n)
        addrs = self._addrs(ffi.unpack(self._namelens, n))
        # The datagrams lie back to back (al_recv_batch packs them): one copy out of
        # the buffer, then a slice each, in comprehensions.
        sizes = lens
        if min(lens) < 0:  # rare: a datagram longer than a slot fills it, and is dropped
            self.truncated += sum(1 for length in lens if length < 0)
            sizes = [length if length >= 0 else self._slot for length in lens]
        ends = list(accumulate(sizes))
        whole = self._view[:ends[-1]].tobytes()
        batch.extend([(whole[end - size:end], addr, stamp)
                      for end, size, addr, stamp, length in zip(ends, sizes, addrs, stamps, lens)
                      if length >= 0])

    def _addrs(self, namelens):
        """Source address per datagram; a namelen of 0 repeats the previous one."""
        n = len(namelens)
        if namelens.count(0) == n - 1:  # one sender, the usual feed: decode once
            return [self._peer(0, namelens[0])] * n
        addrs, addr = [], None
        for i, namelen in enumerate(namelens):
            if namelen:
                addr = self._peer(i, namelen)
            addrs.append(addr)
        return addrs

    def _peer(self, i, namelen):
        raw = self._names_view[i * NAME_SPACE:i * NAME_SPACE + namelen].tobytes()
        addr = self._peers.get(raw)
        if addr is None:
            addr = self._peers[raw] = unpack_sockaddr(raw)
        return addr

    # -- writing (retransmission requests and the like: rare, small) --

    def sendto(self, data, addr=None):
        if self._closing:
            return
        if self._remote is not None:
            if addr not in (None, self._remote):
                raise ValueError(f"Invalid address: must be None or {self._remote}")
            addr = self._remote  # the connected peer (sendto to it is send)
        if not self._out:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write_ready)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._out.append((bytes(data), addr))
        self._maybe_pause_protocol()

    def _write_ready(self):
        while self._out:
            data, addr = self._out[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._out.popleft()
        self._loop.remove_writer(self._fd)
        self._maybe_resume_protocol()
        if self._closing:
            self._finish()

    def get_write_buffer_size(self):
        return sum(len(data) for data, _ in self._out)

    # -- closing --

    def is_closing(self):
        return self._closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._out:
            self._finish()

    def abort(self):
        self._out.clear()
        self._loop.remove_writer(self._fd)
        self._closing = True
        self.pause_reading()
        self._finish()

    def _finish(self):
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._call_connection_lost)

    def _call_connection_lost(self):
        try:
            self._protocol.connection_lost(None)
        finally:
            self._sock.close()
