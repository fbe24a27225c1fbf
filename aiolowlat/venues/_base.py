"""What every venue adapter shares: books, counters, the outbox and the resync path.

An adapter is sans-I/O: the runner (feed.py) hands it each WebSocket message with
its receive time and gets events back; what the adapter wants sent (subscriptions,
resubscriptions after a gap, application pings) waits in an outbox, and what it
wants fetched over HTTP (Binance's depth snapshot) in a request list. Nothing in an
adapter raises on feed content: a message it cannot use is counted in ``drops``.
"""

from __future__ import annotations

import msgspec

from .book import OrderBook, RawLevel
from .events import BookDelta, BookSnapshot, Event, Resync

__all__ = ["Counters", "VenueAdapter"]

# Everything a malformed message can raise while being decoded or applied.
_BAD_INPUT = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    UnicodeDecodeError,
)


class Counters(msgspec.Struct):
    """Feed health, per adapter; nothing is dropped or resynced without a count."""

    messages: int = 0
    drops: int = 0  # messages that could not be decoded or used
    gaps: int = 0  # sequence discontinuities
    checksum_failures: int = 0
    crossed: int = 0  # best bid >= best ask after an update
    resyncs: int = 0  # books dropped and rebuilt
    reconnects: int = 0  # connections after the first
    stalls: int = 0  # connections closed by the runner for silence


class VenueAdapter:
    """Base of the five venue adapters; see the module docstring for the contract."""

    venue: str = ""
    default_url: str = ""
    sim_path: str = ""  # the venue's path on the simulator, e.g. "/okx"
    heartbeat_interval: float | None = None  # seconds between application pings

    def __init__(self, *, url: str | None = None, simulator: str | None = None) -> None:
        # ``simulator`` is the simulator's base URL (wss://127.0.0.1:PORT); it wins.
        self.base_url = simulator.rstrip("/") + self.sim_path if simulator else None
        self.url = self.base_url or url or self.default_url
        self.symbols: list[str] = []
        self.books: dict[str, OrderBook] = {}
        self.counters = Counters()
        self._outbox: list[str] = []
        self._connections = 0

    # -- runner interface -------------------------------------------------------
    def start(self, symbols: list[str]) -> None:
        """Set the symbols to follow (venue spelling); one book each."""
        self.symbols = list(symbols)
        self.books = {s: OrderBook(self.venue, s) for s in self.symbols}

    def connect_url(self) -> str:
        return self.url

    def on_open(self) -> list[str]:
        """A new connection is up: per-connection state starts afresh; returns the
        subscription messages to send."""
        self._connections += 1
        if self._connections > 1:
            self.counters.reconnects += 1
        self._outbox.clear()
        for book in self.books.values():
            book.clear()  # no level of the previous connection may survive
        self._reset_connection()
        return self.subscribe_messages()

    def on_close(self, reason: str = "disconnected") -> list[Event]:
        """The connection is gone: every book is dropped (Resync events)."""
        return [self._resync(s, reason, recover=False) for s in self.symbols]

    def on_message(self, data: bytes | str, rx_ns: int) -> list[Event]:
        """Decode one WebSocket message into events; bad input is counted, not raised."""
        self.counters.messages += 1
        if isinstance(data, str):
            data = data.encode()
        try:
            return self._handle(data, rx_ns)
        except _BAD_INPUT:
            self.counters.drops += 1
            return []

    def has_requests(self) -> bool:
        """Whether messages or snapshot requests wait (checked after every message)."""
        return bool(self._outbox)

    def take_outgoing(self) -> list[str]:
        """Messages the adapter wants sent now (resubscriptions, pongs)."""
        out, self._outbox = self._outbox, []
        return out

    def take_snapshot_requests(self) -> list[tuple[str, str]]:
        """(symbol, https URL) of REST snapshots to fetch; only Binance uses it."""
        return []

    def on_snapshot(self, symbol: str, body: bytes, rx_ns: int) -> list[Event]:
        raise NotImplementedError(f"{self.venue} has no REST snapshot")

    def heartbeat(self) -> str | None:
        """The application-level ping to send every ``heartbeat_interval`` s."""
        return None

    # -- for subclasses -----------------------------------------------------------
    def subscribe_messages(self) -> list[str]:
        raise NotImplementedError

    def _reset_connection(self) -> None:
        """Forget per-connection state (sequence numbers)."""

    def _handle(self, data: bytes, rx_ns: int) -> list[Event]:
        raise NotImplementedError

    def _recover(self, symbol: str) -> None:
        """Start rebuilding ``symbol``'s book (resubscribe, fetch a snapshot)."""
        raise NotImplementedError

    def _resync(self, symbol: str, reason: str, *, recover: bool = True) -> Resync:
        book = self.books.get(symbol)
        if book is not None:
            book.clear()
        self.counters.resyncs += 1
        if recover:
            self._recover(symbol)
        return Resync(self.venue, symbol, reason)

    def _snapshot(
        self,
        book: OrderBook,
        bids: list[RawLevel],
        asks: list[RawLevel],
        exch_ns: int,
        rx_ns: int,
    ) -> Event:
        """Replace ``book``; a malformed or crossed snapshot resyncs instead."""
        try:
            book.replace(bids, asks)
        except ValueError:
            self.counters.drops += 1
            return self._resync(book.symbol, "malformed snapshot")
        if book.crossed():
            self.counters.crossed += 1
            return self._resync(book.symbol, "crossed book")
        return BookSnapshot(self.venue, book.symbol, book.bids(), book.asks(), exch_ns, rx_ns)

    def _delta(
        self,
        book: OrderBook,
        bids: list[RawLevel],
        asks: list[RawLevel],
        exch_ns: int,
        rx_ns: int,
    ) -> Event:
        """Apply changes to ``book``; a half-applied bad message or a crossed result
        resyncs the book rather than leaving it corrupt."""
        try:
            b, a = book.update(bids, asks)
        except ValueError:
            self.counters.drops += 1
            return self._resync(book.symbol, "malformed update")
        if book.crossed():
            self.counters.crossed += 1
            return self._resync(book.symbol, "crossed book")
        return BookDelta(self.venue, book.symbol, b, a, exch_ns, rx_ns)
