"""Venue-neutral market events that every adapter emits, as msgspec Structs.

Prices and sizes are floats: a decimal string parses to the nearest double
deterministically, so equal wire strings give equal book keys, and strategies do
arithmetic on them at hardware speed (Decimal arithmetic is ~10x slower and allocates).
Where a venue's checksum needs the exact wire text, the book keeps the strings too
(see book.py), so no precision is ever lost for validation.

Timestamps are integers in nanoseconds since the Unix epoch: ``exch_ns`` is the
venue's own event time (at the venue's resolution, ms for most), ``rx_ns`` the local
receive time of the WebSocket message that carried the event.
"""

from __future__ import annotations

import msgspec

__all__ = ["BookDelta", "BookSnapshot", "BookTicker", "Event", "Level", "Resync", "Trade"]

Level = tuple[float, float]  # (price, size); size 0.0 in a delta removes the level


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One trade print; ``side`` is the taker's side, "buy" or "sell"."""

    venue: str
    symbol: str
    price: float
    size: float
    side: str
    trade_id: str
    exch_ns: int
    rx_ns: int


class BookTicker(msgspec.Struct, frozen=True, gc=False):
    """Best bid and offer pushed by the venue (not derived from a local book)."""

    venue: str
    symbol: str
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    exch_ns: int
    rx_ns: int


class BookSnapshot(msgspec.Struct, frozen=True):
    """The full book as the venue sent it; the local book was replaced by it."""

    venue: str
    symbol: str
    bids: list[Level]
    asks: list[Level]
    exch_ns: int
    rx_ns: int


class BookDelta(msgspec.Struct, frozen=True):
    """Changed levels, already applied to a validated local book."""

    venue: str
    symbol: str
    bids: list[Level]
    asks: list[Level]
    exch_ns: int
    rx_ns: int


class Resync(msgspec.Struct, frozen=True, gc=False):
    """The local book of ``symbol`` was dropped (gap, bad checksum, reconnect) and is
    being rebuilt; it is empty and not synced until the next BookSnapshot."""

    venue: str
    symbol: str
    reason: str


Event = Trade | BookTicker | BookSnapshot | BookDelta | Resync
