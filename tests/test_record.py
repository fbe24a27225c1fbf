"""Record a feed with its receive times, replay it through the same protocol classes."""

import asyncio
import struct
import time

import pytest
from conftest import run
from test_itch_feed_handler import ONE_PERCENT, new_handler, publish_to, reference_snapshot

from aiolowlat import record
from aiolowlat.sim import ItchFeed


def test_messages_and_datagrams_come_back_as_recorded(tmp_path):
    path = tmp_path / "feed.alrec"
    with record.Recorder(path) as rec:
        rec.message("binance", '{"e":"trade"}', rx_ns=10)
        rec.datagram("A", b"\x00\x01", ("239.1.1.1", 30001), rx_ns=20)
        rec.message("okx", b"\x89binary", rx_ns=30)
        rec.datagram("B", b"", None, rx_ns=40)
    assert list(record.read(path)) == [
        record.Record(record.TEXT, "binance", 10, '{"e":"trade"}'),
        record.Record(record.DATAGRAM, "A", 20, b"\x00\x01", ("239.1.1.1", 30001)),
        record.Record(record.BINARY, "okx", 30, b"\x89binary"),
        record.Record(record.DATAGRAM, "B", 40, b"", None),
    ]


def test_a_cut_or_foreign_file_is_a_typed_error(tmp_path):
    path = tmp_path / "feed.alrec"
    with record.Recorder(path) as rec:
        rec.message("v", "x" * 100, rx_ns=1)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 101):  # inside the payload, inside the header
        path.write_bytes(data[:cut])
        with pytest.raises(record.RecordingError, match="cut short"):
            list(record.read(path))
    path.write_bytes(b"GARBAGE!" + data[8:])
    with pytest.raises(record.RecordingError, match="not an aiolowlat recording"):
        list(record.read(path))
    path.write_bytes(record.MAGIC + struct.pack("<BBqI", 2, 7, 0, 0))  # channel never named
    with pytest.raises(record.RecordingError, match="byte 8 has an unknown channel"):
        list(record.read(path))
    named = record.MAGIC + struct.pack("<BBqI", 0, 0, 0, 1) + b"A"  # channel 0 is "A"
    for payload in (b"\x01", b"\x05\x00x:y", b"\x03\x00a:b"):  # cut, no port, bad port
        path.write_bytes(named + struct.pack("<BBqI", 1, 0, 0, len(payload)) + payload)
        with pytest.raises(record.RecordingError, match="byte 23 has a bad sender address"):
            list(record.read(path))


@pytest.mark.parametrize("loop", ["aiolowlat"], indirect=True)
def test_a_recorded_itch_feed_replays_into_the_same_books(loop, tmp_path):
    path = tmp_path / "itch.alrec"
    feed = ItchFeed(seed=25, events=2000, heartbeat_every=20)
    live = new_handler(feed)
    with record.Recorder(path) as rec:
        # the handler's line protocols, each wrapped by the recorder
        real_protocol = live.protocol
        live.protocol = lambda line: rec.wrap(line, real_protocol(line))
        run(loop, publish_to(live, feed, "uring", impairment=ONE_PERCENT, serve_requests=False))
        recorded = rec.records
    assert recorded > len(feed.packets)  # both lines, with their duplicates

    replayed = new_handler(feed)

    async def main():
        count = await record.replay(path, {"A": replayed.protocol("A"),
                                           "B": replayed.protocol("B")})
        await replayed.wait_end()
        replayed.close()
        return count

    assert run(loop, main()) == recorded
    # Exactly the live handler's result: same deliveries, same gaps, same book.
    assert replayed.sequencer.delivered == live.sequencer.delivered
    assert replayed.gaps == live.gaps
    assert replayed.builder.snapshot() == live.builder.snapshot()
    if not live.gaps:
        assert live.builder.snapshot() == reference_snapshot(feed.messages)


def test_replay_keeps_the_recorded_pace_or_runs_flat_out(tmp_path):
    path = tmp_path / "paced.alrec"
    with record.Recorder(path) as rec:
        for i in range(5):  # 50 ms apart: 200 ms from first to last
            rec.message("v", f"m{i}", rx_ns=1_000_000_000 + i * 50_000_000)
    got = []

    async def timed(speed):
        got.clear()
        started = time.monotonic()
        await record.replay(path, {}, speed=speed, on_message=got.append)
        return time.monotonic() - started

    lp = asyncio.new_event_loop()
    try:
        assert lp.run_until_complete(asyncio.wait_for(timed(1.0), 5)) >= 0.19
        assert [r.data for r in got] == [f"m{i}" for i in range(5)]
        assert lp.run_until_complete(asyncio.wait_for(timed(None), 5)) < 0.19
        assert len(got) == 5
    finally:
        lp.close()


@pytest.mark.parametrize("loop", ["aiolowlat"], indirect=True)
@pytest.mark.parametrize("venue, symbol", [("binance", "BTCUSDT"), ("kraken", "BTC/USD"),
                                           ("okx", "BTC-USDT")])
def test_a_recorded_venue_feed_replays_into_the_same_book(loop, tmp_path, venue, symbol):
    from aiolowlat.sim import WsExchange
    from aiolowlat.venues import ADAPTERS, run_feed

    path = tmp_path / f"{venue}.alrec"

    async def main():
        sim = await WsExchange(seed=3, rate=50).start()
        live = ADAPTERS[venue](simulator=sim.url)
        with record.Recorder(path) as rec:
            record.tap_adapter(rec, live)
            feed = asyncio.ensure_future(run_feed(live, [symbol], lambda _: None,
                                                  ssl=sim.client_ssl_context()))
            for _ in range(100):  # bounded: until the book is synced and has moved a while
                await asyncio.sleep(0.02)
                if live.counters.messages > 40 and live.books[symbol].synced:
                    break
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
        await sim.stop()
        return live

    live = run(loop, main(), timeout=30)
    replayed = ADAPTERS[venue](simulator="wss://127.0.0.1:1/")
    assert record.replay_adapter(path, replayed, [symbol]) > 0
    book, again = live.books[symbol], replayed.books[symbol]
    assert again.synced and again.bids() == book.bids() and again.asks() == book.asks()
    assert replayed.counters.messages == live.counters.messages
