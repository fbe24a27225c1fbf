"""Bybit v5 public spot: orderbook (snapshot/delta) and publicTrade.

Subscribe with ``{"op":"subscribe","args":["orderbook.50.BTCUSDT", ...]}``. The first
orderbook message is a snapshot; deltas follow, each with update id ``u`` one more
than the previous ("u" is continuous; Bybit docs, "Orderbook"). A snapshot, also one
Bybit re-sends with ``u == 1`` after a service restart, replaces the local book. A
delta whose ``u`` is not the previous ``u + 1`` is a gap: the book is dropped and the
topic resubscribed for a fresh snapshot. Bybit drops idle connections, so the runner
sends ``{"op":"ping"}`` every 20 s as Bybit recommends.
"""

from __future__ import annotations

import msgspec

from ._base import VenueAdapter
from .events import Event, Trade

__all__ = ["BybitAdapter"]


class _Envelope(msgspec.Struct):
    topic: str = ""
    type: str = ""
    ts: int = 0
    data: msgspec.Raw = msgspec.Raw(b"null")
    op: str = ""
    success: bool | None = None


class _Book(msgspec.Struct):
    s: str
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    u: int
    seq: int = 0


class _Trade(msgspec.Struct):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_book = msgspec.json.Decoder(_Book).decode
_decode_trades = msgspec.json.Decoder(list[_Trade]).decode


class BybitAdapter(VenueAdapter):
    """Bybit v5 public spot streams; symbols in Bybit spelling ("BTCUSDT")."""

    venue = "bybit"
    default_url = "wss://stream.bybit.com/v5/public/spot"
    sim_path = "/bybit"
    heartbeat_interval = 20.0

    def __init__(
        self,
        *,
        url: str | None = None,
        simulator: str | None = None,
        depth: int = 50,
        trades: bool = True,
    ) -> None:
        super().__init__(url=url, simulator=simulator)
        self.depth = depth
        self.trades = trades
        self._last_u: dict[str, int] = {}
        self.failed_ops = 0  # subscribe/unsubscribe answers with success false

    def _topics(self, symbol: str) -> list[str]:
        topics = [f"orderbook.{self.depth}.{symbol}"]
        if self.trades:
            topics.append(f"publicTrade.{symbol}")
        return topics

    def subscribe_messages(self) -> list[str]:
        args = [t for s in self.symbols for t in self._topics(s)]
        return [msgspec.json.encode({"op": "subscribe", "args": args}).decode()]

    def heartbeat(self) -> str | None:
        return '{"op":"ping"}'

    def _reset_connection(self) -> None:
        self._last_u.clear()

    def _recover(self, symbol: str) -> None:
        topic = [f"orderbook.{self.depth}.{symbol}"]
        self._outbox.append(msgspec.json.encode({"op": "unsubscribe", "args": topic}).decode())
        self._outbox.append(msgspec.json.encode({"op": "subscribe", "args": topic}).decode())

    def _handle(self, data: bytes, rx_ns: int) -> list[Event]:
        env = _decode_envelope(data)
        if env.op:  # answers to subscribe / ping
            if env.success is False:
                self.failed_ops += 1
            return []
        kind, _, _ = env.topic.partition(".")
        if kind == "orderbook":
            return self._on_book(env.type, _decode_book(env.data), env.ts, rx_ns)
        if kind == "publicTrade":
            return [
                Trade(
                    self.venue,
                    t.s,
                    float(t.p),
                    float(t.v),
                    t.S.lower(),
                    t.i,
                    t.T * 1_000_000,
                    rx_ns,
                )
                for t in _decode_trades(env.data)
            ]
        self.counters.drops += 1
        return []

    def _on_book(self, kind: str, msg: _Book, ts: int, rx_ns: int) -> list[Event]:
        book = self.books.get(msg.s)
        if book is None or kind not in ("snapshot", "delta"):
            self.counters.drops += 1
            return []
        if kind == "snapshot":
            self._last_u[msg.s] = msg.u
            return [self._snapshot(book, msg.b, msg.a, ts * 1_000_000, rx_ns)]
        if not book.synced:
            return []  # waiting for the snapshot of the resubscription
        last = self._last_u[msg.s]
        if msg.u != last + 1:
            self.counters.gaps += 1
            return [self._resync(msg.s, f"gap: u={msg.u} after u={last}")]
        self._last_u[msg.s] = msg.u
        return [self._delta(book, msg.b, msg.a, ts * 1_000_000, rx_ns)]
