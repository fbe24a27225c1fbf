"""The exchange simulator against the venue adapters over real WebSocket/TLS.

Every client here is aiolowlat.ws (the runner's default) with the simulator's
certificate trusted explicitly; each injected fault must end with the client's book
equal to the simulator's own book, and no level of an old connection may survive.
"""

import asyncio
import ssl
import subprocess
import sys
import time

import msgspec
import pytest
import websockets
from conftest import run

import aiolowlat
from aiolowlat.sim.ws_exchange import FAULTS, VENUES, MarketModel, WsExchange
from aiolowlat.venues import ADAPTERS, BookDelta, BookSnapshot, https_get, run_feed, venue_feed
from aiolowlat.venues.feed import HttpError

SYMBOL = {"binance": "BTCUSDT", "coinbase": "BTC-USD", "bybit": "ETHUSDT", "okx": "BTC-USDT",
          "kraken": "BTC/USD"}  # fmt: skip
CHECKSUMMED = ("okx", "kraken")


@pytest.fixture
def al_loop():
    lp = aiolowlat.new_event_loop()
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.close()


async def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def synced(adapter, symbol):
    book = adapter.books.get(symbol)  # the runner creates the books when it starts
    return book is not None and book.synced


def same_book(sim, adapter, symbol):
    book = adapter.books[symbol]
    depth = adapter.depth if adapter.venue == "kraken" else None
    return book.synced and (book.bids(), book.asks()) == sim.book(adapter.venue, symbol, depth)


async def settle(sim, adapter, symbol):
    """Pause the simulator once the book is synced; the client must then converge
    on exactly the simulator's book."""
    await wait_until(lambda: synced(adapter, symbol), what=f"{adapter.venue} synced")
    sim.paused = True
    await wait_until(lambda: same_book(sim, adapter, symbol), what=f"{adapter.venue} book equal")
    sim.paused = False


def start_feed(sim, venue, events=None, **options):
    adapter = ADAPTERS[venue](simulator=sim.url)
    sink = events.append if events is not None else (lambda e: None)
    options.setdefault("stale_after", 5.0)
    task = asyncio.ensure_future(
        run_feed(adapter, [SYMBOL[venue]], sink, ssl=sim.client_ssl_context(), **options)
    )
    return adapter, task


async def stop(*tasks):
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("client", ["aiolowlat", "websockets"])
def test_every_venue_keeps_the_simulators_book(loop, client):
    # The runner takes any connect with websockets' shape; aiolowlat.ws is its default.
    connect = websockets.connect if client == "websockets" else None

    async def main():
        async with WsExchange(seed=7, rate=100) as sim:
            events = {v: [] for v in VENUES}
            feeds = {v: start_feed(sim, v, events[v], connect=connect) for v in VENUES}
            await wait_until(lambda: all(len(e) > 60 for e in events.values()), 10, "traffic")
            for venue, (adapter, _) in feeds.items():
                await settle(sim, adapter, SYMBOL[venue])
            await stop(*(t for _, t in feeds.values()))
        for venue, (adapter, _) in feeds.items():
            kinds = {type(e).__name__ for e in events[venue]}
            assert {"BookSnapshot", "BookDelta", "Trade"} <= kinds, venue
            c = adapter.counters
            assert (c.drops, c.gaps, c.checksum_failures, c.resyncs, c.reconnects) == (0,) * 5, (
                venue, c)  # fmt: skip
            book_events = [e for e in events[venue] if isinstance(e, (BookSnapshot, BookDelta))]
            assert isinstance(book_events[0], BookSnapshot), venue

    run(loop, main(), timeout=30)


CASES = [(v, f) for v in VENUES for f in FAULTS if f != "checksum" or v in CHECKSUMMED]


@pytest.mark.parametrize(("venue", "fault"), CASES)
def test_injected_fault_ends_in_correct_book(al_loop, venue, fault):
    async def main():
        async with WsExchange(seed=11, rate=50) as sim:
            adapter, task = start_feed(sim, venue, stale_after=1.0)
            symbol = SYMBOL[venue]
            await settle(sim, adapter, symbol)
            c = adapter.counters
            assert sim.inject(venue, fault, seconds=2.5) == 1
            if fault == "drop":
                await wait_until(lambda: c.reconnects >= 1, what="reconnect")
            elif fault == "stall":
                await wait_until(lambda: c.stalls >= 1 and c.reconnects >= 1, what="stall")
            elif fault == "checksum" or venue == "kraken":  # Kraken has no sequence numbers
                await wait_until(lambda: c.checksum_failures >= 1, what="checksum failure")
            else:
                await wait_until(lambda: c.gaps >= 1, what="gap")
            assert c.resyncs >= 1
            await settle(sim, adapter, symbol)
            await stop(task)

    run(al_loop, main(), timeout=30)


def test_reconnect_leaves_no_stale_levels(al_loop):
    async def main():
        async with WsExchange(seed=5, rate=50) as sim:
            feeds = {v: start_feed(sim, v) for v in VENUES}
            for venue, (adapter, _) in feeds.items():
                await settle(sim, adapter, SYMBOL[venue])
                # a level the venue never had: it must not survive the reconnect
                adapter.books[SYMBOL[venue]].update([("1.25", "9")], [("999999.5", "9")])
                assert sim.inject(venue, "drop") == 1
            for venue, (adapter, _) in feeds.items():
                await wait_until(lambda a=adapter: a.counters.reconnects == 1, what="reconnect")
                await settle(sim, adapter, SYMBOL[venue])
                book = adapter.books[SYMBOL[venue]]
                assert 1.25 not in dict(book.bids()) and 999999.5 not in dict(book.asks())
            await stop(*(t for _, t in feeds.values()))

    run(al_loop, main(), timeout=30)


def test_venue_feed_iterator_and_server_pings(al_loop):
    # The server pings every 50 ms; the client must answer or be dropped.
    async def main():
        async with WsExchange(seed=2, rate=50, ping_interval=0.05) as sim:
            adapter = ADAPTERS["okx"](simulator=sim.url)
            kinds = []
            started = time.monotonic()
            async for event in venue_feed(adapter, ["BTC-USDT"], ssl=sim.client_ssl_context()):
                kinds.append(type(event))
                if time.monotonic() - started > 1.0 and len(kinds) > 40:
                    break
            assert kinds[0] is BookSnapshot and BookDelta in kinds
            assert adapter.counters.reconnects == 0 and adapter.counters.resyncs == 0

    run(al_loop, main(), timeout=15)


def test_binance_rest_snapshot_over_https(al_loop):
    async def main():
        async with WsExchange(seed=3) as sim:
            base = "https" + sim.url[3:]
            body = await https_get(f"{base}/binance/api/v3/depth?symbol=BTCUSDT&limit=5",
                                   ssl=sim.client_ssl_context())  # fmt: skip
            snap = msgspec.json.decode(body)
            assert len(snap["bids"]) == 5 and len(snap["asks"]) == 5
            assert snap["lastUpdateId"] == sim.model("binance", "BTCUSDT").update_id
            assert float(snap["bids"][0][0]) < float(snap["asks"][0][0])
            with pytest.raises(HttpError, match="404"):
                await https_get(f"{base}/nowhere", ssl=sim.client_ssl_context())
            with pytest.raises(HttpError, match="400"):
                await https_get(f"{base}/binance/api/v3/depth?symbol=B%20D",
                                ssl=sim.client_ssl_context())  # fmt: skip
            # Without the explicit trust the certificate is refused.
            with pytest.raises(ssl.SSLCertVerificationError):
                await https_get(f"{base}/binance/api/v3/depth?symbol=BTCUSDT")

    run(al_loop, main(), timeout=15)


def test_simulator_answers_bad_requests(al_loop):
    async def main():
        async with WsExchange(seed=3) as sim:
            ctx = sim.client_ssl_context()
            async with websockets.connect(sim.url + "/okx", ssl=ctx) as ws:
                await ws.send('{"op":"subscribe","args":[{"channel":"books","instId":"X-Y"}]}')
                assert msgspec.json.decode(await ws.recv())["event"] == "subscribe"
                assert msgspec.json.decode(await ws.recv())["action"] == "snapshot"
                await ws.send("ping")
                while (msg := await ws.recv()) != "pong":
                    pass
                await ws.send('{"op":"dance"}')
                while "error" not in (msg := await ws.recv()):
                    pass
                assert msgspec.json.decode(msg)["code"] == "60012"
            async with websockets.connect(sim.url + "/kraken", ssl=ctx) as ws:
                await ws.send("{not json")
                with pytest.raises(websockets.ConnectionClosed) as info:
                    while True:
                        await ws.recv()
                assert info.value.rcvd.code == 1003
            with pytest.raises(ValueError, match="checksum"):
                sim.inject("binance", "checksum")
            with pytest.raises(ValueError, match="unknown"):
                sim.inject("nasdaq", "drop")

    run(al_loop, main(), timeout=15)


def test_market_model_deterministic_and_valid():
    def run_model(seed):
        import random

        m = MarketModel(random.Random(seed), 600_000, depth=20)
        steps = [m.step(i) for i in range(2_000)]
        for _ in range(1):
            assert max(m.bids) < min(m.asks)
            assert len(m.bids) <= 20 and len(m.asks) <= 20
        return m, steps

    m1, s1 = run_model(4)
    m2, s2 = run_model(4)
    _, s3 = run_model(5)
    assert s1 == s2 and s1 != s3
    assert all(s.last_update_id - s.first_update_id + 1 == len(s.bids) + len(s.asks) for s in s1)
    assert [s.step_id for s in s1] == list(range(1, 2_001))
    assert m1.top_str("b", 1)[0][0].count(".") == 1


def test_cli_runs_for_seconds():
    proc = subprocess.run(
        [sys.executable, "-m", "aiolowlat.sim.ws_exchange", "--seconds", "1", "--port", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("exchange simulator on wss://127.0.0.1:")
    assert msgspec.json.decode(lines[-1])["connections"] == 0


@pytest.mark.parametrize("example", ["binance_trades.py", "cross_venue_spread.py"])
def test_examples_run_on_the_simulator_and_stop(example):
    proc = subprocess.run(
        [sys.executable, f"examples/{example}", "--seconds", "2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if example == "binance_trades.py":
        assert "BTCUSDT" in proc.stdout and "drops=0" in proc.stdout
    else:
        assert "cross-venue spread" in proc.stdout
        for venue in VENUES:
            assert f"\n{venue} " in proc.stdout
