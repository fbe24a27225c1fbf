"""Venue adapters on plain bytes: documented example messages, sync and checksum rules,
resync signals, and malformed input counted as drops (never raised)."""

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiolowlat.venues import (
    BinanceAdapter,
    BookDelta,
    BookSnapshot,
    BookTicker,
    BybitAdapter,
    CoinbaseAdapter,
    KrakenAdapter,
    OkxAdapter,
    OrderBook,
    Resync,
    Trade,
)
from aiolowlat.venues._util import kraken_checksum, okx_checksum, rfc3339_ns

enc = msgspec.json.encode

# -- checksums: the examples the venues publish ---------------------------------------

# Kraken, "Book checksum (WebSocket v2)": BTC/USD top 10, documented checksum 3310070434.
KRAKEN_ASKS = [
    ("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"),
    ("45289.6", "1.54560911"), ("45290.2", "0.15890660"), ("45291.8", "1.54553491"),
    ("45294.7", "0.04454749"), ("45296.1", "0.35380000"), ("45297.5", "0.09945542"),
    ("45299.5", "0.18772827"),
]  # fmt: skip
KRAKEN_BIDS = [
    ("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"),
    ("45281.0", "0.10000000"), ("45280.3", "1.54592586"), ("45279.0", "0.07990000"),
    ("45277.6", "0.03310103"), ("45277.5", "0.30000000"), ("45277.3", "1.54602737"),
    ("45276.6", "0.15445238"),
]  # fmt: skip
KRAKEN_DOC_CHECKSUM = 3310070434


def test_kraken_documented_checksum():
    assert kraken_checksum(KRAKEN_BIDS, KRAKEN_ASKS) == KRAKEN_DOC_CHECKSUM


def test_okx_documented_checksums():
    # OKX's checksum examples: equal and unequal numbers of bids and asks.
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9"), ("3368", "8")]
    assert okx_checksum(bids, asks) == -1881014294
    assert okx_checksum(bids[:1], [*asks, ("3372", "8")]) == 831078360


def test_okx_checksum_uses_only_25_levels():
    bids = [(f"{100 - i}", "1") for i in range(30)]
    asks = [(f"{200 + i}", "1") for i in range(30)]
    assert okx_checksum(bids, asks) == okx_checksum(bids[:25], asks[:25])
    assert okx_checksum(bids, asks) != okx_checksum(bids[:24], asks[:25])


def test_rfc3339():
    assert rfc3339_ns("2023-02-09T20:32:50.714964855Z") == 1675974770714964855
    assert rfc3339_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert rfc3339_ns("1970-01-01T00:00:00.5+00:00") == 500_000_000
    for bad in ("", "yesterday", "2023-02-09T20:32:50.7x", "2023-02-09T20:32:50+02:00"):
        with pytest.raises(ValueError):
            rfc3339_ns(bad)


# -- the book ------------------------------------------------------------------------


def test_book_levels_sorted_and_removed():
    book = OrderBook("v", "S")
    book.replace([("10.0", "1"), ("9.5", "2"), ("9.9", "3")], [("10.5", "1"), ("10.1", "4")])
    assert book.synced
    assert book.best_bid() == (10.0, 1.0) and book.best_ask() == (10.1, 4.0)
    assert book.bids() == [(10.0, 1.0), (9.9, 3.0), (9.5, 2.0)]
    assert book.raw_asks(5) == [("10.1", "4"), ("10.5", "1")]
    book.update([("10.0", "0"), ("9.95", "7"), ("1", "0")], [("10.10", "5")])
    assert book.bids(2) == [(9.95, 7.0), (9.9, 3.0)]
    assert book.raw_asks(1) == [("10.10", "5")]  # the newest wire text is kept
    assert book.depth == (3, 2) and not book.crossed()
    book.update([("10.2", "1")], [])
    assert book.crossed()
    book.truncate(1)
    assert book.depth == (1, 1)


def test_book_snapshot_leaves_no_stale_level():
    book = OrderBook("v", "S")
    book.replace([("1", "1"), ("2", "1")], [("3", "1")])
    book.replace([("1.5", "2")], [("4", "1")])
    assert book.bids() == [(1.5, 2.0)] and book.asks() == [(4.0, 1.0)]


@pytest.mark.parametrize(
    "level", [("abc", "1"), ("1", "-1"), ("nan", "1"), ("1", "inf"), ("0", "1")]
)
def test_book_rejects_bad_levels(level):
    with pytest.raises(ValueError):
        OrderBook("v", "S").update([level], [])


# -- Binance ---------------------------------------------------------------------------


def binance_depth(U, u, bids=(), asks=(), sym="BNBBTC"):
    data = {"e": "depthUpdate", "E": 1672515782136, "s": sym, "U": U, "u": u,
            "b": [list(b) for b in bids], "a": [list(a) for a in asks]}  # fmt: skip
    return enc({"stream": f"{sym.lower()}@depth@100ms", "data": data})


def test_binance_url_and_trade_ticker():
    ad = BinanceAdapter()
    ad.start(["btcusdt"])
    assert ad.connect_url() == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@bookTicker/"
        "btcusdt@depth@100ms"
    )
    assert ad.on_open() == []
    # Binance's documented trade and bookTicker payloads
    trade = {"e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001",
             "q": "100", "T": 1672515782136, "m": True, "M": True}  # fmt: skip
    [t] = ad.on_message(enc({"stream": "bnbbtc@trade", "data": trade}), 7)
    assert t == Trade("binance", "BNBBTC", 0.001, 100.0, "sell", "12345", 1672515782136000000, 7)
    ticker = {"u": 400900217, "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000",
              "a": "25.36520000", "A": "40.66000000"}  # fmt: skip
    [k] = ad.on_message(enc({"stream": "bnbusdt@bookTicker", "data": ticker}), 8)
    assert k == BookTicker("binance", "BNBUSDT", 25.3519, 31.21, 25.3652, 40.66, 0, 8)


def test_binance_depth_sync_rules():
    ad = BinanceAdapter(rest_url="https://rest.example")
    ad.start(["BNBBTC"])
    ad.on_open()
    # Events before the snapshot are buffered, and one snapshot is requested.
    assert ad.on_message(binance_depth(100, 105, [("0.0024", "10")]), 1) == []
    assert ad.on_message(binance_depth(106, 110, [("0.0023", "5")]), 2) == []
    assert ad.take_snapshot_requests() == [
        ("BNBBTC", "https://rest.example/api/v3/depth?symbol=BNBBTC&limit=1000")
    ]
    assert ad.take_snapshot_requests() == []
    snap = {"lastUpdateId": 107, "bids": [["0.0024", "1"], ["0.0020", "2"]],
            "asks": [["0.0026", "100"]]}  # fmt: skip
    events = ad.on_snapshot("BNBBTC", enc(snap), 3)
    # The event with u <= lastUpdateId is dropped, the bridging one (U <= 108 <= u) applied.
    assert [type(e) for e in events] == [BookSnapshot, BookDelta]
    book = ad.books["BNBBTC"]
    assert book.bids() == [(0.0024, 1.0), (0.0023, 5.0), (0.002, 2.0)]
    [d] = ad.on_message(binance_depth(111, 111, asks=[("0.0026", "0")]), 4)
    assert isinstance(d, BookDelta) and book.asks() == []
    assert ad.on_message(binance_depth(100, 111), 5) == []  # old: ignored
    # A gap drops the book, signals Resync, buffers the event and asks for a snapshot.
    [r] = ad.on_message(binance_depth(113, 115, [("0.0021", "1")]), 6)
    assert isinstance(r, Resync) and not book.synced and book.depth == (0, 0)
    assert ad.counters.gaps == 1 and ad.counters.resyncs == 1
    assert len(ad.take_snapshot_requests()) == 1
    # A snapshot older than the buffered events is fetched again.
    assert ad.on_snapshot("BNBBTC", enc({"lastUpdateId": 110, "bids": [], "asks": []}), 7) == []
    assert len(ad.take_snapshot_requests()) == 1 and not book.synced
    events = ad.on_snapshot(
        "BNBBTC", enc({"lastUpdateId": 114, "bids": [["0.0022", "3"]], "asks": []}), 8
    )
    assert [type(e) for e in events] == [BookSnapshot, BookDelta]
    assert book.synced and book.bids() == [(0.0022, 3.0), (0.0021, 1.0)]


def test_binance_unrequested_or_bad_snapshot():
    ad = BinanceAdapter()
    ad.start(["BNBBTC"])
    ad.on_open()
    assert ad.on_snapshot("BNBBTC", b"{}", 1) == []  # nothing was requested
    ad.on_message(binance_depth(1, 2), 1)
    ad.take_snapshot_requests()
    assert ad.on_snapshot("BNBBTC", b"<html>", 2) == []
    assert ad.counters.drops == 1 and len(ad.take_snapshot_requests()) == 1


# -- Coinbase ------------------------------------------------------------------------


def cb_msg(seq, channel="l2_data", events=()):
    return enc({"channel": channel, "client_id": "", "timestamp": "2023-02-09T20:32:50.714964855Z",
                "sequence_num": seq, "events": list(events)})  # fmt: skip


def cb_l2(kind, *updates, product="BTC-USD"):
    rows = [{"side": s, "event_time": "2023-02-09T20:32:50.714964855Z", "price_level": p,
             "new_quantity": q} for s, p, q in updates]  # fmt: skip
    return {"type": kind, "product_id": product, "updates": rows}


def test_coinbase_level2_sequence_and_resubscribe():
    ad = CoinbaseAdapter()
    ad.start(["BTC-USD"])
    subs = [msgspec.json.decode(m) for m in ad.on_open()]
    assert subs[0] == {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD"]}
    assert subs[2] == {"type": "subscribe", "channel": "heartbeats"}
    [s] = ad.on_message(cb_msg(0, events=[cb_l2("snapshot", ("bid", "21921.73", "0.06317902"),
                                                 ("offer", "21921.74", "1.5"))]), 1)  # fmt: skip
    assert isinstance(s, BookSnapshot) and s.exch_ns == 1675974770714964855
    [d] = ad.on_message(cb_msg(1, events=[cb_l2("update", ("offer", "21921.74", "0"))]), 2)
    assert d.asks == [(21921.74, 0.0)] and ad.books["BTC-USD"].asks() == []
    assert (
        ad.on_message(cb_msg(2, "heartbeats", [{"current_time": "x", "heartbeat_counter": "1"}]), 3)
        == []
    )
    trades = [{"type": "update", "trades": [{"trade_id": "9", "product_id": "BTC-USD",
               "price": "21921.7", "size": "0.3", "side": "SELL",
               "time": "2019-08-14T20:42:27.265Z"}]}]  # fmt: skip
    [t] = ad.on_message(cb_msg(3, "market_trades", trades), 4)
    assert t.side == "sell" and t.price == 21921.7 and t.exch_ns == 1565815347265000000
    # sequence_num 5 after 3: a message was lost; the book goes and level2 is resubscribed
    [r] = ad.on_message(cb_msg(5, events=[cb_l2("update", ("bid", "1", "1"))]), 5)
    assert isinstance(r, Resync) and ad.counters.gaps == 1
    assert [msgspec.json.decode(m)["type"] for m in ad.take_outgoing()] == [
        "unsubscribe",
        "subscribe",
    ]
    assert ad.books["BTC-USD"].depth == (0, 0)
    assert ad.on_message(cb_msg(6, events=[cb_l2("update", ("bid", "2", "1"))]), 6) == []
    [s2] = ad.on_message(cb_msg(7, events=[cb_l2("snapshot", ("bid", "3", "1"))]), 7)
    assert isinstance(s2, BookSnapshot) and ad.books["BTC-USD"].bids() == [(3.0, 1.0)]


def test_coinbase_sequence_restarts_per_connection():
    ad = CoinbaseAdapter()
    ad.start(["BTC-USD"])
    ad.on_open()
    ad.on_message(cb_msg(0, events=[cb_l2("snapshot", ("bid", "1", "1"))]), 1)
    ad.on_message(cb_msg(1, "heartbeats"), 1)
    ad.on_close()
    ad.on_open()
    assert ad.counters.reconnects == 1
    [s] = ad.on_message(cb_msg(0, events=[cb_l2("snapshot", ("bid", "2", "1"))]), 2)
    assert isinstance(s, BookSnapshot) and ad.counters.gaps == 0


# -- Bybit -----------------------------------------------------------------------------


def bybit_book(kind, u, bids=(), asks=()):
    data = {"s": "BTCUSDT", "b": [list(b) for b in bids], "a": [list(a) for a in asks], "u": u,
            "seq": 22520573250}  # fmt: skip
    return enc({"topic": "orderbook.50.BTCUSDT", "type": kind, "ts": 1671179923028, "data": data})


def test_bybit_snapshot_delta_gap_and_reset():
    ad = BybitAdapter()
    ad.start(["BTCUSDT"])
    assert msgspec.json.decode(ad.on_open()[0]) == {
        "op": "subscribe", "args": ["orderbook.50.BTCUSDT", "publicTrade.BTCUSDT"]}  # fmt: skip
    assert ad.on_message(b'{"success":true,"ret_msg":"","conn_id":"x","op":"subscribe"}', 0) == []
    # Bybit's documented snapshot and delta (abridged)
    snap = bybit_book("snapshot", 13079592, [("17440.00", "40.833"), ("17439.50", "0.513")],
                      [("17440.50", "78.815"), ("17441.00", "8.858")])  # fmt: skip
    [s] = ad.on_message(snap, 1)
    assert isinstance(s, BookSnapshot) and s.exch_ns == 1671179923028000000
    [d] = ad.on_message(bybit_book("delta", 13079593, [], [("17440.50", "78.857"),
                                                          ("17442.00", "1.510")]), 2)  # fmt: skip
    assert d.asks == [(17440.5, 78.857), (17442.0, 1.51)]
    [r] = ad.on_message(bybit_book("delta", 13079595, [("17439.50", "0")]), 3)
    assert isinstance(r, Resync) and ad.counters.gaps == 1
    out = [msgspec.json.decode(m) for m in ad.take_outgoing()]
    assert out == [{"op": "unsubscribe", "args": ["orderbook.50.BTCUSDT"]},
                   {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}]  # fmt: skip
    assert ad.on_message(bybit_book("delta", 13079596, [("1", "1")]), 4) == []
    # a snapshot with u == 1 (service restart) replaces the book
    [s] = ad.on_message(bybit_book("snapshot", 1, [("17000.00", "1")]), 5)
    assert ad.books["BTCUSDT"].bids() == [(17000.0, 1.0)]
    [d] = ad.on_message(bybit_book("delta", 2, [("17001.00", "2")]), 6)
    assert isinstance(d, BookDelta)
    trade = {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868,
             "data": [{"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001",
                       "p": "16578.50", "L": "PlusTick", "i": "20f43950", "BT": False}]}  # fmt: skip
    [t] = ad.on_message(enc(trade), 7)
    assert (t.side, t.price, t.size, t.trade_id) == ("buy", 16578.5, 0.001, "20f43950")
    assert ad.heartbeat() == '{"op":"ping"}'


# -- OKX ------------------------------------------------------------------------------


def okx_book(action, bids, asks, seq, prev, checksum):
    data = {"asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": "1597026383085", "checksum": checksum, "prevSeqId": prev, "seqId": seq}  # fmt: skip
    return enc(
        {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]}
    )


def test_okx_documented_checksum_snapshot_then_updates():
    ad = OkxAdapter()
    ad.start(["BTC-USDT"])
    ad.on_open()
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9"), ("3368", "8")]
    [s] = ad.on_message(okx_book("snapshot", bids, asks, 10, -1, -1881014294), 1)
    assert isinstance(s, BookSnapshot) and ad.counters.checksum_failures == 0
    # removing 3366 leaves the documented odd example once 3372 is added
    upd = okx_book("update", [("3366", "0")], [("3372", "8")], 11, 10, 831078360)
    [d] = ad.on_message(upd, 2)
    assert isinstance(d, BookDelta) and ad.books["BTC-USDT"].depth == (1, 3)
    # no change: seqId repeats, still continuous
    [d] = ad.on_message(okx_book("update", [], [], 11, 11, 831078360), 3)
    assert isinstance(d, BookDelta)
    [r] = ad.on_message(okx_book("update", [("3366.1", "8")], [], 12, 11, 5), 4)
    assert isinstance(r, Resync) and r.reason == "checksum mismatch"
    assert ad.counters.checksum_failures == 1
    out = [msgspec.json.decode(m)["op"] for m in ad.take_outgoing()]
    assert out == ["unsubscribe", "subscribe"]


def test_okx_gap_and_zero_checksum():
    ad = OkxAdapter()
    ad.start(["BTC-USDT"])
    ad.on_open()
    ad.on_message(okx_book("snapshot", [("1", "1")], [("2", "1")], 5, -1, 0), 1)
    [d] = ad.on_message(okx_book("update", [("1.5", "1")], [], 6, 5, 0), 2)
    assert isinstance(d, BookDelta)  # checksum 0 (deprecated field) is not verified
    [r] = ad.on_message(okx_book("update", [], [], 9, 8, 0), 3)
    assert isinstance(r, Resync) and ad.counters.gaps == 1
    assert ad.on_message(b"pong", 4) == []
    assert ad.on_message(b'{"event":"error","code":"60012","msg":"bad"}', 5) == []
    assert ad.errors == 1 and ad.counters.drops == 0


# -- Kraken ---------------------------------------------------------------------------


def kraken_book(kind, bids, asks, checksum, symbol="BTC/USD"):
    # Kraken writes prices and quantities as JSON numbers with every decimal
    def rows(levels):
        return ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels)

    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}","bids":[{rows(bids)}],'
        f'"asks":[{rows(asks)}],"checksum":{checksum},'
        f'"timestamp":"2023-10-06T17:35:55.440295Z"}}]}}'
    ).encode()


def test_kraken_documented_snapshot_checksum_and_updates():
    ad = KrakenAdapter()
    ad.start(["BTC/USD"])
    subs = [msgspec.json.decode(m) for m in ad.on_open()]
    assert subs[0] == {"method": "subscribe",
                       "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}}  # fmt: skip
    [s] = ad.on_message(kraken_book("snapshot", KRAKEN_BIDS, KRAKEN_ASKS, KRAKEN_DOC_CHECKSUM), 1)
    assert isinstance(s, BookSnapshot) and ad.counters.checksum_failures == 0
    book = ad.books["BTC/USD"]
    assert book.raw_bids(1) == [("45283.5", "0.10000000")]  # exact wire text kept
    # A new best bid pushes the 10th bid out of depth 10: the book is truncated.
    new_bids = [("45284.0", "1.00000000"), *KRAKEN_BIDS[:9]]
    good = kraken_checksum(new_bids, KRAKEN_ASKS)
    [d] = ad.on_message(kraken_book("update", [("45284.0", "1.00000000")], [], good), 2)
    assert isinstance(d, BookDelta) and book.depth == (10, 10)
    [r] = ad.on_message(kraken_book("update", [("45284.0", "0.50000000")], [], good), 3)
    assert isinstance(r, Resync) and ad.counters.checksum_failures == 1
    assert [msgspec.json.decode(m)["method"] for m in ad.take_outgoing()] == [
        "unsubscribe", "subscribe"]  # fmt: skip
    trade = {"channel": "trade", "type": "update", "data": [{"symbol": "BTC/USD", "side": "sell",
             "price": 45283.4, "qty": 0.0005, "ord_type": "market", "trade_id": 1,
             "timestamp": "2023-10-06T17:35:55.440295Z"}]}  # fmt: skip
    [t] = ad.on_message(enc(trade), 4)
    assert (t.side, t.price, t.size, t.exch_ns) == ("sell", 45283.4, 0.0005, 1696613755440295000)
    assert ad.on_message(b'{"channel":"heartbeat"}', 5) == []
    assert ad.counters.drops == 0


def test_kraken_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        KrakenAdapter(depth=7)


# -- malformed input: counted, never raised ---------------------------------------------

VALID = {
    BinanceAdapter: (["BNBBTC"], binance_depth(1, 2, [("0.1", "1")])),
    CoinbaseAdapter: (["BTC-USD"], cb_msg(0, events=[cb_l2("snapshot", ("bid", "1", "1"))])),
    BybitAdapter: (["BTCUSDT"], bybit_book("snapshot", 1, [("1", "1")], [("2", "1")])),
    OkxAdapter: (["BTC-USDT"], okx_book("snapshot", [("1", "1")], [("2", "1")], 1, -1, 0)),
    KrakenAdapter: (["BTC/USD"], kraken_book("snapshot", [("1.0", "1.0")], [("2.0", "1.0")],
                                             kraken_checksum([("1.0", "1.0")], [("2.0", "1.0")]))),
}  # fmt: skip


def mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in cuts:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


@pytest.mark.parametrize("cls", list(VALID), ids=lambda c: c.venue)
@settings(max_examples=150, deadline=None)
@given(
    noise=st.lists(st.one_of(st.binary(max_size=200), st.text(max_size=100)), max_size=5),
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    truncate=st.integers(0, 400),
)
def test_malformed_messages_are_counted_not_raised(cls, noise, cuts, truncate):
    symbols, valid = VALID[cls]
    ad = cls()
    ad.start(symbols)
    ad.on_open()
    messages = [*noise, mutate(valid, cuts), valid[:truncate], valid]
    for i, message in enumerate(messages):
        events = ad.on_message(message, i)
        assert isinstance(events, list)
    ad.take_outgoing()
    assert ad.counters.messages == len(messages)
    for book in ad.books.values():
        assert not book.crossed()
