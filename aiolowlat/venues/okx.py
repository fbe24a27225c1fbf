"""OKX v5 public: books (snapshot/update, seqId/prevSeqId, CRC32 checksum) and trades.

Subscribe with ``{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}``.
The first books message has action "snapshot" (prevSeqId -1), then "update"s, each
with ``prevSeqId`` equal to the previous message's ``seqId`` (an update without
changes repeats the seqId). Each carries ``checksum``: CRC32, as a signed 32-bit int,
of the best 25 bids and asks interleaved as "bid:size:ask:size" (wire strings, see
_util.okx_checksum). A gap or a checksum mismatch drops the book and resubscribes,
which makes OKX send a new snapshot. OKX has announced (May 2026) that the checksum
field becomes 0 in favour of seqId checks: a 0 checksum is therefore not verified.
The connection is kept alive with the text "ping" (answer "pong") every 25 s.
"""

from __future__ import annotations

import msgspec

from ._base import VenueAdapter
from ._util import okx_checksum
from .events import Event, Trade

__all__ = ["OkxAdapter"]


class _Arg(msgspec.Struct):
    channel: str = ""
    instId: str = ""


class _Envelope(msgspec.Struct):
    arg: _Arg = msgspec.field(default_factory=_Arg)
    action: str = ""
    data: msgspec.Raw = msgspec.Raw(b"[]")
    event: str = ""  # subscribe / unsubscribe / error answers


class _Book(msgspec.Struct):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str
    checksum: int = 0
    seqId: int = 0
    prevSeqId: int = -1


class _Trade(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_books = msgspec.json.Decoder(list[_Book]).decode
_decode_trades = msgspec.json.Decoder(list[_Trade]).decode


def _levels(rows: list[list[str]]) -> list[tuple[str, str]]:
    # [price, size, deprecated, order count]: only price and size matter
    return [(r[0], r[1]) for r in rows]


class OkxAdapter(VenueAdapter):
    """OKX public books and trades; symbols are instIds ("BTC-USDT")."""

    venue = "okx"
    default_url = "wss://ws.okx.com:8443/ws/v5/public"
    sim_path = "/okx"
    heartbeat_interval = 25.0

    def __init__(
        self, *, url: str | None = None, simulator: str | None = None, trades: bool = True
    ) -> None:
        super().__init__(url=url, simulator=simulator)
        self.trades = trades
        self._last_seq: dict[str, int] = {}
        self.errors = 0  # {"event":"error"} answers

    def _args(self, symbol: str, trades: bool) -> list[dict[str, str]]:
        args = [{"channel": "books", "instId": symbol}]
        if trades:
            args.append({"channel": "trades", "instId": symbol})
        return args

    def subscribe_messages(self) -> list[str]:
        args = [a for s in self.symbols for a in self._args(s, self.trades)]
        return [msgspec.json.encode({"op": "subscribe", "args": args}).decode()]

    def heartbeat(self) -> str | None:
        return "ping"

    def _reset_connection(self) -> None:
        self._last_seq.clear()

    def _recover(self, symbol: str) -> None:
        for op in ("unsubscribe", "subscribe"):
            msg = {"op": op, "args": self._args(symbol, False)}
            self._outbox.append(msgspec.json.encode(msg).decode())

    def _handle(self, data: bytes, rx_ns: int) -> list[Event]:
        if data == b"pong":
            return []
        env = _decode_envelope(data)
        if env.event:
            if env.event == "error":
                self.errors += 1
            return []
        channel, symbol = env.arg.channel, env.arg.instId
        if channel == "books":
            events: list[Event] = []
            for msg in _decode_books(env.data):
                events.extend(self._on_book(symbol, env.action, msg, rx_ns))
            return events
        if channel == "trades":
            return [
                Trade(
                    self.venue,
                    t.instId,
                    float(t.px),
                    float(t.sz),
                    t.side,
                    t.tradeId,
                    int(t.ts) * 1_000_000,
                    rx_ns,
                )
                for t in _decode_trades(env.data)
            ]
        self.counters.drops += 1
        return []

    def _on_book(self, symbol: str, action: str, msg: _Book, rx_ns: int) -> list[Event]:
        book = self.books.get(symbol)
        if book is None or action not in ("snapshot", "update"):
            self.counters.drops += 1
            return []
        bids, asks = _levels(msg.bids), _levels(msg.asks)
        exch_ns = int(msg.ts) * 1_000_000
        if action == "snapshot":
            event = self._snapshot(book, bids, asks, exch_ns, rx_ns)
        elif not book.synced:
            return []  # waiting for the snapshot of the resubscription
        elif msg.prevSeqId != self._last_seq[symbol]:
            self.counters.gaps += 1
            last = self._last_seq[symbol]
            return [self._resync(symbol, f"gap: prevSeqId={msg.prevSeqId} after seqId={last}")]
        else:
            event = self._delta(book, bids, asks, exch_ns, rx_ns)
        self._last_seq[symbol] = msg.seqId
        if book.synced and msg.checksum != 0:
            if okx_checksum(book.raw_bids(25), book.raw_asks(25)) != msg.checksum:
                self.counters.checksum_failures += 1
                return [self._resync(symbol, "checksum mismatch")]
        return [event]
