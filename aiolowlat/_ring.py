"""The loop's io_uring: a selectors.BaseSelector whose select() also dispatches completions.

Each loop iteration submits every queued SQE and waits in one io_uring_enter, then
hands each completion to its owner. That per-event path is C (csrc/evloop.c,
Dispatcher): a stream's bytes go straight to protocol.data_received (the protocol
callback is the only Python work per event), other stream events to the
transport's ``_on_*`` methods, one-shot operations to their callback; poll
completions (add_reader / add_writer) come back to the loop as selector events, so
readers and writers keep asyncio's semantics. The loop's iteration itself is
C too (loop.py, LoopCore); ``select()`` remains for the selectors interface.
"""

from __future__ import annotations

import errno
import os
import select as _select
import selectors

from ._native import ffi, lib
from ._native._evloop import Dispatcher

EV_OP, EV_DATA, EV_EOF, EV_ERR, EV_DRAIN, EV_CLOSED, EV_DGRAM = range(7)
CQE_F_MORE = 1 << 1  # IORING_CQE_F_MORE: a multishot op stays armed

_POLL_READ = _select.POLLIN | _select.POLLERR | _select.POLLHUP
_POLL_WRITE = _select.POLLOUT | _select.POLLERR | _select.POLLHUP
_MAX_EVENTS = 1024
_BUSY_SLICE_NS = 1_000_000  # a busy spin returns to Python this often, so signals run
STAT_NAMES = ("cqes", "enobufs", "recv_arms", "sends", "short_sends", "sq_full",
              "dgram_truncated", "dgram_bad", "waits", "direct_sends", "timer_arms",
              "polls_skipped")


def _address(cdata) -> int:
    """A C pointer as an int, to hand it to the _evloop extension."""
    return int(ffi.cast("uintptr_t", cdata))


class UringUnavailableError(OSError):
    """io_uring cannot be used here; the message says what to install or enable."""


def _explain(err: int) -> str:
    if err == errno.ENOSYS:
        return "the kernel has no io_uring: use Linux 6.1 or newer built with CONFIG_IO_URING=y"
    if err == errno.EPERM:
        return (
            "io_uring is disabled for this process: set `sysctl kernel.io_uring_disabled=0` "
            "(or 1 and add the user to kernel.io_uring_group), or allow io_uring_setup in "
            "the container's seccomp profile"
        )
    if err == errno.ENOMEM:
        return "not enough locked memory for the ring: raise `ulimit -l` (RLIMIT_MEMLOCK)"
    return os.strerror(err)


class Ring(selectors.BaseSelector):
    """One io_uring per loop; also the loop's selector."""

    def __init__(self, *, entries=4096, nbufs=1024, bufsize=16384, busy_poll=False,
                 sqpoll=False):
        if nbufs < 1 or nbufs > 32768 or nbufs & (nbufs - 1):
            raise ValueError(f"recv_buffers must be a power of two up to 32768, not {nbufs}")
        if bufsize < 64 or entries < 8:
            raise ValueError("recv_buffer_size must be >= 64 and ring_entries >= 8")
        err = ffi.new("int *")
        flags = (lib.AL_SQPOLL if sqpoll else 0) | (lib.AL_BUSY_POLL if busy_poll else 0)
        ring = lib.al_loop_new(entries, nbufs, bufsize, flags, err)
        if ring == ffi.NULL:
            raise UringUnavailableError(-err[0], f"io_uring set-up failed: {_explain(-err[0])}")
        self._ring = ring
        self.wake_fd = lib.al_loop_wake_fd(ring)
        self.pool = memoryview(ffi.buffer(lib.al_loop_pool(ring), lib.al_loop_pool_size(ring)))
        self.busy_poll = busy_poll
        self.sqpoll = sqpoll
        self.on_error = None  # the loop's call_exception_handler
        self.batching = []  # transports holding a batch to hand over after this dispatch
        self._next_token = 1
        self.ops = {}     # token -> callback(res, cqe_flags), for py ops
        self.conns = {}   # token -> stream transport
        self._fd_to_key = {}  # fd -> SelectorKey
        self._map = selectors._SelectorMapping(self)  # looks up by fd or file object
        self._poll_tok = {}  # fd -> token of its armed poll
        self._ready = []  # selector events gathered during one select()
        # The wait and the per-event dispatch run in C (see csrc/evloop.c).
        self._disp = Dispatcher(_address(ring), _address(ffi.addressof(lib, "al_wait")),
                                _address(lib.al_loop_pool(ring)), self, self.conns, self.ops,
                                busy_poll)

    # -- plumbing shared by the loop and its transports --

    @property
    def c(self):
        if self._ring is None:
            raise RuntimeError("the event loop's ring is closed")
        return self._ring

    def new_token(self) -> int:
        tok = self._next_token
        self._next_token = tok + 1
        return tok

    def submit_op(self, prep, callback, *args) -> int:
        """Queue one py op: ``prep(ring, *args, token)``; callback(res, flags) on completion."""
        tok = self.new_token()
        ret = prep(self.c, *args, tok)
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        self.ops[tok] = callback
        return tok

    def cancel_op(self, tok: int) -> None:
        if self._ring is not None and tok in self.ops:
            lib.al_op_cancel(self._ring, tok)

    def inflight(self) -> int:
        return lib.al_loop_inflight(self.c)

    def stats(self) -> dict:
        out = ffi.new(f"uint64_t[{len(STAT_NAMES)}]")
        lib.al_loop_stats(self.c, out, len(STAT_NAMES))
        return dict(zip(STAT_NAMES, out))

    # -- selectors.BaseSelector, served by one-shot poll ops --

    def register(self, fileobj, events, data=None):
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        key = selectors.SelectorKey(fileobj, self._fileobj_lookup(fileobj), events, data)
        if key.fd in self._fd_to_key:
            raise KeyError(f"{fileobj!r} (FD {key.fd}) is already registered")
        self._fd_to_key[key.fd] = key
        self._arm_poll(key)
        return key

    def unregister(self, fileobj):
        fd = self._fileobj_lookup(fileobj)
        key = self._fd_to_key.pop(fd)
        self._disarm_poll(fd)
        return key

    def modify(self, fileobj, events, data=None):
        fd = self._fileobj_lookup(fileobj)
        key = self._fd_to_key.get(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if events == key.events:
            key = key._replace(data=data)
            self._fd_to_key[fd] = key
            return key
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def get_map(self):
        return self._map

    def _fileobj_lookup(self, fileobj):
        return selectors._fileobj_to_fd(fileobj)

    def _arm_poll(self, key):
        mask = (_POLL_READ if key.events & selectors.EVENT_READ else 0) | (
            _POLL_WRITE if key.events & selectors.EVENT_WRITE else 0)
        fd = key.fd

        def on_poll(res, flags, fd=fd):
            if self._poll_tok.get(fd) != tok:
                return  # cancelled or replaced meanwhile
            del self._poll_tok[fd]
            key = self._fd_to_key.get(fd)
            if key is None:
                return
            if res < 0:
                res = _POLL_READ | _POLL_WRITE  # EBADF & co.: let the callback see the error
            events = (selectors.EVENT_READ if res & _POLL_READ else 0) | (
                selectors.EVENT_WRITE if res & _POLL_WRITE else 0)
            # Re-arm now; it is submitted with the next wait, after the callback ran,
            # so a reader that left data behind is called again (level-triggered).
            self._arm_poll(key)
            if events & key.events:
                self._ready.append((key, events & key.events))

        tok = self.submit_op(lib.al_op_poll, on_poll, fd, mask)
        self._poll_tok[fd] = tok

    def _disarm_poll(self, fd):
        tok = self._poll_tok.pop(fd, None)
        if tok is not None:
            self.cancel_op(tok)

    # -- the wait --

    def select(self, timeout=None):
        if timeout is None:
            ns = -1
        else:
            ns = max(0, int(timeout * 1e9))
        if self.busy_poll and (ns < 0 or ns > _BUSY_SLICE_NS):
            ns = _BUSY_SLICE_NS
        n = self._disp.run(ns)
        if n < 0:
            self._wait_failed(n)
        if self.batching:
            self._flush_batches()
        ready = self._ready[:]
        self._ready.clear()  # in place: the C loop core holds this list
        return ready

    def _wait_failed(self, n):
        if n == -errno.EEXIST:
            raise RuntimeError("an aiolowlat loop runs only on the thread that first ran it "
                               "(its io_uring has a single issuer)")
        raise OSError(-n, f"io_uring wait failed: {os.strerror(-n)}")

    def _flush_batches(self):
        """Hand each datagram transport's batch of this wait to its protocol."""
        batching = self.batching[:]
        self.batching.clear()  # in place: the C loop core holds this list
        for transport in batching:
            transport._flush_batch()

    def close(self):
        ring, self._ring = self._ring, None
        if ring is None:
            return
        self.pool = None
        self._disp.close()
        lib.al_loop_free(ring)  # the kernel cancels every op still in flight
        for transport in list(self.conns.values()):
            transport._on_ring_closed()
        self.conns.clear()
        self.ops.clear()
        self._fd_to_key.clear()
        self._poll_tok.clear()
