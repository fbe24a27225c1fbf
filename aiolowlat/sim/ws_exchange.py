"""A local exchange over WebSocket/TLS speaking five venues' market-data protocols.

One ``websockets`` server on 127.0.0.1 serves every venue on its own path,
``wss://127.0.0.1:PORT/binance/stream?streams=...``, ``/coinbase``, ``/bybit``,
``/okx`` and ``/kraken``, plus Binance's REST depth snapshot over HTTPS on the same
port (``/binance/api/v3/depth``). Its certificate comes from a CA generated at start
(trustme); a client trusts it only through ``client_ssl_context()``.

Each (venue, symbol) has a seeded random-walk book (``MarketModel``, integer ticks and
lots, at most ``depth`` levels a side) that steps ``rate`` times a second; every
subscribed connection gets the step in its venue's format, with that venue's
sequence numbers and checksums. Faults are injected per venue with ``inject()``:
a dropped connection, a sequence gap (one book message not sent), a wrong checksum,
a stalled stream. ``book()`` gives the simulator's own book to compare clients with.

    python -m aiolowlat.sim.ws_exchange --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import ssl
import sys
import time
from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

import msgspec
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from aiolowlat.venues._util import kraken_checksum, okx_checksum

__all__ = ["FAULTS", "VENUES", "MarketModel", "Step", "WsExchange"]

VENUES = ("binance", "coinbase", "bybit", "okx", "kraken")
FAULTS = ("drop", "gap", "checksum", "stall")
_CHECKSUM_VENUES = ("okx", "kraken")
_json = msgspec.json.encode


class Step(msgspec.Struct):
    """What one model step changed; lots 0 removes a level."""

    step_id: int  # +1 per step (Bybit u, OKX seqId)
    first_update_id: int  # Binance U and u: one id per changed level
    last_update_id: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]
    trades: list[tuple[str, int, int, int]]  # (taker side, ticks, lots, trade id)
    ts_ns: int


class MarketModel:
    """A seeded random-walk price-level book of one symbol (sans-I/O, no clock)."""

    def __init__(
        self,
        rng: random.Random,
        mid: int,
        *,
        depth: int = 20,
        price_decimals: int = 2,
        size_decimals: int = 4,
    ) -> None:
        self.rng = rng
        self.mid = mid
        self.depth = depth
        self.pd, self.sd = price_decimals, size_decimals
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.step_id = 0
        self.update_id = 0
        self.trade_id = 0
        for off in range(1, depth + 1):
            self.bids[mid - off] = rng.randint(1, 50_000)
            self.asks[mid + off] = rng.randint(1, 50_000)

    def price(self, ticks: int) -> str:
        unit = 10**self.pd
        return f"{ticks // unit}.{ticks % unit:0{self.pd}d}" if self.pd else str(ticks)

    def size(self, lots: int) -> str:
        unit = 10**self.sd
        return f"{lots // unit}.{lots % unit:0{self.sd}d}" if self.sd else str(lots)

    def top(self, side: str, n: int | None = None) -> list[tuple[int, int]]:
        """Best ``n`` (ticks, lots) of side "b" or "a", best first."""
        levels = self.bids if side == "b" else self.asks
        keys = sorted(levels, reverse=side == "b")[:n]
        return [(k, levels[k]) for k in keys]

    def top_str(self, side: str, n: int | None = None) -> list[tuple[str, str]]:
        return [(self.price(p), self.size(q)) for p, q in self.top(side, n)]

    def step(self, ts_ns: int) -> Step:
        rng = self.rng
        changes: dict[tuple[str, int], int] = {}

        def put(side: str, ticks: int, lots: int) -> None:
            levels = self.bids if side == "b" else self.asks
            if lots:
                levels[ticks] = lots
            elif levels.pop(ticks, None) is None:
                return
            changes[(side, ticks)] = lots

        if rng.random() < 0.3:  # the mid moves a tick; levels it crosses go
            self.mid += rng.choice((-1, 1))
            for t in [t for t in self.bids if t >= self.mid]:
                put("b", t, 0)
            for t in [t for t in self.asks if t <= self.mid]:
                put("a", t, 0)
        for _ in range(rng.randint(1, 4)):
            side = rng.choice("ba")
            ticks = self.mid - rng.randint(1, self.depth) * (1 if side == "b" else -1)
            levels = self.bids if side == "b" else self.asks
            put(
                side, ticks, 0 if ticks in levels and rng.random() < 0.3 else rng.randint(1, 50_000)
            )
        for side, levels in (("b", self.bids), ("a", self.asks)):
            if not levels:
                put(side, self.mid - 1 if side == "b" else self.mid + 1, rng.randint(1, 50_000))
            for worst in sorted(levels, reverse=side == "a")[self.depth :]:
                put(side, worst, 0)
        trades = []
        if rng.random() < 0.5:
            taker = rng.choice(("buy", "sell"))
            ticks, lots = self.top("a" if taker == "buy" else "b", 1)[0]
            self.trade_id += 1
            trades.append((taker, ticks, rng.randint(1, lots), self.trade_id))
        if not changes:  # every step changes the book: keeps ids and messages 1:1
            ticks, lots = self.top("b", 1)[0]
            put("b", ticks, lots + 1)
        self.step_id += 1
        first = self.update_id + 1
        self.update_id += len(changes)
        return Step(
            self.step_id,
            first,
            self.update_id,
            [(t, q) for (s, t), q in changes.items() if s == "b"],
            [(t, q) for (s, t), q in changes.items() if s == "a"],
            trades,
            ts_ns,
        )


def _iso(ts_ns: int) -> str:
    secs, frac = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _base_mid(symbol: str) -> float:
    s = symbol.upper()
    return 60_000.0 if "BTC" in s else 3_000.0 if "ETH" in s else 100.0


class _Session:
    """One client connection of one venue: its subscriptions and sequence state."""

    venue = ""

    def __init__(self, sim: WsExchange, ws: ServerConnection) -> None:
        self.sim = sim
        self.ws = ws
        self.books: set[str] = set()
        self.trades: set[str] = set()
        self.faults: list[str] = []
        self.stalled_until = 0.0

    def model(self, symbol: str) -> MarketModel:
        return self.sim.model(self.venue, symbol)

    def take_fault(self, fault: str) -> bool:
        if fault in self.faults:
            self.faults.remove(fault)
            return True
        return False

    async def send(self, message: str | bytes) -> None:
        if time.monotonic() >= self.stalled_until:
            await self.ws.send(message)

    async def on_client(self, text: str | bytes) -> None:
        """A message from the client (subscriptions, pings)."""

    def book_message(self, symbol: str, step: Step) -> str | None:
        return None

    def trade_messages(self, symbol: str, step: Step) -> list[str]:
        return []

    def symbols(self) -> set[str]:
        return self.books | self.trades

    def heartbeat_message(self) -> str | None:
        return None


class _Binance(_Session):
    venue = "binance"

    def __init__(self, sim: WsExchange, ws: ServerConnection, streams: list[str]) -> None:
        super().__init__(sim, ws)
        self.tickers: set[str] = set()
        self.kinds: dict[str, set[str]] = {}
        for name in streams:
            low, _, kind = name.partition("@")
            sym = low.upper()
            if kind.startswith("depth"):
                self.books.add(sym)
            elif kind in ("trade", "aggTrade"):
                self.trades.add(sym)
                self.kinds.setdefault(sym, set()).add(kind)
            elif kind == "bookTicker":
                self.tickers.add(sym)
            self.model(sym)  # streams start with the connection

    def book_message(self, symbol: str, step: Step) -> str | None:
        m = self.model(symbol)
        data = {
            "e": "depthUpdate",
            "E": step.ts_ns // 1_000_000,
            "s": symbol,
            "U": step.first_update_id,
            "u": step.last_update_id,
            "b": [[m.price(p), m.size(q)] for p, q in step.bids],
            "a": [[m.price(p), m.size(q)] for p, q in step.asks],
        }
        return _json({"stream": f"{symbol.lower()}@depth@100ms", "data": data}).decode()

    def ticker_message(self, symbol: str, step: Step) -> str:
        m = self.model(symbol)
        (bp, bq), (ap, aq) = m.top("b", 1)[0], m.top("a", 1)[0]
        data = {"u": step.last_update_id, "s": symbol, "b": m.price(bp), "B": m.size(bq),
                "a": m.price(ap), "A": m.size(aq)}  # fmt: skip
        return _json({"stream": f"{symbol.lower()}@bookTicker", "data": data}).decode()

    def symbols(self) -> set[str]:
        return self.books | self.trades | self.tickers

    def trade_messages(self, symbol: str, step: Step) -> list[str]:
        m = self.model(symbol)
        out = []
        ms = step.ts_ns // 1_000_000
        for kind in sorted(self.kinds.get(symbol, ())):
            for side, p, q, tid in step.trades:
                data = {"e": kind, "E": ms, "s": symbol, "p": m.price(p), "q": m.size(q),
                        "T": ms, "m": side == "sell", "M": True}  # fmt: skip
                data["t" if kind == "trade" else "a"] = tid
                out.append(_json({"stream": f"{symbol.lower()}@{kind}", "data": data}).decode())
        return out


class _Coinbase(_Session):
    venue = "coinbase"

    def __init__(self, sim: WsExchange, ws: ServerConnection) -> None:
        super().__init__(sim, ws)
        self.seq = -1
        self.heartbeats = False
        self.hb_counter = 0

    def envelope(self, channel: str, events: list) -> str:
        self.seq += 1
        ts = _iso(time.time_ns())
        msg = {"channel": channel, "client_id": "", "timestamp": ts, "sequence_num": self.seq,
               "events": events}  # fmt: skip
        return _json(msg).decode()

    def l2(self, symbol: str, kind: str, bids: Iterable, asks: Iterable, ts: str) -> dict:
        m = self.model(symbol)
        updates = [
            {"side": side, "event_time": ts, "price_level": m.price(p), "new_quantity": m.size(q)}
            for side, levels in (("bid", bids), ("offer", asks))
            for p, q in levels
        ]
        return {"type": kind, "product_id": symbol, "updates": updates}

    async def on_client(self, text: str | bytes) -> None:
        msg = msgspec.json.decode(text)
        kind, channel = msg.get("type"), msg.get("channel")
        products = msg.get("product_ids") or []
        target = {"level2": self.books, "market_trades": self.trades}.get(channel)
        if kind == "subscribe":
            if channel == "heartbeats":
                self.heartbeats = True
            elif target is not None:
                for sym in products:
                    target.add(sym)
                    if channel == "level2":
                        m = self.model(sym)
                        ev = self.l2(sym, "snapshot", m.top("b"), m.top("a"), _iso(time.time_ns()))
                        await self.send(self.envelope("l2_data", [ev]))
                    else:
                        self.model(sym)
                        await self.send(
                            self.envelope("market_trades", [{"type": "snapshot", "trades": []}])
                        )
        elif kind == "unsubscribe" and target is not None:
            target.difference_update(products)
        subs = {"level2": sorted(self.books), "market_trades": sorted(self.trades)}
        await self.send(self.envelope("subscriptions", [{"subscriptions": subs}]))

    def book_message(self, symbol: str, step: Step) -> str | None:
        ev = self.l2(symbol, "update", step.bids, step.asks, _iso(step.ts_ns))
        return self.envelope("l2_data", [ev])

    def trade_messages(self, symbol: str, step: Step) -> list[str]:
        m = self.model(symbol)
        trades = [
            {
                "trade_id": str(tid),
                "product_id": symbol,
                "price": m.price(p),
                "size": m.size(q),
                "side": side.upper(),
                "time": _iso(step.ts_ns),
            }  # fmt: skip
            for side, p, q, tid in step.trades
        ]
        return [self.envelope("market_trades", [{"type": "update", "trades": trades}])]

    def heartbeat_message(self) -> str | None:
        if not self.heartbeats:
            return None
        self.hb_counter += 1
        ev = {"current_time": _iso(time.time_ns()), "heartbeat_counter": str(self.hb_counter)}
        return self.envelope("heartbeats", [ev])


class _Bybit(_Session):
    venue = "bybit"

    def __init__(self, sim: WsExchange, ws: ServerConnection) -> None:
        super().__init__(sim, ws)
        self.depths: dict[str, int] = {}

    def answer(self, op: str, success: bool = True, ret_msg: str = "") -> str:
        return _json({"success": success, "ret_msg": ret_msg, "conn_id": "sim", "req_id": "",
                      "op": op}).decode()  # fmt: skip

    def book(self, symbol: str, kind: str, bids: list, asks: list, step_id: int) -> str:
        m = self.model(symbol)
        ms = time.time_ns() // 1_000_000
        data = {"s": symbol, "b": [[m.price(p), m.size(q)] for p, q in bids],
                "a": [[m.price(p), m.size(q)] for p, q in asks], "u": step_id,
                "seq": step_id * 7}  # fmt: skip
        topic = f"orderbook.{self.depths[symbol]}.{symbol}"
        return _json({"topic": topic, "type": kind, "ts": ms, "data": data, "cts": ms}).decode()

    async def on_client(self, text: str | bytes) -> None:
        msg = msgspec.json.decode(text)
        op = msg.get("op")
        if op == "ping":
            await self.send(self.answer("ping", ret_msg="pong"))
            return
        if op not in ("subscribe", "unsubscribe"):
            await self.send(self.answer(str(op), False, "unknown op"))
            return
        await self.send(self.answer(op))
        for topic in msg.get("args", []):
            kind, _, rest = topic.partition(".")
            if kind == "orderbook":
                depth, _, sym = rest.partition(".")
                if op == "subscribe":
                    self.depths[sym] = int(depth)
                    self.books.add(sym)
                    m = self.model(sym)
                    await self.send(self.book(sym, "snapshot", m.top("b"), m.top("a"), m.step_id))
                else:
                    self.books.discard(sym)
            elif kind == "publicTrade":
                (self.trades.add if op == "subscribe" else self.trades.discard)(rest)
                self.model(rest)

    def book_message(self, symbol: str, step: Step) -> str | None:
        return self.book(symbol, "delta", step.bids, step.asks, step.step_id)

    def trade_messages(self, symbol: str, step: Step) -> list[str]:
        m = self.model(symbol)
        ms = step.ts_ns // 1_000_000
        data = [
            {
                "T": ms,
                "s": symbol,
                "S": side.capitalize(),
                "v": m.size(q),
                "p": m.price(p),
                "L": "PlusTick",
                "i": str(tid),
                "BT": False,
            }  # fmt: skip
            for side, p, q, tid in step.trades
        ]
        msg = {"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": ms, "data": data}
        return [_json(msg).decode()]


class _Okx(_Session):
    venue = "okx"

    def __init__(self, sim: WsExchange, ws: ServerConnection) -> None:
        super().__init__(sim, ws)
        self.last_seq: dict[str, int] = {}

    def book(self, symbol: str, action: str, bids: list, asks: list, seq: int, prev: int) -> str:
        m = self.model(symbol)
        checksum = okx_checksum(m.top_str("b", 25), m.top_str("a", 25))
        if self.take_fault("checksum"):
            checksum = checksum + 1 if checksum < 2**31 - 1 else checksum - 1
        data = {
            "asks": [[m.price(p), m.size(q), "0", "1"] for p, q in asks],
            "bids": [[m.price(p), m.size(q), "0", "1"] for p, q in bids],
            "ts": str(time.time_ns() // 1_000_000),
            "checksum": checksum,
            "prevSeqId": prev,
            "seqId": seq,
        }
        arg = {"channel": "books", "instId": symbol}
        return _json({"arg": arg, "action": action, "data": [data]}).decode()

    async def on_client(self, text: str | bytes) -> None:
        if text in ("ping", b"ping"):
            await self.send("pong")
            return
        msg = msgspec.json.decode(text)
        op = msg.get("op")
        if op not in ("subscribe", "unsubscribe"):
            await self.send(_json({"event": "error", "code": "60012", "msg": "Invalid request",
                                   "connId": "sim"}).decode())  # fmt: skip
            return
        for arg in msg.get("args", []):
            channel, sym = arg.get("channel"), arg.get("instId", "")
            await self.send(_json({"event": op, "arg": arg, "connId": "sim"}).decode())
            target = {"books": self.books, "trades": self.trades}.get(channel)
            if target is None:
                continue
            if op == "unsubscribe":
                target.discard(sym)
                continue
            target.add(sym)
            m = self.model(sym)
            if channel == "books":
                self.last_seq[sym] = m.step_id
                await self.send(self.book(sym, "snapshot", m.top("b"), m.top("a"), m.step_id, -1))

    def book_message(self, symbol: str, step: Step) -> str | None:
        prev = self.last_seq.get(symbol, -1)
        self.last_seq[symbol] = step.step_id
        return self.book(symbol, "update", step.bids, step.asks, step.step_id, prev)

    def trade_messages(self, symbol: str, step: Step) -> list[str]:
        m = self.model(symbol)
        data = [
            {
                "instId": symbol,
                "tradeId": str(tid),
                "px": m.price(p),
                "sz": m.size(q),
                "side": side,
                "ts": str(step.ts_ns // 1_000_000),
                "count": "1",
            }  # fmt: skip
            for side, p, q, tid in step.trades
        ]
        return [_json({"arg": {"channel": "trades", "instId": symbol}, "data": data}).decode()]


class _Kraken(_Session):
    """Kraken sends the top ``depth`` levels: updates are diffs of that view, with
    levels that come into view sent too (the client truncates, as documented)."""

    venue = "kraken"

    def __init__(self, sim: WsExchange, ws: ServerConnection) -> None:
        super().__init__(sim, ws)
        self.depth: dict[str, int] = {}
        self.views: dict[str, tuple[dict[int, int], dict[int, int]]] = {}

    def book(self, symbol: str, kind: str, bids: list, asks: list) -> str:
        m = self.model(symbol)
        checksum = kraken_checksum(m.top_str("b", 10), m.top_str("a", 10))
        if self.take_fault("checksum"):
            checksum = (checksum + 1) % 2**32

        def levels(rows: list[tuple[int, int]]) -> str:
            # JSON numbers with every decimal written, as Kraken sends them
            return ",".join(f'{{"price":{m.price(p)},"qty":{m.size(q)}}}' for p, q in rows)

        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}",'
            f'"bids":[{levels(bids)}],"asks":[{levels(asks)}],"checksum":{checksum},'
            f'"timestamp":"{_iso(time.time_ns())[:-4]}Z"}}]}}'
        )

    async def on_client(self, text: str | bytes) -> None:
        msg = msgspec.json.decode(text)
        method = msg.get("method")
        now = _iso(time.time_ns())
        if method == "ping":
            await self.send(_json({"method": "pong", "time_in": now, "time_out": now}).decode())
            return
        params = msg.get("params") or {}
        channel = params.get("channel")
        ok = method in ("subscribe", "unsubscribe") and channel in ("book", "trade")
        for sym in params.get("symbol", []) if ok else [None]:
            result = {"channel": channel, "symbol": sym}
            await self.send(_json({"method": method, "result": result, "success": ok,
                                   "time_in": now, "time_out": now}).decode())  # fmt: skip
            if not ok:
                return
            target = self.books if channel == "book" else self.trades
            if method == "unsubscribe":
                target.discard(sym)
                continue
            target.add(sym)
            m = self.model(sym)
            if channel == "book":
                depth = self.depth[sym] = int(params.get("depth", 10))
                bids, asks = m.top("b", depth), m.top("a", depth)
                self.views[sym] = (dict(bids), dict(asks))
                await self.send(self.book(sym, "snapshot", bids, asks))

    def book_message(self, symbol: str, step: Step) -> str | None:
        m, depth = self.model(symbol), self.depth[symbol]
        changed = []
        for side, old in zip("ba", self.views[symbol], strict=True):
            new = dict(m.top(side, depth))
            diff = [(p, 0) for p in old if p not in new]
            diff += [(p, q) for p, q in new.items() if old.get(p) != q]
            old.clear()
            old.update(new)
            changed.append(diff)
        if not changed[0] and not changed[1]:
            return None  # nothing changed within the subscribed depth
        return self.book(symbol, "update", changed[0], changed[1])

    def trade_messages(self, symbol: str, step: Step) -> list[str]:
        m = self.model(symbol)
        rows = ",".join(
            f'{{"symbol":"{symbol}","side":"{side}","price":{m.price(p)},"qty":{m.size(q)},'
            f'"ord_type":"limit","trade_id":{tid},"timestamp":"{_iso(step.ts_ns)[:-4]}Z"}}'
            for side, p, q, tid in step.trades
        )
        return [f'{{"channel":"trade","type":"update","data":[{rows}]}}']

    def heartbeat_message(self) -> str | None:
        return '{"channel":"heartbeat"}'


class WsExchange:
    """The simulator: ``async with WsExchange(seed=1) as sim:`` then connect to
    ``sim.url + "/okx"`` etc. with ``ssl=sim.client_ssl_context()``."""

    def __init__(
        self,
        *,
        seed: int = 1,
        rate: float = 20.0,
        depth: int = 20,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        ping_interval: float | None = 20.0,
    ) -> None:
        self.seed = seed
        self.rate = rate
        self.depth = depth
        self.host = host
        self.port = port
        self.tls = tls
        self.ping_interval = ping_interval
        self.models: dict[tuple[str, str], MarketModel] = {}
        self.sessions: set[_Session] = set()
        self.counters = {"connections": 0, "messages": 0, "steps": 0, "rest": 0, "faults": 0}
        self.paused = False
        self._ca = trustme.CA() if tls else None
        self._server = None
        self._tasks: list[asyncio.Task] = []

    # -- public API ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}"

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """An SSLContext that trusts this simulator's certificate (None without TLS)."""
        if self._ca is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self._ca.configure_trust(ctx)
        return ctx

    def model(self, venue: str, symbol: str) -> MarketModel:
        """The book of ``symbol`` at ``venue``, created on first use from the seed."""
        key = (venue, symbol)
        model = self.models.get(key)
        if model is None:
            rng = random.Random(f"{self.seed}:{venue}:{symbol}")
            mid = int(_base_mid(symbol) * (1 + rng.uniform(-0.0005, 0.0005)) * 100)
            model = self.models[key] = MarketModel(rng, mid, depth=self.depth)
        return model

    def book(
        self, venue: str, symbol: str, depth: int | None = None
    ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """The simulator's own (bids, asks), best first, as floats."""
        m = self.model(venue, symbol)
        return tuple(  # type: ignore[return-value]
            [(float(p), float(q)) for p, q in m.top_str(side, depth)] for side in "ba"
        )

    def inject(self, venue: str, fault: str, *, seconds: float = 3.0) -> int:
        """Inject ``fault`` into every live connection of ``venue``; returns how many.
        drop: the connection is cut (no close frame); gap: its next book message is
        not sent; checksum: its next book message has a wrong checksum (OKX, Kraken);
        stall: nothing is sent on it for ``seconds``."""
        if venue not in VENUES or fault not in FAULTS:
            raise ValueError(f"unknown venue {venue!r} or fault {fault!r} (faults: {FAULTS})")
        if fault == "checksum" and venue not in _CHECKSUM_VENUES:
            raise ValueError(f"{venue} messages carry no checksum")
        hit = [s for s in self.sessions if s.venue == venue]
        for session in hit:
            if fault == "drop":
                session.ws.transport.abort()
            elif fault == "stall":
                session.stalled_until = time.monotonic() + seconds
            else:
                session.faults.append(fault)
        self.counters["faults"] += len(hit)
        return len(hit)

    async def start(self) -> WsExchange:
        server_ctx = None
        if self._ca is not None:
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ca.issue_cert(self.host, "localhost").configure_cert(server_ctx)
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            ssl=server_ctx,
            process_request=self._http,
            ping_interval=self.ping_interval,
            max_size=1 << 20,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks = [asyncio.ensure_future(self._ticker()), asyncio.ensure_future(self._beats())]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> WsExchange:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- serving -----------------------------------------------------------------------
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != "/binance/api/v3/depth":
            if parts.path.split("/")[1:2] and parts.path.split("/")[1] in VENUES:
                return None  # a WebSocket path: go on with the handshake
            return self._response(404, b'{"code":-1,"msg":"not found"}')
        self.counters["rest"] += 1
        query = parse_qs(parts.query)
        symbol = (query.get("symbol") or [""])[0]
        if not symbol.isalnum():
            return self._response(400, b'{"code":-1121,"msg":"Invalid symbol."}')
        limit = int((query.get("limit") or ["100"])[0])
        m = self.model("binance", symbol)
        body = _json(
            {
                "lastUpdateId": m.update_id,
                "bids": m.top_str("b", limit),
                "asks": m.top_str("a", limit),
            }  # fmt: skip
        )
        return self._response(200, body)

    @staticmethod
    def _response(status: int, body: bytes) -> Response:
        headers = Headers(
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]  # fmt: skip
        )
        return Response(status, "OK" if status == 200 else "Error", headers, body)

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        venue = parts.path.strip("/").split("/")[0]
        if venue == "binance":
            streams = (parse_qs(parts.query).get("streams") or [""])[0].split("/")
            session: _Session = _Binance(self, ws, [s for s in streams if s])
        else:
            session = {"coinbase": _Coinbase, "bybit": _Bybit, "okx": _Okx, "kraken": _Kraken}[
                venue
            ](self, ws)
        self.counters["connections"] += 1
        self.sessions.add(session)
        try:
            async for message in ws:
                try:
                    await session.on_client(message)
                except (msgspec.DecodeError, ValueError, TypeError, AttributeError, KeyError):
                    await ws.close(1003, "bad request")
        except Exception:  # a connection cut by a fault or by the client
            pass
        finally:
            self.sessions.discard(session)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0 / self.rate)
            if not self.paused:
                await self._step_all()

    async def _step_all(self) -> None:
        now = time.time_ns()
        wanted = {(s.venue, sym) for s in self.sessions for sym in s.symbols()}
        for venue, symbol in sorted(wanted):
            step = self.model(venue, symbol).step(now)
            self.counters["steps"] += 1
            for session in [s for s in self.sessions if s.venue == venue]:
                await self._publish(session, symbol, step)

    async def _publish(self, session: _Session, symbol: str, step: Step) -> None:
        out: list[str] = []
        if symbol in session.books:
            message = session.book_message(symbol, step)
            if message is not None and not session.take_fault("gap"):
                out.append(message)
        if isinstance(session, _Binance) and symbol in session.tickers:
            out.append(session.ticker_message(symbol, step))
        if symbol in session.trades and step.trades:
            out.extend(session.trade_messages(symbol, step))
        for message in out:
            with contextlib.suppress(Exception):  # a session that is going away
                await session.send(message)
                self.counters["messages"] += 1

    async def _beats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for session in list(self.sessions):
                message = session.heartbeat_message()
                if message is not None:
                    with contextlib.suppress(Exception):
                        await session.send(message)


async def _main(args: argparse.Namespace) -> None:
    sim = WsExchange(seed=args.seed, rate=args.rate, port=args.port, tls=not args.no_tls)
    async with sim:
        print(f"exchange simulator on {sim.url}/{{{','.join(VENUES)}}}", flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(min(1.0, deadline - time.monotonic()) if deadline else 1.0)
        print(_json(sim.counters).decode(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", type=float, default=20.0, help="book steps per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-tls", action="store_true", help="serve ws:// instead of wss://")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
