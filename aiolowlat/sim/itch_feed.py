"""A deterministic ITCH 5.0 session on MoldUDP64 A/B lines, with seeded impairments.

Everything here is pure: the generator returns encoded messages, the packetizer
returns datagrams, each line is a list of timed datagrams, and the retransmission
store answers request bytes with packet bytes. Putting them on sockets is the
multicast publisher's job.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import msgspec

from ..protocols.itch import (
    AddOrder,
    AddOrderMPID,
    CrossTrade,
    OrderCancel,
    OrderDelete,
    OrderExecuted,
    OrderExecutedWithPrice,
    OrderReplace,
    StockDirectory,
    SystemEvent,
    Trade,
    encode_message,
)
from ..protocols.moldudp64 import (
    END_OF_SESSION_COUNT,
    HEADER_SIZE,
    MAX_MESSAGES_PER_PACKET,
    MoldError,
    decode_request,
    encode_packet,
)

__all__ = [
    "Datagram",
    "ItchFeed",
    "LineImpairment",
    "LineReport",
    "RetransmissionStore",
    "generate_session",
    "merge_lines",
    "message_count",
    "packetize",
    "schedule_line",
]

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "SPY")
MARKET_OPEN_NS = 34_200 * 1_000_000_000  # 09:30:00 in ns since midnight
_TICK = 100  # one cent in ITCH price units
_MAX_RESTING = 200  # per symbol, so the book stays a realistic size
_COUNT_AT = struct.Struct(">H")


class _SymbolState:
    __slots__ = ("stock", "locate", "mid", "orders", "refs")

    def __init__(self, stock: str, locate: int, mid: int) -> None:
        self.stock = stock
        self.locate = locate
        self.mid = mid
        self.orders: dict[int, list] = {}  # ref -> [side, price, shares]
        self.refs: list[int] = []  # the same refs, for seeded random choice

    def best(self, side: str) -> int | None:
        prices = [o[1] for o in self.orders.values() if o[0] == side]
        if not prices:
            return None
        return max(prices) if side == "B" else min(prices)


class _SessionGenerator:
    """Random order flow that keeps every symbol's book consistent and uncrossed."""

    def __init__(self, seed: int, symbols: Sequence[str]) -> None:
        self.rng = random.Random(seed)
        self.now = MARKET_OPEN_NS - 1_000_000_000
        self.next_ref = 1
        self.next_match = 1
        self.symbols = [
            _SymbolState(stock, locate, self.rng.randint(50, 500) * 10_000)
            for locate, stock in enumerate(symbols, start=1)
        ]
        self.out: list[bytes] = []

    def emit(self, message) -> None:
        self.out.append(encode_message(message))

    def tick(self) -> int:
        self.now += self.rng.randint(1_000, 2_000_000)
        return self.now

    def run(self, events: int) -> list[bytes]:
        self.emit(SystemEvent(0, 0, self.tick(), "O"))
        for s in self.symbols:
            self.emit(StockDirectory(s.locate, 0, self.tick(), s.stock))
        self.emit(SystemEvent(0, 0, self.tick(), "S"))
        self.now = MARKET_OPEN_NS
        self.emit(SystemEvent(0, 0, self.now, "Q"))
        for s in self.symbols:
            shares = self.rng.randint(1, 50) * 100
            self.emit(
                CrossTrade(s.locate, 0, self.tick(), shares, s.stock, s.mid, self.match(), "O")
            )
        for _ in range(events):
            self.step(self.rng.choice(self.symbols))
        for code in "MEC":
            self.emit(SystemEvent(0, 0, self.tick(), code))
        return self.out

    def match(self) -> int:
        self.next_match += 1
        return self.next_match - 1

    def step(self, s: _SymbolState) -> None:
        if self.rng.random() < 0.05:
            self.walk(s)
        if len(s.refs) < 5:
            return self.add(s)
        weights = (40 if len(s.refs) < _MAX_RESTING else 0, 15, 4, 14, 14, 8, 5)
        actions = (
            self.add,
            self.execute,
            self.execute_with_price,
            self.cancel,
            self.delete,
            self.replace,
            self.hidden_trade,
        )
        self.rng.choices(actions, weights)[0](s)

    def walk(self, s: _SymbolState) -> None:
        # The mid stays strictly inside the spread, so new orders never cross the book.
        mid = s.mid + self.rng.choice((-_TICK, _TICK))
        bid, ask = s.best("B"), s.best("S")
        if (bid is None or bid < mid) and (ask is None or mid < ask):
            s.mid = mid

    def add(self, s: _SymbolState) -> None:
        side = self.rng.choice("BS")
        offset = self.rng.randint(1, 10) * _TICK
        price = s.mid - offset if side == "B" else s.mid + offset
        shares = self.rng.randint(1, 10) * 100
        ref = self.next_ref
        self.next_ref += 1
        if self.rng.random() < 0.2:
            mpid = self.rng.choice(("GSCO", "MSCO", "JPMS", "CITD"))
            self.emit(
                AddOrderMPID(s.locate, 0, self.tick(), ref, side, shares, s.stock, price, mpid)
            )
        else:
            self.emit(AddOrder(s.locate, 0, self.tick(), ref, side, shares, s.stock, price))
        s.orders[ref] = [side, price, shares]
        s.refs.append(ref)

    def best_order(self, s: _SymbolState) -> int:
        side = self.rng.choice("BS")
        price = s.best(side)
        if price is None:
            return self.rng.choice(s.refs)
        return next(r for r in s.refs if s.orders[r][0] == side and s.orders[r][1] == price)

    def take(self, s: _SymbolState, ref: int, shares: int) -> None:
        order = s.orders[ref]
        order[2] -= shares
        if not order[2]:
            del s.orders[ref]
            s.refs.remove(ref)

    def execute(self, s: _SymbolState) -> None:
        ref = self.best_order(s)
        shares = self.rng.randint(1, s.orders[ref][2])
        self.emit(OrderExecuted(s.locate, 0, self.tick(), ref, shares, self.match()))
        self.take(s, ref, shares)

    def execute_with_price(self, s: _SymbolState) -> None:
        ref = self.best_order(s)
        shares = self.rng.randint(1, s.orders[ref][2])
        price = s.orders[ref][1] + self.rng.choice((-_TICK, 0, _TICK))
        printable = "N" if self.rng.random() < 0.2 else "Y"
        match = self.match()
        self.emit(
            OrderExecutedWithPrice(s.locate, 0, self.tick(), ref, shares, match, printable, price)
        )
        self.take(s, ref, shares)

    def cancel(self, s: _SymbolState) -> None:
        ref = self.rng.choice(s.refs)
        if s.orders[ref][2] < 2:
            return self.delete(s, ref)
        shares = self.rng.randint(1, s.orders[ref][2] - 1)
        self.emit(OrderCancel(s.locate, 0, self.tick(), ref, shares))
        self.take(s, ref, shares)

    def delete(self, s: _SymbolState, ref: int | None = None) -> None:
        ref = self.rng.choice(s.refs) if ref is None else ref
        self.emit(OrderDelete(s.locate, 0, self.tick(), ref))
        self.take(s, ref, s.orders[ref][2])

    def replace(self, s: _SymbolState) -> None:
        ref = self.rng.choice(s.refs)
        side = s.orders[ref][0]
        offset = self.rng.randint(1, 10) * _TICK
        price = s.mid - offset if side == "B" else s.mid + offset
        shares = self.rng.randint(1, 10) * 100
        new = self.next_ref
        self.next_ref += 1
        self.emit(OrderReplace(s.locate, 0, self.tick(), ref, new, shares, price))
        self.take(s, ref, s.orders[ref][2])
        s.orders[new] = [side, price, shares]
        s.refs.append(new)

    def hidden_trade(self, s: _SymbolState) -> None:
        shares = self.rng.randint(1, 20) * 100
        side = self.rng.choice("BS")
        self.emit(Trade(s.locate, 0, self.tick(), 0, side, shares, s.stock, s.mid, self.match()))


def generate_session(
    seed: int, symbols: Sequence[str] = DEFAULT_SYMBOLS, events: int = 1000
) -> list[bytes]:
    """Encoded ITCH messages of one session: directory, opening cross, order flow, close."""
    return _SessionGenerator(seed, symbols).run(events)


def _batches(messages: Sequence[bytes], max_messages: int, max_bytes: int):
    """Greedy groups of messages that fit one packet."""
    batch, size = [], HEADER_SIZE
    for message in messages:
        if batch and (len(batch) == max_messages or size + 2 + len(message) > max_bytes):
            yield batch
            batch, size = [], HEADER_SIZE
        batch.append(message)
        size += 2 + len(message)
    if batch:
        yield batch


def packetize(
    messages: Sequence[bytes],
    session: bytes | str,
    *,
    first_sequence: int = 1,
    max_messages: int = 8,
    max_bytes: int = 1400,
    heartbeat_every: int = 0,
    end_of_session_packets: int = 3,
) -> list[bytes]:
    """MoldUDP64 packets of at most ``max_messages`` / ``max_bytes``, a heartbeat after
    every ``heartbeat_every`` of them, then ``end_of_session_packets`` end-of-session ones."""
    packets = []
    sequence = first_sequence
    for index, batch in enumerate(_batches(messages, max_messages, max_bytes), start=1):
        packets.append(encode_packet(session, sequence, batch))
        sequence += len(batch)
        if heartbeat_every and index % heartbeat_every == 0:
            packets.append(encode_packet(session, sequence))
    packets.extend(
        encode_packet(session, sequence, end_of_session=True) for _ in range(end_of_session_packets)
    )
    return packets


def message_count(packet: bytes) -> int:
    """Messages in a well-formed packet (0 for heartbeat and end of session)."""
    (count,) = _COUNT_AT.unpack_from(packet, 18)
    return 0 if count == END_OF_SESSION_COUNT else count


class LineImpairment(msgspec.Struct, frozen=True):
    """Per-packet probabilities of loss, late delivery (reordering) and duplication."""

    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0


PERFECT_LINE = LineImpairment()


class Datagram(msgspec.Struct, frozen=True, gc=False):
    """One datagram as a receiver sees it: arrival time, line name, bytes."""

    time: float
    line: str
    data: bytes


class LineReport(msgspec.Struct):
    """What the impairment did to one line, for checking a receiver's counters."""

    dropped_packets: int = 0
    dropped_messages: int = 0
    reordered: int = 0
    duplicated: int = 0


def schedule_line(
    packets: Sequence[bytes],
    line: str,
    impairment: LineImpairment = PERFECT_LINE,
    *,
    seed: int = 0,
    interval: float = 10e-6,
    latency: float = 20e-6,
    jitter: float = 2e-6,
) -> tuple[list[Datagram], LineReport]:
    """The datagrams one line delivers, sorted by arrival time, and what was done to them."""
    rng = random.Random(f"{seed}:{line}")
    report = LineReport()
    out = []
    for index, data in enumerate(packets):
        sent = index * interval + latency + rng.random() * jitter
        if rng.random() < impairment.loss:
            report.dropped_packets += 1
            report.dropped_messages += message_count(data)
            continue
        if rng.random() < impairment.reorder:
            sent += interval * rng.randint(2, 5)
            report.reordered += 1
        out.append(Datagram(sent, line, data))
        if rng.random() < impairment.duplicate:
            out.append(Datagram(sent + interval * rng.random() * 3, line, data))
            report.duplicated += 1
    out.sort(key=lambda d: d.time)
    return out, report


def merge_lines(*lines: Sequence[Datagram]) -> list[Datagram]:
    """All lines' datagrams in arrival order (ties keep line order)."""
    return sorted((d for line in lines for d in line), key=lambda d: d.time)


class RetransmissionStore:
    """Answers MoldUDP64 request packets with the downstream packets for that range."""

    def __init__(
        self,
        session: bytes | str,
        messages: Sequence[bytes],
        *,
        first_sequence: int = 1,
        max_messages: int = 8,
    ) -> None:
        raw = session.encode("ascii") if isinstance(session, str) else bytes(session)
        self.session = raw.ljust(10, b" ")  # as it appears on the wire
        self.messages = messages
        self.first_sequence = first_sequence
        self.max_messages = max(1, min(max_messages, MAX_MESSAGES_PER_PACKET))
        self.answered = 0
        self.malformed = 0
        self.wrong_session = 0
        self.out_of_range = 0

    def answer(self, request: bytes) -> list[bytes]:
        """The packets covering the requested messages that exist; [] for a bad request."""
        try:
            req = decode_request(request)
        except MoldError:
            self.malformed += 1
            return []
        if req.session != self.session:
            self.wrong_session += 1
            return []
        first = self.first_sequence
        start = max(req.sequence, first)
        stop = min(req.sequence + req.count, first + len(self.messages))
        if start >= stop:
            self.out_of_range += 1
            return []
        self.answered += 1
        return [
            encode_packet(
                self.session, s, self.messages[s - first : min(stop, s + self.max_messages) - first]
            )
            for s in range(start, stop, self.max_messages)
        ]


class ItchFeed:
    """One simulated session: its messages, its packets and a store for retransmissions."""

    def __init__(
        self,
        *,
        seed: int = 0,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        events: int = 1000,
        session: bytes | str = b"SIM0000001",
        max_messages: int = 8,
        heartbeat_every: int = 50,
        end_of_session_packets: int = 3,
    ) -> None:
        self.seed = seed
        self.messages = generate_session(seed, symbols, events)
        self.packets = packetize(
            self.messages,
            session,
            max_messages=max_messages,
            heartbeat_every=heartbeat_every,
            end_of_session_packets=end_of_session_packets,
        )
        self.store = RetransmissionStore(session, self.messages, max_messages=max_messages)
        self.session = self.store.session

    def line(
        self, name: str, impairment: LineImpairment = PERFECT_LINE, **timing
    ) -> tuple[list[Datagram], LineReport]:
        """The datagrams of line ``name`` under ``impairment``, seeded by the feed's seed."""
        return schedule_line(self.packets, name, impairment, seed=self.seed, **timing)
