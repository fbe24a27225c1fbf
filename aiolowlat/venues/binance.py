"""Binance spot: trade, aggTrade, bookTicker and diff-depth streams, books synced
with the REST snapshot (GET /api/v3/depth).

Book sync follows Binance's "How to manage a local order book correctly" (spot):
buffer the ``<sym>@depth@100ms`` events, fetch the snapshot, drop buffered events
with ``u <= lastUpdateId``; if the first remaining event has ``U > lastUpdateId + 1``
the snapshot is too old and is fetched again; the first applied event must have
``U <= lastUpdateId + 1 <= u`` and every later one ``U == previous u + 1``, otherwise
the book is dropped and the process restarts. Sizes are absolute; 0 removes a level.
Streams are combined on one connection: ``/stream?streams=a/b/c``, each message
wrapped as ``{"stream": name, "data": payload}``.
"""

from __future__ import annotations

import msgspec

from ._base import VenueAdapter
from .events import BookTicker, Event, Trade

__all__ = ["BinanceAdapter"]

_MAX_BUFFER = 10_000  # depth events kept while a snapshot is in flight


class _Envelope(msgspec.Struct):
    stream: str
    data: msgspec.Raw


class _Trade(msgspec.Struct):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class _AggTrade(msgspec.Struct):
    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool


class _BookTicker(msgspec.Struct):
    s: str
    b: str
    B: str
    a: str
    A: str


class _DepthUpdate(msgspec.Struct):
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]


class _DepthSnapshot(msgspec.Struct):
    lastUpdateId: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_trade = msgspec.json.Decoder(_Trade).decode
_decode_agg = msgspec.json.Decoder(_AggTrade).decode
_decode_ticker = msgspec.json.Decoder(_BookTicker).decode
_decode_depth = msgspec.json.Decoder(_DepthUpdate).decode
_decode_snapshot = msgspec.json.Decoder(_DepthSnapshot).decode


class _SyncState:
    """Per-symbol depth sync: events buffered until the snapshot bridges them."""

    __slots__ = ("buffer", "last_u", "first", "requested")

    def __init__(self) -> None:
        self.buffer: list[_DepthUpdate] = []
        self.last_u = 0
        self.first = True  # the next applied event must bridge the snapshot
        self.requested = False  # a snapshot request is waiting or in flight


class BinanceAdapter(VenueAdapter):
    """Binance spot market streams; symbols in Binance spelling ("BTCUSDT")."""

    venue = "binance"
    default_url = "wss://stream.binance.com:9443"
    default_rest = "https://api.binance.com"
    sim_path = "/binance"

    def __init__(
        self,
        *,
        url: str | None = None,
        rest_url: str | None = None,
        simulator: str | None = None,
        channels: tuple[str, ...] = ("trade", "bookTicker", "depth"),
        snapshot_limit: int = 1000,
    ) -> None:
        super().__init__(url=url, simulator=simulator)
        if self.base_url:  # the simulator serves REST on the same host and path
            rest_url = "https" + self.base_url[3:]
        self.rest_url = (rest_url or self.default_rest).rstrip("/")
        unknown = set(channels) - {"trade", "aggTrade", "bookTicker", "depth"}
        if unknown:
            raise ValueError(f"unknown Binance channels {sorted(unknown)}")
        self.channels = channels
        self.snapshot_limit = snapshot_limit
        self._sync: dict[str, _SyncState] = {}
        self._requests: list[tuple[str, str]] = []
        self._by_stream: dict[str, str] = {}

    def start(self, symbols: list[str]) -> None:
        super().start([s.upper() for s in symbols])
        self._sync = {s: _SyncState() for s in self.symbols}

    def _stream_names(self, symbol: str) -> list[str]:
        low = symbol.lower()
        names = {"depth": f"{low}@depth@100ms"}
        return [names.get(c, f"{low}@{c}") for c in self.channels]

    def connect_url(self) -> str:
        streams = [n for s in self.symbols for n in self._stream_names(s)]
        self._by_stream = {n: n.split("@", 1)[0].upper() for n in streams}
        return f"{self.url}/stream?streams={'/'.join(streams)}"

    def subscribe_messages(self) -> list[str]:
        return []  # the streams are named in the URL

    def _reset_connection(self) -> None:
        self._requests.clear()
        self._sync = {s: _SyncState() for s in self.symbols}

    def has_requests(self) -> bool:
        return bool(self._outbox or self._requests)

    def take_snapshot_requests(self) -> list[tuple[str, str]]:
        out, self._requests = self._requests, []
        return out

    def _request_snapshot(self, symbol: str) -> None:
        state = self._sync[symbol]
        if not state.requested:
            state.requested = True
            url = f"{self.rest_url}/api/v3/depth?symbol={symbol}&limit={self.snapshot_limit}"
            self._requests.append((symbol, url))

    def _recover(self, symbol: str) -> None:
        state = self._sync[symbol]
        state.first = True
        self._request_snapshot(symbol)

    def _handle(self, data: bytes, rx_ns: int) -> list[Event]:
        env = _decode_envelope(data)
        name, _, kind = env.stream.partition("@")
        if kind.startswith("depth"):
            return self._on_depth(_decode_depth(env.data), rx_ns)
        if kind == "trade":
            t = _decode_trade(env.data)
            side = "sell" if t.m else "buy"  # m: the buyer was the maker
            trade = Trade(
                self.venue, t.s, float(t.p), float(t.q), side, str(t.t), t.T * 1_000_000, rx_ns
            )
            return [trade]
        if kind == "aggTrade":
            t = _decode_agg(env.data)
            side = "sell" if t.m else "buy"
            trade = Trade(
                self.venue, t.s, float(t.p), float(t.q), side, str(t.a), t.T * 1_000_000, rx_ns
            )
            return [trade]
        if kind == "bookTicker":
            k = _decode_ticker(env.data)  # spot bookTicker carries no event time
            return [
                BookTicker(
                    self.venue, k.s, float(k.b), float(k.B), float(k.a), float(k.A), 0, rx_ns
                )
            ]
        self.counters.drops += 1
        return []

    def _on_depth(self, ev: _DepthUpdate, rx_ns: int) -> list[Event]:
        book = self.books.get(ev.s)
        if book is None or ev.U > ev.u:
            self.counters.drops += 1
            return []
        state = self._sync[ev.s]
        if not book.synced:
            if len(state.buffer) >= _MAX_BUFFER:
                del state.buffer[0]  # the snapshot must bridge a later event anyway
                self.counters.drops += 1
            state.buffer.append(ev)
            self._request_snapshot(ev.s)
            return []
        return self._apply(ev, rx_ns)

    def _apply(self, ev: _DepthUpdate, rx_ns: int) -> list[Event]:
        state = self._sync[ev.s]
        if ev.u <= state.last_u:
            return []  # already in the snapshot
        expected = state.last_u + 1
        bridges = ev.U <= expected <= ev.u if state.first else ev.U == expected
        if not bridges:
            self.counters.gaps += 1
            resync = self._resync(ev.s, f"gap: U={ev.U} after u={state.last_u}")
            state.buffer = [ev]
            return [resync]
        state.first = False
        state.last_u = ev.u
        book = self.books[ev.s]
        return [self._delta(book, ev.b, ev.a, ev.E * 1_000_000, rx_ns)]

    def on_snapshot(self, symbol: str, body: bytes, rx_ns: int) -> list[Event]:
        """Feed the REST depth snapshot of ``symbol``; replays the buffered events."""
        state = self._sync.get(symbol)
        book = self.books.get(symbol)
        if state is None or book is None or not state.requested:
            return []  # an answer for a connection that is gone
        state.requested = False
        try:
            snap = _decode_snapshot(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.counters.drops += 1
            self._request_snapshot(symbol)
            return []
        buffered = [e for e in state.buffer if e.u > snap.lastUpdateId]
        if buffered and buffered[0].U > snap.lastUpdateId + 1:
            self._request_snapshot(symbol)  # older than what we buffered: fetch again
            state.buffer = buffered
            return []
        state.buffer = []
        state.last_u = snap.lastUpdateId
        state.first = True
        events = [self._snapshot(book, snap.bids, snap.asks, 0, rx_ns)]
        for ev in buffered:
            if not book.synced:
                state.buffer.append(ev)  # a replayed event failed: keep the rest
                continue
            events.extend(self._apply(ev, rx_ns))
        return events
