"""Print Binance spot trades as they arrive.

By default the trades come from the embedded exchange simulator over WebSocket/TLS
(aiolowlat.sim.ws_exchange, its certificate trusted explicitly); ``--live`` connects
to wss://stream.binance.com:9443 instead.

    python examples/binance_trades.py --seconds 10
    python examples/binance_trades.py --live --symbol ETHUSDT --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import aiolowlat
from aiolowlat.sim.ws_exchange import WsExchange
from aiolowlat.venues import BinanceAdapter, Trade, venue_feed


async def print_trades(adapter: BinanceAdapter, symbol: str, ssl) -> None:
    async for event in venue_feed(adapter, [symbol], ssl=ssl):
        if isinstance(event, Trade):
            age_ms = (event.rx_ns - event.exch_ns) / 1e6
            print(f"{event.symbol} {event.side:4} {event.size:>14.8f} @ {event.price:<14.8f} "
                  f"id={event.trade_id} age={age_ms:.1f}ms", flush=True)  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    sim = None
    if args.live:
        adapter, ssl = BinanceAdapter(channels=("trade",)), None
    else:
        sim = await WsExchange(seed=args.seed, rate=args.rate).start()
        adapter = BinanceAdapter(simulator=sim.url, channels=("trade",))
        ssl = sim.client_ssl_context()
    started = time.monotonic()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(print_trades(adapter, args.symbol, ssl), args.seconds or None)
    finally:
        if sim is not None:
            await sim.stop()
        elapsed = time.monotonic() - started
        print(f"{adapter.counters.messages} messages in {elapsed:.1f}s; {adapter.counters}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    parser.add_argument("--live", action="store_true", help="the real Binance, not the simulator")
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--rate", type=float, default=20.0, help="simulator steps per second")
    parser.add_argument("--seed", type=int, default=1)
    with contextlib.suppress(KeyboardInterrupt):
        aiolowlat.run(main(parser.parse_args()))
