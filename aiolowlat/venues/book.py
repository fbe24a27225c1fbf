"""A validated price-level order book, the one every venue adapter keeps.

Levels are keyed by float price (equal wire strings give equal keys) and keep the
wire strings of price and size as well, because OKX's and Kraken's checksums are
defined over the exact text the venue sent. Each side is a dict plus a sorted key
list (best first), so best price is O(1), a new level is one bisect insert and the
top N levels are a slice. A snapshot replaces both sides entirely, so no level of an
earlier book can survive a resync.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from math import isfinite

from .events import Level

__all__ = ["OrderBook", "RawLevel"]

RawLevel = tuple[str, str]  # (price, size) exactly as the venue wrote them


class _Side:
    """One side: price -> (size, raw price, raw size); keys sorted best first."""

    __slots__ = ("levels", "keys", "sign")

    def __init__(self, sign: float) -> None:
        self.levels: dict[float, tuple[float, str, str]] = {}
        self.keys: list[float] = []  # sign * price, ascending, so best first
        self.sign = sign

    def set(self, price_s: str, size_s: str) -> Level:
        price = float(price_s)
        size = float(size_s)
        if not (isfinite(price) and isfinite(size) and price > 0.0 and size >= 0.0):
            raise ValueError(f"bad level {price_s!r} x {size_s!r}")
        if size == 0.0:
            if self.levels.pop(price, None) is not None:
                keys = self.keys
                del keys[bisect_left(keys, self.sign * price)]
        else:
            if price not in self.levels:
                insort(self.keys, self.sign * price)
            self.levels[price] = (size, price_s, size_s)
        return (price, size)

    def clear(self) -> None:
        self.levels.clear()
        self.keys.clear()

    def top(self, n: int | None) -> list[Level]:
        sign, levels = self.sign, self.levels
        keys = self.keys if n is None else self.keys[:n]
        return [(sign * k, levels[sign * k][0]) for k in keys]

    def top_raw(self, n: int) -> list[RawLevel]:
        sign, levels = self.sign, self.levels
        return [levels[sign * k][1:] for k in self.keys[:n]]

    def truncate(self, n: int) -> None:
        sign, levels = self.sign, self.levels
        for k in self.keys[n:]:
            del levels[sign * k]
        del self.keys[n:]


class OrderBook:
    """Price levels of one symbol at one venue; ``synced`` is False while resyncing."""

    __slots__ = ("venue", "symbol", "synced", "_bids", "_asks")

    def __init__(self, venue: str, symbol: str) -> None:
        self.venue = venue
        self.symbol = symbol
        self.synced = False
        self._bids = _Side(-1.0)
        self._asks = _Side(1.0)

    def clear(self) -> None:
        """Drop every level and mark the book unsynced (start of a resync)."""
        self._bids.clear()
        self._asks.clear()
        self.synced = False

    def replace(self, bids: Iterable[RawLevel], asks: Iterable[RawLevel]) -> None:
        """Replace the whole book with a snapshot; marks it synced."""
        self._bids.clear()
        self._asks.clear()
        self.update(bids, asks)
        self.synced = True

    def update(
        self, bids: Iterable[RawLevel], asks: Iterable[RawLevel]
    ) -> tuple[list[Level], list[Level]]:
        """Apply absolute sizes (size 0 removes); returns the changes as floats."""
        bid_set, ask_set = self._bids.set, self._asks.set
        return [bid_set(p, s) for p, s in bids], [ask_set(p, s) for p, s in asks]

    def truncate(self, depth: int) -> None:
        """Keep the best ``depth`` levels per side (venues that stop sending deletes
        for levels pushed out of the subscribed depth, as Kraken documents)."""
        self._bids.truncate(depth)
        self._asks.truncate(depth)

    def best_bid(self) -> Level | None:
        keys = self._bids.keys
        return (-keys[0], self._bids.levels[-keys[0]][0]) if keys else None

    def best_ask(self) -> Level | None:
        keys = self._asks.keys
        return (keys[0], self._asks.levels[keys[0]][0]) if keys else None

    def bids(self, n: int | None = None) -> list[Level]:
        """The best ``n`` bids (all when None), best first."""
        return self._bids.top(n)

    def asks(self, n: int | None = None) -> list[Level]:
        """The best ``n`` asks (all when None), best first."""
        return self._asks.top(n)

    def raw_bids(self, n: int) -> list[RawLevel]:
        """The best ``n`` bids as wire strings, for venue checksums."""
        return self._bids.top_raw(n)

    def raw_asks(self, n: int) -> list[RawLevel]:
        return self._asks.top_raw(n)

    @property
    def depth(self) -> tuple[int, int]:
        """Number of (bid, ask) levels."""
        return len(self._bids.keys), len(self._asks.keys)

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask: a corrupt book."""
        b, a = self._bids.keys, self._asks.keys
        return bool(b and a and -b[0] >= a[0])

    def __repr__(self) -> str:
        return (
            f"OrderBook({self.venue}:{self.symbol} synced={self.synced} "
            f"bid={self.best_bid()} ask={self.best_ask()} depth={self.depth})"
        )
