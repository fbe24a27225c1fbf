"""Cross-venue spread: one symbol's books at five venues, side by side, live.

Subscribes to Binance, Coinbase, Bybit, OKX and Kraken (the embedded WebSocket/TLS
exchange simulator by default, the real venues with ``--live``), keeps a validated
book per venue, and prints every second each venue's best bid and ask, its message
rate, receive latency percentiles (local receive time minus the venue's event time,
at the venue's timestamp resolution) and feed counters, then the best bid and best
ask across venues and the cross-venue spread between them.

    python examples/cross_venue_spread.py --seconds 10
    python examples/cross_venue_spread.py --live --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import aiolowlat
from aiolowlat.metrics import Histogram
from aiolowlat.sim.ws_exchange import VENUES, WsExchange
from aiolowlat.venues import ADAPTERS, Event, VenueAdapter, run_feed

SYMBOLS = {  # BTC against the dollar, in each venue's spelling
    "binance": "BTCUSDT", "coinbase": "BTC-USD", "bybit": "BTCUSDT", "okx": "BTC-USDT",
    "kraken": "BTC/USD",
}  # fmt: skip


class VenueStats:
    """Message count and receive latency of one venue since the last report."""

    def __init__(self) -> None:
        self.events = 0
        self.latency = Histogram()

    def on_event(self, event: Event) -> None:
        self.events += 1
        exch_ns = getattr(event, "exch_ns", 0)
        if exch_ns > 0:
            self.latency.record(max(1, event.rx_ns - exch_ns))


def report(adapters: dict[str, VenueAdapter], stats: dict[str, VenueStats], dt: float) -> None:
    print(f"{'venue':9} {'bid':>12} {'ask':>12} {'events/s':>9} {'lat p50':>9} {'p99':>9}  "
          "gaps/cksum/resyncs/reconnects")  # fmt: skip
    bids, asks = [], []
    for venue, adapter in adapters.items():
        book = adapter.books.get(SYMBOLS[venue])
        bid = book.best_bid() if book and book.synced else None
        ask = book.best_ask() if book and book.synced else None
        if bid:
            bids.append((bid[0], venue))
        if ask:
            asks.append((ask[0], venue))
        s = stats[venue]
        p50, p99 = s.latency.percentiles(50, 99) if s.latency.count else (0, 0)
        c = adapter.counters
        print(f"{venue:9} {bid[0] if bid else '-':>12} {ask[0] if ask else '-':>12} "
              f"{s.events / dt:>9.0f} {p50 / 1e6:>7.2f}ms {p99 / 1e6:>7.2f}ms  "
              f"{c.gaps}/{c.checksum_failures}/{c.resyncs}/{c.reconnects}")  # fmt: skip
        s.events = 0
        s.latency.reset()
    if bids and asks:
        (bid, bid_venue), (ask, ask_venue) = max(bids), min(asks)
        print(f"best bid {bid} at {bid_venue}, best ask {ask} at {ask_venue}: "
              f"cross-venue spread {ask - bid:+.2f}"
              + (f"  (crossed: buy at {ask_venue}, sell at {bid_venue})" if ask < bid else ""))  # fmt: skip
    print(flush=True)


async def main(args: argparse.Namespace) -> None:
    venues = args.venues.split(",")
    sim = None
    if args.live:
        adapters = {v: ADAPTERS[v]() for v in venues}
        ssl = None
    else:
        sim = await WsExchange(seed=args.seed, rate=args.rate).start()
        adapters = {v: ADAPTERS[v](simulator=sim.url) for v in venues}
        ssl = sim.client_ssl_context()
    stats = {v: VenueStats() for v in venues}
    feeds = [
        asyncio.ensure_future(run_feed(adapters[v], [SYMBOLS[v]], stats[v].on_event, ssl=ssl))
        for v in venues
    ]
    deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
    try:
        last = time.monotonic()
        while (now := time.monotonic()) < deadline:
            await asyncio.sleep(min(1.0, max(0.0, deadline - now)))
            now = time.monotonic()
            report(adapters, stats, now - last)
            last = now
    finally:
        for feed in feeds:
            feed.cancel()
        await asyncio.gather(*feeds, return_exceptions=True)
        if sim is not None:
            await sim.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    parser.add_argument("--live", action="store_true", help="the real venues, not the simulator")
    parser.add_argument("--venues", default=",".join(VENUES), help="comma-separated subset")
    parser.add_argument("--rate", type=float, default=20.0, help="simulator steps per second")
    parser.add_argument("--seed", type=int, default=1)
    with contextlib.suppress(KeyboardInterrupt):
        aiolowlat.run(main(parser.parse_args()))
