"""The demo: a strategy on the embedded exchange simulators, on the io_uring loop.

Market data in over WebSocket/TLS from five venues (Binance, Coinbase, Bybit, OKX,
Kraken: the embedded simulator speaking each venue's format), validated books per
venue, a composite mid across them; orders out over FIX 4.4 to the simulated
exchange: the strategy keeps one bid a little under the composite mid and amends it
as the mid moves (a cancel/replace), and prints every second what it sees and does:
each venue's best bid/ask, message rate and receive latency, its order's state and
fills, and the tick-to-order time (venue message received -> order written).

    python examples/demo.py --seconds 10          # ./dev.sh demo runs this
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import time

from cross_venue_spread import SYMBOLS, VenueStats, report

import aiolowlat
from aiolowlat.fix import (
    FixInitiator,
    NewOrderSingle,
    OrderCancelReplaceRequest,
    SessionConfig,
    SessionSettings,
)
from aiolowlat.metrics import Histogram
from aiolowlat.sim.fix_exchange import FixExchange
from aiolowlat.sim.ws_exchange import WsExchange
from aiolowlat.venues import ADAPTERS, run_feed

FIX_SYMBOL = "BTC-USD"
EDGE = 5.0  # how far under the composite mid the strategy bids
STEP = 2.0  # amend only when the wanted price moved this much


class Quoter:
    """Keeps one bid EDGE under the composite mid of the venues' books."""

    def __init__(self, adapters, session) -> None:
        self.adapters, self.session = adapters, session
        self.ids = itertools.count(1)
        self.working: str | None = None  # ClOrdID of the live order
        self.price = 0.0
        self.sent = 0
        self.tick_to_order = Histogram()

    def composite_mid(self) -> float | None:
        mids = []
        for venue, adapter in self.adapters.items():
            book = adapter.books.get(SYMBOLS[venue])
            if book is not None and book.synced and book.best_bid() and book.best_ask():
                mids.append((book.best_bid()[0] + book.best_ask()[0]) / 2)
        return statistics.median(mids) if mids else None

    async def on_tick(self, rx_ns: int) -> None:
        mid = self.composite_mid()
        if mid is None or not self.session.is_logged_on:
            return
        want = round(mid - EDGE, 2)
        order = self.session.orders.get(self.working) if self.working else None
        if order is not None and order.state.is_final:
            self.working = None  # filled or canceled: quote afresh
        if self.working is not None and abs(want - self.price) < STEP:
            return
        cl_ord_id = f"Q{next(self.ids)}"
        if self.working is None:
            msg = NewOrderSingle(cl_ord_id=cl_ord_id, symbol=FIX_SYMBOL, side="1",
                                 order_qty=1, price=want)
        else:
            msg = OrderCancelReplaceRequest(orig_cl_ord_id=self.working, cl_ord_id=cl_ord_id,
                                            symbol=FIX_SYMBOL, side="1", order_qty=1,
                                            price=want)
        await self.session.send(msg)
        self.tick_to_order.record(max(1, time.time_ns() - rx_ns))
        self.working, self.price = cl_ord_id, want
        self.sent += 1

    def report(self) -> None:
        orders = self.session.orders.orders()
        filled = sum(o.cum_qty for o in orders)
        order = self.session.orders.get(self.working) if self.working else None
        state = order.state.value if order else "-"
        p50, p99 = (self.tick_to_order.percentiles(50, 99) if self.tick_to_order.count
                    else (0, 0))
        print(f"strategy: bid {self.price:.2f} ({state}), {self.sent} orders sent, "
              f"{filled:g} BTC filled; tick-to-order p50 {p50 / 1e3:.0f} us "
              f"p99 {p99 / 1e3:.0f} us\n", flush=True)


async def main(args: argparse.Namespace) -> None:
    venues = list(SYMBOLS)
    ws_sim = await WsExchange(seed=args.seed, rate=args.rate).start()
    # The simulated exchange rests asks just under where the strategy bids: some fills.
    fix_sim = await FixExchange("EXCH", seed={FIX_SYMBOL: 59_988.0}, levels=3,
                                level_qty=1).start("127.0.0.1", 0)
    host, port = fix_sim.address
    initiator = FixInitiator(SessionSettings(
        SessionConfig("DEMO", "EXCH", begin_string="FIX.4.4", heartbeat_interval=30),
        host=host, port=port, reconnect_interval=0.5))
    session = await initiator.start()
    adapters = {v: ADAPTERS[v](simulator=ws_sim.url) for v in venues}
    stats = {v: VenueStats() for v in venues}
    quoter = Quoter(adapters, session)
    ticks: set[asyncio.Task] = set()

    def on_event(venue):
        def handle(event):
            stats[venue].on_event(event)
            if len(ticks) < 4:  # a strategy decision per event, never a backlog of them
                task = asyncio.ensure_future(quoter.on_tick(event.rx_ns))
                ticks.add(task)
                task.add_done_callback(ticks.discard)
        return handle

    feeds = [asyncio.ensure_future(run_feed(adapters[v], [SYMBOLS[v]], on_event(v),
                                            ssl=ws_sim.client_ssl_context()))
             for v in venues]
    print(f"loop={type(asyncio.get_running_loop()).__module__}; WebSocket/TLS simulator "
          f"{ws_sim.url}; FIX simulator {host}:{port}", flush=True)
    started = time.monotonic()
    deadline = started + args.seconds if args.seconds else float("inf")
    try:
        await session.wait_logged_on(10)
        last = time.monotonic()
        while (now := time.monotonic()) < deadline:
            await asyncio.sleep(min(1.0, max(0.0, deadline - now)))
            now = time.monotonic()
            print(f"[{now - started:5.1f} s]")
            report(adapters, stats, now - last)
            quoter.report()
            last = now
    finally:
        for task in [*feeds, *ticks]:
            task.cancel()
        await asyncio.gather(*feeds, *ticks, return_exceptions=True)
        await initiator.stop()
        await fix_sim.stop()
        await ws_sim.stop()
    print(f"done in {time.monotonic() - started:.1f} s: {quoter.sent} orders sent", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    parser.add_argument("--rate", type=float, default=20.0, help="simulator steps per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--busy-poll", action="store_true", help="spin the loop on a core")
    cli = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        aiolowlat.run(main(cli), busy_poll=cli.busy_poll)
