"""Per-symbol order books built from ITCH 5.0 messages, with top of book, depth and VWAP.

Orders are tracked by reference number, so executions, cancels, deletes and replaces
(which carry no symbol) find their book through the order. Prices stay integers in
ITCH units (4 implied decimals). A message that names an unknown order is counted in
``unknown_order`` and ignored; nothing here raises on feed content.

VWAP window: by time, over the executions whose ITCH timestamp lies within
``vwap_window_ns`` of the newest one seen by that book; exchange time keeps it
deterministic and free of local clocks. Non-printable executions ('C' with printable
'N') are not volume, per the ITCH specification, and are left out.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque

import msgspec

from .itch import (
    AddOrder,
    AddOrderMPID,
    CrossTrade,
    ItchMessage,
    OrderCancel,
    OrderDelete,
    OrderExecuted,
    OrderExecutedWithPrice,
    OrderReplace,
    StockDirectory,
    Trade,
)

__all__ = ["BookBuilder", "OrderBook", "PriceLevel", "TopOfBook", "Vwap"]

DEFAULT_VWAP_WINDOW_NS = 60 * 1_000_000_000


class TopOfBook(msgspec.Struct, frozen=True, gc=False):
    """Best bid and ask (None on an empty side) with the shares resting there."""

    bid_price: int | None
    bid_size: int
    ask_price: int | None
    ask_size: int


class PriceLevel(msgspec.Struct, frozen=True, gc=False):
    """Aggregated shares and order count at one price."""

    price: int
    shares: int
    orders: int


class Vwap:
    """Volume-weighted average price of the executions in a rolling time window."""

    __slots__ = ("window_ns", "_trades", "_notional", "_volume", "_latest")

    def __init__(self, window_ns: int = DEFAULT_VWAP_WINDOW_NS) -> None:
        self.window_ns = window_ns
        self._trades: deque[tuple[int, int, int]] = deque()
        self._notional = 0
        self._volume = 0
        self._latest = 0

    def add(self, timestamp: int, price: int, shares: int) -> None:
        if shares <= 0:
            return
        self._trades.append((timestamp, price, shares))
        self._notional += price * shares
        self._volume += shares
        self._evict(timestamp)

    def value(self, now: int | None = None) -> float | None:
        """The VWAP in ITCH price units, None when the window holds no volume."""
        if now is not None:
            self._evict(now)
        return self._notional / self._volume if self._volume else None

    @property
    def volume(self) -> int:
        return self._volume

    def _evict(self, now: int) -> None:
        self._latest = max(self._latest, now)
        cutoff = self._latest - self.window_ns
        trades = self._trades
        for _ in range(len(trades)):
            timestamp, price, shares = trades[0]
            if timestamp > cutoff:
                break
            trades.popleft()
            self._notional -= price * shares
            self._volume -= shares


class _Side:
    """One side of a book: sorted prices plus aggregated shares and order counts."""

    __slots__ = ("is_bid", "prices", "shares", "orders")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.prices: list[int] = []  # ascending
        self.shares: dict[int, int] = {}
        self.orders: dict[int, int] = {}

    def add(self, price: int, shares: int) -> None:
        if price in self.shares:
            self.shares[price] += shares
            self.orders[price] += 1
        else:
            insort(self.prices, price)
            self.shares[price] = shares
            self.orders[price] = 1

    def reduce(self, price: int, shares: int, order_gone: bool) -> None:
        self.shares[price] -= shares
        if order_gone:
            self.orders[price] -= 1
            if not self.orders[price]:
                del self.shares[price], self.orders[price]
                del self.prices[bisect_left(self.prices, price)]

    def best(self) -> tuple[int | None, int]:
        if not self.prices:
            return None, 0
        price = self.prices[-1] if self.is_bid else self.prices[0]
        return price, self.shares[price]

    def levels(self, count: int) -> list[PriceLevel]:
        prices = self.prices[::-1][:count] if self.is_bid else self.prices[:count]
        return [PriceLevel(p, self.shares[p], self.orders[p]) for p in prices]


class OrderBook:
    """The visible book of one symbol, aggregated by price level."""

    def __init__(self, symbol: str, vwap_window_ns: int = DEFAULT_VWAP_WINDOW_NS) -> None:
        self.symbol = symbol
        self.bids = _Side(is_bid=True)
        self.asks = _Side(is_bid=False)
        self.vwap = Vwap(vwap_window_ns)
        self.last_trade_price: int | None = None
        self.traded_volume = 0  # printable shares over the whole session

    def top(self) -> TopOfBook:
        bid_price, bid_size = self.bids.best()
        ask_price, ask_size = self.asks.best()
        return TopOfBook(bid_price, bid_size, ask_price, ask_size)

    def depth(self, levels: int = 10) -> tuple[list[PriceLevel], list[PriceLevel]]:
        """Up to ``levels`` price levels per side, best first: (bids, asks)."""
        return self.bids.levels(levels), self.asks.levels(levels)

    def snapshot(self) -> tuple:
        """Everything observable about the book, for equality checks."""
        bids, asks = self.depth(len(self.bids.prices) + len(self.asks.prices))
        return (bids, asks, self.vwap.value(), self.last_trade_price, self.traded_volume)

    def _trade(self, timestamp: int, price: int, shares: int) -> None:
        self.vwap.add(timestamp, price, shares)
        self.last_trade_price = price
        self.traded_volume += shares


class _Order:
    __slots__ = ("book", "side", "price", "shares")

    def __init__(self, book: OrderBook, side: _Side, price: int, shares: int) -> None:
        self.book = book
        self.side = side
        self.price = price
        self.shares = shares


class BookBuilder:
    """Applies ITCH messages to the books of every symbol; bad references are counted."""

    def __init__(self, vwap_window_ns: int = DEFAULT_VWAP_WINDOW_NS) -> None:
        self.books: dict[str, OrderBook] = {}
        self._by_locate: dict[int, OrderBook] = {}
        self._orders: dict[int, _Order] = {}
        self._vwap_window_ns = vwap_window_ns
        self.applied = 0
        self.ignored = 0  # message types that do not touch a book
        self.unknown_order = 0
        self.duplicate_order = 0
        self.unknown_locate = 0  # order for a locate with no stock directory entry
        self.oversized = 0  # executed/cancelled more shares than were resting
        self._handlers = {
            StockDirectory: self._directory,
            AddOrder: self._add,
            AddOrderMPID: self._add,
            OrderExecuted: self._executed,
            OrderExecutedWithPrice: self._executed_with_price,
            OrderCancel: self._cancel,
            OrderDelete: self._delete,
            OrderReplace: self._replace,
            Trade: self._hidden_trade,
            CrossTrade: self._cross,
        }

    def apply(self, message: ItchMessage | None) -> None:
        """Update the books from one decoded message (None and other types are ignored)."""
        handler = self._handlers.get(type(message))
        if handler is None:
            self.ignored += 1
            return
        self.applied += 1
        handler(message)

    def book(self, symbol: str) -> OrderBook | None:
        return self.books.get(symbol)

    def symbol(self, stock_locate: int) -> str | None:
        book = self._by_locate.get(stock_locate)
        return book.symbol if book else None

    @property
    def open_orders(self) -> int:
        return len(self._orders)

    def counters(self) -> dict[str, int]:
        names = ("applied", "ignored", "unknown_order", "duplicate_order", "unknown_locate",
                 "oversized", "open_orders")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def snapshot(self) -> dict:
        """Every book's snapshot plus the resting orders, for equality checks."""
        orders = {
            ref: (o.book.symbol, o.side.is_bid, o.price, o.shares)
            for ref, o in self._orders.items()
        }
        return {"books": {s: b.snapshot() for s, b in self.books.items()}, "orders": orders}

    def _book_for(self, locate: int, stock: str) -> OrderBook:
        book = self._by_locate.get(locate)
        if book is None:
            self.unknown_locate += 1
            book = self.books.get(stock) or OrderBook(stock, self._vwap_window_ns)
            self.books[stock] = self._by_locate[locate] = book
        return book

    def _directory(self, m: StockDirectory) -> None:
        book = self.books.get(m.stock)
        if book is None:
            book = self.books[m.stock] = OrderBook(m.stock, self._vwap_window_ns)
        self._by_locate[m.stock_locate] = book

    def _add(self, m: AddOrder | AddOrderMPID) -> None:
        if m.order_ref in self._orders:
            self.duplicate_order += 1
            return
        book = self._book_for(m.stock_locate, m.stock)
        side = book.bids if m.side == "B" else book.asks
        side.add(m.price, m.shares)
        self._orders[m.order_ref] = _Order(book, side, m.price, m.shares)

    def _take(self, order_ref: int, shares: int) -> _Order | None:
        """Remove ``shares`` from a resting order; None if the order is unknown."""
        order = self._orders.get(order_ref)
        if order is None:
            self.unknown_order += 1
            return None
        if shares > order.shares:
            self.oversized += 1
            shares = order.shares
        order.shares -= shares
        gone = order.shares == 0
        order.side.reduce(order.price, shares, gone)
        if gone:
            del self._orders[order_ref]
        return order

    def _executed(self, m: OrderExecuted) -> None:
        order = self._take(m.order_ref, m.executed_shares)
        if order is not None:
            order.book._trade(m.timestamp, order.price, m.executed_shares)

    def _executed_with_price(self, m: OrderExecutedWithPrice) -> None:
        order = self._take(m.order_ref, m.executed_shares)
        if order is not None and m.printable == "Y":
            order.book._trade(m.timestamp, m.execution_price, m.executed_shares)

    def _cancel(self, m: OrderCancel) -> None:
        self._take(m.order_ref, m.cancelled_shares)

    def _delete(self, m: OrderDelete) -> None:
        order = self._orders.get(m.order_ref)
        if order is None:
            self.unknown_order += 1
            return
        self._take(m.order_ref, order.shares)

    def _replace(self, m: OrderReplace) -> None:
        order = self._orders.get(m.original_order_ref)
        if order is None:
            self.unknown_order += 1
            return
        if m.new_order_ref in self._orders:
            self.duplicate_order += 1
            return
        self._take(m.original_order_ref, order.shares)
        order.side.add(m.price, m.shares)
        self._orders[m.new_order_ref] = _Order(order.book, order.side, m.price, m.shares)

    def _hidden_trade(self, m: Trade) -> None:
        self._book_for(m.stock_locate, m.stock)._trade(m.timestamp, m.price, m.shares)

    def _cross(self, m: CrossTrade) -> None:
        self._book_for(m.stock_locate, m.stock)._trade(m.timestamp, m.cross_price, m.shares)
