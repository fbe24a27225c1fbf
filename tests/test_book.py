"""Order books from ITCH messages: top of book, depth, VWAP and counted bad references."""

from aiolowlat.protocols.book import BookBuilder, PriceLevel, TopOfBook, Vwap
from aiolowlat.protocols.itch import (
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
)

SECOND = 1_000_000_000
AAPL, MSFT = 1, 2


def directory(locate, stock):
    return StockDirectory(locate, 0, 0, stock)


def add(ref, side, shares, price, locate=AAPL, stock="AAPL", ts=0):
    return AddOrder(locate, 0, ts, ref, side, shares, stock, price)


def built(*messages, window=60 * SECOND):
    builder = BookBuilder(vwap_window_ns=window)
    builder.apply(directory(AAPL, "AAPL"))
    builder.apply(directory(MSFT, "MSFT"))
    for message in messages:
        builder.apply(message)
    return builder


def test_directory_maps_locate_to_symbol():
    builder = built()
    assert builder.symbol(AAPL) == "AAPL" and builder.symbol(MSFT) == "MSFT"
    assert builder.symbol(99) is None
    assert builder.book("AAPL").top() == TopOfBook(None, 0, None, 0)


def test_top_and_depth_aggregate_by_price_level():
    builder = built(
        add(1, "B", 100, 1_000_000),
        add(2, "B", 200, 1_000_000),
        add(3, "B", 50, 999_900),
        add(4, "B", 10, 1_000_100),
        add(5, "S", 300, 1_000_500),
        AddOrderMPID(AAPL, 0, 0, 6, "S", 40, "AAPL", 1_000_300, "GSCO"),
        add(7, "S", 60, 1_000_300),
        add(8, "B", 999, 5_000_000, locate=MSFT, stock="MSFT"),
    )
    book = builder.book("AAPL")
    assert book.top() == TopOfBook(1_000_100, 10, 1_000_300, 100)
    bids, asks = book.depth()
    assert bids == [
        PriceLevel(1_000_100, 10, 1),
        PriceLevel(1_000_000, 300, 2),
        PriceLevel(999_900, 50, 1),
    ]
    assert asks == [PriceLevel(1_000_300, 100, 2), PriceLevel(1_000_500, 300, 1)]
    assert book.depth(1) == ([PriceLevel(1_000_100, 10, 1)], [PriceLevel(1_000_300, 100, 2)])
    assert builder.book("MSFT").top() == TopOfBook(5_000_000, 999, None, 0)
    assert builder.open_orders == 8


def test_execute_cancel_delete_replace():
    builder = built(
        add(1, "B", 100, 1_000_000),
        add(2, "B", 200, 1_000_000),
        add(3, "S", 300, 1_000_500),
        OrderExecuted(AAPL, 0, 1, 1, 40, 1001),  # 60 left on order 1
        OrderCancel(AAPL, 0, 2, 2, 50),  # 150 left on order 2
        OrderExecuted(AAPL, 0, 3, 1, 60, 1002),  # order 1 gone
        OrderReplace(AAPL, 0, 4, 3, 30, 120, 1_000_400),  # ask moves in, new ref 30
        OrderDelete(AAPL, 0, 5, 2),
        add(4, "B", 70, 999_000),
    )
    book = builder.book("AAPL")
    assert book.depth() == ([PriceLevel(999_000, 70, 1)], [PriceLevel(1_000_400, 120, 1)])
    assert book.top() == TopOfBook(999_000, 70, 1_000_400, 120)
    assert builder.open_orders == 2
    builder.apply(OrderCancel(AAPL, 0, 6, 30, 20))
    assert book.top().ask_size == 100


def test_vwap_from_executions_and_trades():
    builder = built(
        add(1, "S", 500, 1_000_000),
        add(2, "S", 500, 1_010_000),
        OrderExecuted(AAPL, 0, 1 * SECOND, 1, 100, 1),  # 100 @ 100.0000
        OrderExecutedWithPrice(AAPL, 0, 2 * SECOND, 2, 300, 2, "Y", 1_009_000),  # 300 @ 100.9000
        OrderExecutedWithPrice(AAPL, 0, 3 * SECOND, 2, 100, 3, "N", 1),  # not volume
        Trade(AAPL, 0, 4 * SECOND, 0, "B", 200, "AAPL", 1_005_000, 4),  # 200 @ 100.5000
        CrossTrade(AAPL, 0, 5 * SECOND, 400, "AAPL", 1_002_500, 5, "O"),  # 400 @ 100.2500
    )
    book = builder.book("AAPL")
    notional = 100 * 1_000_000 + 300 * 1_009_000 + 200 * 1_005_000 + 400 * 1_002_500
    assert book.vwap.value() == notional / 1000
    assert book.vwap.volume == 1000 and book.traded_volume == 1000
    assert book.last_trade_price == 1_002_500
    # the non-printable execution still took shares off the book
    assert book.depth() == ([], [PriceLevel(1_000_000, 400, 1), PriceLevel(1_010_000, 100, 1)])


def test_vwap_window_drops_old_executions():
    window = 10 * SECOND
    builder = built(
        add(1, "S", 1000, 2_000_000),
        OrderExecuted(AAPL, 0, 0, 1, 100, 1),
        OrderExecuted(AAPL, 0, 5 * SECOND, 1, 100, 2),
        window=window,
    )
    book = builder.book("AAPL")
    builder.apply(Trade(AAPL, 0, 12 * SECOND, 0, "S", 300, "AAPL", 1_000_000, 3))
    # the execution at t=0 is more than 10 s older than t=12 s and has left the window
    assert book.vwap.value() == (100 * 2_000_000 + 300 * 1_000_000) / 400
    assert book.vwap.value(now=15 * SECOND) == 1_000_000.0
    assert book.vwap.value(now=30 * SECOND) is None


def test_vwap_alone():
    vwap = Vwap(window_ns=10)
    assert vwap.value() is None
    vwap.add(0, 10, 1)
    vwap.add(5, 20, 3)
    assert vwap.value() == 70 / 4
    vwap.add(10, 30, 0)  # zero shares are not an execution
    assert vwap.value(now=10) == 20.0


def test_bad_references_are_counted_never_raised():
    builder = built(
        add(1, "B", 100, 1_000_000),
        OrderExecuted(AAPL, 0, 0, 404, 10, 1),
        OrderExecutedWithPrice(AAPL, 0, 0, 404, 10, 2, "Y", 5),
        OrderCancel(AAPL, 0, 0, 404, 10),
        OrderDelete(AAPL, 0, 0, 404),
        OrderReplace(AAPL, 0, 0, 404, 405, 10, 5),
        add(1, "S", 5, 5),  # the reference is taken
        OrderReplace(AAPL, 0, 0, 1, 1, 10, 5),  # new reference taken as well
        OrderCancel(AAPL, 0, 0, 1, 1000),  # more than rests: clamps to what is there
        OrderDelete(AAPL, 0, 0, 1),  # already gone
        SystemEvent(0, 0, 0, "Q"),
        None,
    )
    counters = builder.counters()
    assert counters["unknown_order"] == 6
    assert counters["duplicate_order"] == 2
    assert counters["oversized"] == 1
    assert counters["ignored"] == 2
    assert builder.book("AAPL").top() == TopOfBook(None, 0, None, 0)
    assert builder.open_orders == 0


def test_order_for_an_unlisted_locate_still_builds_a_book():
    builder = BookBuilder()
    builder.apply(add(1, "B", 10, 100, locate=9, stock="ZVZZT"))
    assert builder.unknown_locate == 1
    assert builder.book("ZVZZT").top() == TopOfBook(100, 10, None, 0)
    builder.apply(OrderExecuted(9, 0, 0, 1, 10, 1))
    assert builder.book("ZVZZT").vwap.value() == 100.0


def test_snapshot_equality():
    a = built(add(1, "B", 100, 1_000_000), add(2, "S", 100, 1_000_100))
    b = built(add(2, "S", 100, 1_000_100), add(1, "B", 100, 1_000_000))
    assert a.snapshot() == b.snapshot()
    b.apply(OrderCancel(AAPL, 0, 0, 1, 1))
    assert a.snapshot() != b.snapshot()
