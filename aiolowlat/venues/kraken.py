"""Kraken WebSocket v2: book (snapshot/update with CRC32 checksum) and trade.

Subscribe with ``{"method":"subscribe","params":{"channel":"book","symbol":[..],
"depth":10}}``. Book messages carry ``checksum``: CRC32 over the best 10 asks then
the best 10 bids, price and qty with the '.' and the leading zeros removed (Kraken
docs, "Book checksum (WebSocket v2)"; see _util.kraken_checksum). Kraken sends no
sequence number, so the checksum is the only integrity check; after each update the
book is truncated to the subscribed depth, as the guide says, because Kraken sends no
delete for a level pushed out of it. A mismatch drops the book and resubscribes.
Prices and quantities are JSON numbers written with full precision: they are decoded
as Decimal, which keeps their exact text for the checksum.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from ._base import VenueAdapter
from ._util import kraken_checksum, rfc3339_ns
from .events import Event, Trade

__all__ = ["KrakenAdapter"]


class _Envelope(msgspec.Struct):
    channel: str = ""
    type: str = ""
    data: msgspec.Raw = msgspec.Raw(b"[]")
    method: str = ""
    success: bool | None = None


class _Level(msgspec.Struct):
    price: Decimal
    qty: Decimal


class _Book(msgspec.Struct):
    symbol: str
    bids: list[_Level]
    asks: list[_Level]
    checksum: int
    timestamp: str = ""


class _Trade(msgspec.Struct):
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    trade_id: int
    timestamp: str


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_books = msgspec.json.Decoder(list[_Book]).decode
_decode_trades = msgspec.json.Decoder(list[_Trade]).decode
_ignored = {"heartbeat", "status", "pong"}


def _levels(rows: list[_Level]) -> list[tuple[str, str]]:
    # format(..., "f") keeps the sent digits and never switches to exponent notation
    return [(format(r.price, "f"), format(r.qty, "f")) for r in rows]


class KrakenAdapter(VenueAdapter):
    """Kraken v2 book and trades; symbols in Kraken v2 spelling ("BTC/USD")."""

    venue = "kraken"
    default_url = "wss://ws.kraken.com/v2"
    sim_path = "/kraken"
    heartbeat_interval = 30.0

    def __init__(
        self,
        *,
        url: str | None = None,
        simulator: str | None = None,
        depth: int = 10,
        trades: bool = True,
    ) -> None:
        super().__init__(url=url, simulator=simulator)
        if depth not in (10, 25, 100, 500, 1000):
            raise ValueError(f"Kraken book depth must be 10, 25, 100, 500 or 1000, not {depth}")
        self.depth = depth
        self.trades = trades
        self.failed_ops = 0

    def _msg(self, method: str, channel: str, symbols: list[str]) -> str:
        params: dict[str, object] = {"channel": channel, "symbol": symbols}
        if channel == "book" and method == "subscribe":
            params["depth"] = self.depth
        return msgspec.json.encode({"method": method, "params": params}).decode()

    def subscribe_messages(self) -> list[str]:
        out = [self._msg("subscribe", "book", self.symbols)]
        if self.trades:
            out.append(self._msg("subscribe", "trade", self.symbols))
        return out

    def heartbeat(self) -> str | None:
        return '{"method":"ping"}'

    def _recover(self, symbol: str) -> None:
        self._outbox.append(self._msg("unsubscribe", "book", [symbol]))
        self._outbox.append(self._msg("subscribe", "book", [symbol]))

    def _handle(self, data: bytes, rx_ns: int) -> list[Event]:
        env = _decode_envelope(data)
        if env.method:
            if env.success is False:
                self.failed_ops += 1
            return []
        if env.channel == "book":
            events: list[Event] = []
            for msg in _decode_books(env.data):
                events.extend(self._on_book(env.type, msg, rx_ns))
            return events
        if env.channel == "trade":
            return [
                Trade(
                    self.venue,
                    t.symbol,
                    float(t.price),
                    float(t.qty),
                    t.side,
                    str(t.trade_id),
                    rfc3339_ns(t.timestamp),
                    rx_ns,
                )
                for t in _decode_trades(env.data)
            ]
        if env.channel not in _ignored:
            self.counters.drops += 1
        return []

    def _on_book(self, kind: str, msg: _Book, rx_ns: int) -> list[Event]:
        book = self.books.get(msg.symbol)
        if book is None or kind not in ("snapshot", "update"):
            self.counters.drops += 1
            return []
        exch_ns = rfc3339_ns(msg.timestamp) if msg.timestamp else 0
        bids, asks = _levels(msg.bids), _levels(msg.asks)
        if kind == "snapshot":
            event = self._snapshot(book, bids, asks, exch_ns, rx_ns)
        elif not book.synced:
            return []  # waiting for the snapshot of the resubscription
        else:
            event = self._delta(book, bids, asks, exch_ns, rx_ns)
            book.truncate(self.depth)
        if book.synced and kraken_checksum(book.raw_bids(10), book.raw_asks(10)) != msg.checksum:
            self.counters.checksum_failures += 1
            return [self._resync(msg.symbol, "checksum mismatch")]
        return [event]
