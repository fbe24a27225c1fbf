"""Coinbase Advanced Trade WebSocket: level2, market_trades and heartbeats.

Subscribe per channel: ``{"type":"subscribe","product_ids":[..],"channel":"level2"}``;
level2 messages arrive with channel "l2_data" and events of type "snapshot" (the
book) or "update" (``new_quantity`` is the level's new absolute size, "0" removes
it; side "bid" or "offer"). Every message of a connection carries ``sequence_num``,
one counter across all channels: a skipped number means a message was lost, and as
it may have been a book update, every book is dropped and level2 is resubscribed,
which makes Coinbase send a fresh snapshot.
"""

from __future__ import annotations

import msgspec

from ._base import VenueAdapter
from ._util import rfc3339_ns
from .events import Event, Trade

__all__ = ["CoinbaseAdapter"]


class _Envelope(msgspec.Struct):
    channel: str = ""
    timestamp: str = ""
    sequence_num: int = -1
    events: msgspec.Raw = msgspec.Raw(b"[]")
    type: str = ""  # "error" messages carry no channel


class _L2Update(msgspec.Struct):
    side: str
    price_level: str
    new_quantity: str


class _L2Event(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_L2Update]


class _Trade(msgspec.Struct):
    trade_id: str
    product_id: str
    price: str
    size: str
    side: str
    time: str


class _TradesEvent(msgspec.Struct):
    type: str
    trades: list[_Trade]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_l2 = msgspec.json.Decoder(list[_L2Event]).decode
_decode_trades = msgspec.json.Decoder(list[_TradesEvent]).decode
_ignored = {"heartbeats", "subscriptions", "status"}


class CoinbaseAdapter(VenueAdapter):
    """Coinbase Advanced Trade market data; symbols are product ids ("BTC-USD")."""

    venue = "coinbase"
    default_url = "wss://advanced-trade-ws.coinbase.com"
    sim_path = "/coinbase"

    def __init__(
        self,
        *,
        url: str | None = None,
        simulator: str | None = None,
        channels: tuple[str, ...] = ("level2", "market_trades", "heartbeats"),
    ) -> None:
        super().__init__(url=url, simulator=simulator)
        self.channels = channels
        self._last_seq = -1

    def _msg(self, kind: str, channel: str, products: list[str] | None) -> str:
        msg: dict[str, object] = {"type": kind, "channel": channel}
        if products is not None:
            msg["product_ids"] = products
        return msgspec.json.encode(msg).decode()

    def subscribe_messages(self) -> list[str]:
        return [
            self._msg("subscribe", ch, None if ch == "heartbeats" else self.symbols)
            for ch in self.channels
        ]

    def _reset_connection(self) -> None:
        self._last_seq = -1

    def _recover(self, symbol: str) -> None:
        self._outbox.append(self._msg("unsubscribe", "level2", [symbol]))
        self._outbox.append(self._msg("subscribe", "level2", [symbol]))

    def _handle(self, data: bytes, rx_ns: int) -> list[Event]:
        env = _decode_envelope(data)
        channel = env.channel
        if channel == "l2_data":
            parsed: list = _decode_l2(env.events)
        elif channel == "market_trades":
            parsed = _decode_trades(env.events)
        elif channel in _ignored:
            parsed = []
        else:
            self.counters.drops += 1  # errors and unknown channels
            return []
        exch_ns = rfc3339_ns(env.timestamp)
        trades = [
            Trade(
                self.venue,
                t.product_id,
                float(t.price),
                float(t.size),
                "buy" if t.side.upper() == "BUY" else "sell",
                t.trade_id,
                rfc3339_ns(t.time),
                rx_ns,
            )
            for ev in (parsed if channel == "market_trades" else ())
            for t in ev.trades
        ]
        # All decoding is done: only now may the sequence advance.
        events: list[Event] = []
        if env.sequence_num != self._last_seq + 1 and self._last_seq >= 0:
            self.counters.gaps += 1
            reason = f"gap: sequence_num {env.sequence_num} after {self._last_seq}"
            events = [self._resync(s, reason) for s in self.symbols]
        self._last_seq = env.sequence_num
        if channel == "l2_data":
            for ev in parsed:
                events.extend(self._on_l2(ev, exch_ns, rx_ns))
        events.extend(trades)
        return events

    def _on_l2(self, ev: _L2Event, exch_ns: int, rx_ns: int) -> list[Event]:
        book = self.books.get(ev.product_id)
        if book is None:
            self.counters.drops += 1
            return []
        bids = [(u.price_level, u.new_quantity) for u in ev.updates if u.side == "bid"]
        asks = [(u.price_level, u.new_quantity) for u in ev.updates if u.side != "bid"]
        if ev.type == "snapshot":
            return [self._snapshot(book, bids, asks, exch_ns, rx_ns)]
        if not book.synced:
            return []  # updates before the resubscribed snapshot are superseded by it
        return [self._delta(book, bids, asks, exch_ns, rx_ns)]
