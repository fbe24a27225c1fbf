"""The asyncio adapter of the ITCH feed handler: MoldUDP64 A/B lines -> Sequencer -> books.

Design: one ``ItchFeedHandler`` owns the Sequencer, the ITCH decoder and the BookBuilder;
each line gets its own small DatagramProtocol from ``handler.protocol(line)`` (so the
sequencer knows the line a datagram came from), and the unicast request endpoint gets
``handler.request_protocol()``, which sends RetransmitRequest data and feeds the answers
back. Every protocol takes both ``datagram_received`` and ``datagrams_received`` (batch
with kernel rx_ns), so it runs on any transport. The handler opens no socket itself
except, on request, the request endpoint through the running loop.

    handler = ItchFeedHandler(Sequencer(session=b"SIM0000001"))
    await open_datagram_endpoint(lambda: handler.protocol("A"), ...)
    await open_datagram_endpoint(lambda: handler.protocol("B"), ...)
    await handler.connect_requests(("127.0.0.1", 30003))
    await handler.wait_end()
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable

from .book import BookBuilder, OrderBook, TopOfBook
from .itch import ItchDecoder
from .sequencer import (
    EndOfSession,
    FeedState,
    GapUnrecoverable,
    Message,
    RetransmitRequest,
    Sequencer,
    StateChanged,
)

__all__ = ["ItchFeedHandler"]

_MAX_GAPS_KEPT = 1024  # recent GapUnrecoverable ranges kept for inspection; all are counted


class ItchFeedHandler:
    """Books, VWAP and feed state from MoldUDP64/ITCH lines; one object shared by all lines."""

    def __init__(
        self,
        sequencer: Sequencer | None = None,
        builder: BookBuilder | None = None,
        *,
        tick_interval: float = 0.002,
        on_event: Callable[[StateChanged | GapUnrecoverable | EndOfSession], None] | None = None,
    ) -> None:
        """``on_event`` is called with every StateChanged, GapUnrecoverable, EndOfSession."""
        self.sequencer = sequencer or Sequencer()
        self.builder = builder or BookBuilder()
        self.decoder = ItchDecoder()
        self.tick_interval = tick_interval
        self.on_event = on_event
        self.gaps: deque[tuple[int, int]] = deque(maxlen=_MAX_GAPS_KEPT)  # (first, last)
        self.end_of_session: int | None = None
        self.requests_sent = 0
        self.requests_unsent = 0  # no request endpoint: the gap will be reported instead
        self.request_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._realtime_offset = 0.0  # CLOCK_REALTIME - loop clock, refreshed every tick
        self._transports: list = []
        self._request_transport = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []
        self._closed = False

    # -- for the strategy --

    @property
    def state(self) -> FeedState:
        return self.sequencer.state

    @property
    def books(self) -> dict[str, OrderBook]:
        return self.builder.books

    def top(self, symbol: str) -> TopOfBook | None:
        book = self.builder.books.get(symbol)
        return book.top() if book else None

    def vwap(self, symbol: str) -> float | None:
        """The symbol's VWAP in ITCH price units (None: no volume in the window)."""
        book = self.builder.books.get(symbol)
        return book.vwap.value() if book else None

    def counters(self) -> dict[str, int]:
        """Sequencer, book and decoder counters plus the handler's own, for metrics."""
        out = self.sequencer.counters()
        out.update({f"book_{k}": v for k, v in self.builder.counters().items()})
        out["itch_unknown"] = self.decoder.unknown
        out["itch_malformed"] = self.decoder.malformed
        out["requests_sent"] = self.requests_sent
        out["requests_unsent"] = self.requests_unsent
        out["request_errors"] = self.request_errors
        return out

    async def wait_state(self, state: FeedState) -> None:
        """Return once the feed is in ``state``."""
        await self._wait(lambda: self.sequencer.state is state)

    async def wait_end(self) -> int:
        """Return the end-of-session sequence once every message before it was handled."""
        await self._wait(lambda: self.end_of_session is not None)
        return self.end_of_session

    # -- wiring --

    def protocol(self, line: Hashable) -> asyncio.DatagramProtocol:
        """A new protocol for one line's endpoint (``line`` must be one of the sequencer's)."""
        if line not in self.sequencer.lines:
            raise ValueError(f"line {line!r} is not one of {tuple(self.sequencer.lines)}")
        return _LineProtocol(self, line)

    def request_protocol(self) -> asyncio.DatagramProtocol:
        """The protocol for a UDP endpoint connected to the retransmission request server."""
        return _RequestProtocol(self)

    async def connect_requests(self, server_addr: tuple[str, int]) -> None:
        """Create the request endpoint on the running loop, connected to ``server_addr``."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(self.request_protocol, remote_addr=server_addr)

    def close(self) -> None:
        """Stop the tick timer and close every endpoint this handler's protocols are on."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self._request_transport = None
        for _, future in self._waiters:
            if not future.done():
                future.cancel()
        self._waiters.clear()

    # -- internals --

    def _attach(self, transport) -> None:
        if self._closed:
            transport.close()
            return
        self._transports.append(transport)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._tick()

    def _detach(self, transport) -> None:
        if transport in self._transports:
            self._transports.remove(transport)
        if transport is self._request_transport:
            self._request_transport = None

    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()
        self._realtime_offset = time.time() - now
        self.sequencer.tick(now)
        self._drain()
        self._timer = loop.call_at(now + self.tick_interval, self._tick)

    def _now(self, rx_ns: int | None) -> float:
        """The receive time on the loop's clock: the kernel timestamp when there is one."""
        if rx_ns:
            return rx_ns * 1e-9 - self._realtime_offset
        return self._loop.time()

    def _receive(self, line: Hashable, data, rx_ns: int | None) -> None:
        self.sequencer.receive(data, self._now(rx_ns), line)
        self._drain()  # now: delivered payloads are views into ``data``

    def _receive_retransmission(self, data, rx_ns: int | None) -> None:
        self.sequencer.receive_retransmission(data, self._now(rx_ns))
        self._drain()

    def _drain(self) -> None:
        apply, decode = self.builder.apply, self.decoder.decode
        notify = False
        for event in self.sequencer.events():
            if type(event) is Message:
                apply(decode(event.payload))
                continue
            if type(event) is RetransmitRequest:
                self._send_request(event.data)
                continue
            if type(event) is GapUnrecoverable:
                self.gaps.append((event.first, event.last))
            elif type(event) is EndOfSession:
                self.end_of_session = event.sequence
            notify = True
            if self.on_event is not None:
                self.on_event(event)
        if notify and self._waiters:
            self._wake()

    def _send_request(self, data: bytes) -> None:
        transport = self._request_transport
        if transport is None or transport.is_closing():
            self.requests_unsent += 1
            return
        transport.sendto(data)
        self.requests_sent += 1

    async def _wait(self, ready: Callable[[], bool]) -> None:
        if ready():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((ready, future))
        await future

    def _wake(self) -> None:
        waiting = []
        for ready, future in self._waiters:
            if future.done():
                continue
            if ready():
                future.set_result(None)
            else:
                waiting.append((ready, future))
        self._waiters = waiting


class _LineProtocol(asyncio.DatagramProtocol):
    """One line's endpoint: datagrams go to the shared handler tagged with the line."""

    def __init__(self, handler: ItchFeedHandler, line: Hashable) -> None:
        self.handler = handler
        self.line = line
        self.transport = None
        self.errors = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.handler._attach(transport)

    def connection_lost(self, exc) -> None:
        self.handler._detach(self.transport)

    def datagram_received(self, data, addr) -> None:
        self.handler._receive(self.line, data, None)

    def datagrams_received(self, batch) -> None:
        receive = self.handler._receive
        line = self.line
        for data, _, rx_ns in batch:
            receive(line, data, rx_ns)

    def error_received(self, exc) -> None:
        self.errors += 1


class _RequestProtocol(asyncio.DatagramProtocol):
    """The request endpoint: sends RetransmitRequest data, feeds the answers back."""

    def __init__(self, handler: ItchFeedHandler) -> None:
        self.handler = handler
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.handler._request_transport = transport
        self.handler._attach(transport)

    def connection_lost(self, exc) -> None:
        self.handler._detach(self.transport)

    def datagram_received(self, data, addr) -> None:
        self.handler._receive_retransmission(data, None)

    def datagrams_received(self, batch) -> None:
        for data, _, rx_ns in batch:
            self.handler._receive_retransmission(data, rx_ns)

    def error_received(self, exc) -> None:
        self.handler.request_errors += 1  # e.g. no server there: ICMP port unreachable
