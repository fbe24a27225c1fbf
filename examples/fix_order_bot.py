"""FIX order bot: sends, amends and cancels orders and prints the execution reports.

By default it starts the simulator exchange in-process (seeded books around 100.00);
``--host/--port`` point it at a real acceptor instead.

    python examples/fix_order_bot.py --seconds 5
    python examples/fix_order_bot.py --host 127.0.0.1 --port 9876 --sender BOT --target EXCH
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import time

from aiolowlat.fix import (
    ExecutionReport,
    FixInitiator,
    NewOrderSingle,
    OrderCancelReject,
    OrderCancelReplaceRequest,
    OrderCancelRequest,
    SessionConfig,
    SessionSettings,
)
from aiolowlat.sim.fix_exchange import FixExchange

EXEC_TYPES = {"0": "new", "4": "canceled", "5": "replaced", "8": "rejected", "F": "trade",
              "1": "partial", "2": "fill"}


def print_report(session, msg) -> None:
    if isinstance(msg, ExecutionReport):
        order = session.orders.get(msg.cl_ord_id or "")
        fill = f" last {msg.last_qty:g}@{msg.last_px:g}" if msg.last_qty else ""
        state = order.state.value if order else "?"
        print(f"ER {EXEC_TYPES.get(msg.exec_type, msg.exec_type):8} {msg.cl_ord_id:8} "
              f"cum {msg.cum_qty:g} leaves {msg.leaves_qty:g} avg {msg.avg_px:.4f}{fill}"
              f"  -> {state}", flush=True)
    elif isinstance(msg, OrderCancelReject):
        print(f"cancel reject {msg.cl_ord_id}: {msg.text}", flush=True)
    else:
        print(f"other: {msg}", flush=True)


async def trade(session, symbol: str, stop: asyncio.Event, pause: float) -> int:
    """Each round: a passive bid, an amend that crosses the spread, a cancel of what is left."""
    ids = itertools.count(1)
    rounds = 0
    while not stop.is_set():
        n = next(ids)
        await session.send(NewOrderSingle(cl_ord_id=f"N{n}", symbol=symbol, side="1",
                                          order_qty=300, price=99.50))
        await asyncio.sleep(pause)
        await session.send(OrderCancelReplaceRequest(
            orig_cl_ord_id=f"N{n}", cl_ord_id=f"R{n}", symbol=symbol, side="1",
            order_qty=300, price=100.02))
        await asyncio.sleep(pause)
        order = session.orders.get(f"R{n}")
        if order is not None and not order.state.is_final:
            await session.send(OrderCancelRequest(orig_cl_ord_id=f"R{n}", cl_ord_id=f"C{n}",
                                                  symbol=symbol, side="1", order_qty=300))
        rounds += 1
        try:
            await asyncio.wait_for(stop.wait(), pause)
        except TimeoutError:
            pass
    return rounds


async def main(args) -> None:
    exchange = None
    host, port = args.host, args.port
    if host is None:
        exchange = await FixExchange(args.target, seed={args.symbol: 100.0}, levels=3,
                                     level_qty=100).start("127.0.0.1", 0)
        host, port = exchange.address
        print(f"simulator exchange on {host}:{port}", flush=True)
    settings = SessionSettings(SessionConfig(args.sender, args.target, begin_string=args.begin,
                                             heartbeat_interval=30),
                               host=host, port=port, reconnect_interval=0.5)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    initiator = FixInitiator(settings, on_message=print_report)
    session = await initiator.start()
    started = time.monotonic()
    try:
        await session.wait_logged_on(10)
        print(f"logged on as {args.sender} -> {args.target} ({args.begin})", flush=True)
        task = loop.create_task(trade(session, args.symbol, stop, args.pause))
        try:
            await asyncio.wait_for(stop.wait(), args.seconds)
        except TimeoutError:
            pass
        stop.set()
        rounds = await task
        await asyncio.sleep(args.pause)  # the last reports
    finally:
        await initiator.stop()
        if exchange is not None:
            await exchange.stop()
    orders = session.orders.orders()
    filled = sum(o.cum_qty for o in orders)
    print(f"{rounds} rounds in {time.monotonic() - started:.1f}s: {len(orders)} orders, "
          f"{filled:g} filled, {session.core.next_sender_seq - 1} messages sent", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="acceptor host (default: simulator)")
    parser.add_argument("--port", type=int, default=9876)
    parser.add_argument("--sender", default="BOT")
    parser.add_argument("--target", default="EXCH")
    parser.add_argument("--begin", default="FIX.4.4", choices=("FIX.4.4", "FIX.4.2"))
    parser.add_argument("--symbol", default="AAPL")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between steps")
    parser.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "aiolowlat"),
                        default="aiolowlat")
    args = parser.parse_args()
    if args.loop == "aiolowlat":
        import aiolowlat

        aiolowlat.run(main(args))
    else:
        factory = asyncio.new_event_loop
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main(args))
