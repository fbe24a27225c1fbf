"""Top of book and VWAP per symbol from an ITCH 5.0 feed on MoldUDP64 A/B lines.

By default an embedded simulator (aiolowlat.sim.itch_publisher) publishes both lines,
with 1 % loss and reordering on each, to 127.0.0.1 unicast ports, and answers
retransmission requests. ``--multicast`` uses groups 239.1.1.1/239.1.1.2 on
``--interface`` instead (multicast on loopback needs ``ip link set lo multicast on``,
so run that in a network namespace of your own, not on the host). ``--feed
A_HOST:PORT,B_HOST:PORT,REQUEST_HOST:PORT`` reads an external publisher.

    python examples/itch_multicast_vwap.py --seconds 10
    python examples/itch_multicast_vwap.py --config examples/strategy.toml --seconds 10
    python examples/itch_multicast_vwap.py --config examples/strategy.toml \
        --set feeds.itch.transport=kernel --set loop=uvloop --seconds 10
    python -m aiolowlat.sim.itch_publisher --group-a 127.0.0.1:30001 \
        --group-b 127.0.0.1:30002 --request-port 30003 &
    python examples/itch_multicast_vwap.py --feed 127.0.0.1:30001,127.0.0.1:30002,127.0.0.1:30003
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import time

import aiolowlat
import aiolowlat.config
from aiolowlat.protocols.itch import PRICE_SCALE
from aiolowlat.protocols.itch_feed import ItchFeedHandler
from aiolowlat.protocols.sequencer import Sequencer
from aiolowlat.sim import ItchFeed, LineImpairment
from aiolowlat.sim.itch_publisher import ItchPublisher
from aiolowlat.transports import open_datagram_endpoint

GROUPS = (("239.1.1.1", 30001), ("239.1.1.2", 30002))
SHOWN = ("delivered", "gaps", "requested", "retransmitted", "unrecoverable", "duplicates",
         "reordered", "malformed", "A_losses", "B_losses")  # fmt: skip


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host or "127.0.0.1", int(port)


def _is_multicast(host: str) -> bool:
    return ipaddress.ip_address(host).is_multicast


async def open_line(protocol_factory, local_addr, *, transport="kernel", interface=None):
    """One line's endpoint, joined to ``local_addr``'s group when it is multicast."""
    groups = (local_addr[0],) if _is_multicast(local_addr[0]) else ()
    return await open_datagram_endpoint(
        protocol_factory, transport=transport, local_addr=local_addr, groups=groups,
        interface=interface, rcvbuf=4 << 20, timestamps=True,
    )  # fmt: skip


def _price(value) -> str:
    return "-" if value is None else f"{value / PRICE_SCALE:.4f}"


def report(handler: ItchFeedHandler, elapsed: float) -> None:
    counters = handler.counters()
    print(f"[{elapsed:5.1f} s] state={handler.state.value} "
          + " ".join(f"{name}={counters[name]:,}" for name in SHOWN), flush=True)  # fmt: skip
    for symbol, book in sorted(handler.books.items()):
        top = book.top()
        print(f"  {symbol:<6} bid {top.bid_size:>6,} @ {_price(top.bid_price):>10}"
              f"  ask {top.ask_size:>6,} @ {_price(top.ask_price):>10}"
              f"  vwap {_price(book.vwap.value()):>10}  volume {book.traded_volume:,}",
              flush=True)  # fmt: skip


async def demo(args) -> None:
    started = time.monotonic()
    deadline = None if args.seconds is None else started + args.seconds
    external = args.feed is not None
    # Joining an external feed live; the embedded one is heard from its first message.
    handler = ItchFeedHandler(Sequencer(first_sequence=None if external else 1))
    publisher = publishing = None
    try:
        if args.settings is not None:  # the loop, the lines and their transport from the file
            feed = args.settings.feeds["itch"]
            lines = feed.line_addresses()
            for name in lines:
                await open_datagram_endpoint(lambda name=name: handler.protocol(name),
                                             **feed.endpoint_options(name))
            args.transport = feed.transport
        elif external:
            a, b, request = (_address(part) for part in args.feed.split(","))
            lines = {"A": a, "B": b}
        else:
            lines = dict(zip("AB", GROUPS)) if args.multicast else {
                "A": ("127.0.0.1", 0), "B": ("127.0.0.1", 0)}  # fmt: skip
        for name, addr in lines.items() if args.settings is None else ():
            transport, _ = await open_line(
                lambda name=name: handler.protocol(name), addr,
                transport=args.transport, interface=args.interface,
            )  # fmt: skip
            lines[name] = transport.get_extra_info("sockname")[:2]
        if not external:
            publisher = await start_publisher(args, lines, deadline)
            publishing = asyncio.ensure_future(publisher.publish())
            request = ("127.0.0.1", publisher.request_address[1])
        await handler.connect_requests(request)
        print(f"loop={type(asyncio.get_running_loop()).__module__} transport={args.transport} "
              f"lines={lines} requests={request}", flush=True)  # fmt: skip
        while deadline is None or time.monotonic() < deadline:  # a report a second
            left = 1.0 if deadline is None else deadline - time.monotonic()
            await asyncio.sleep(max(0.0, min(1.0, left)))
            report(handler, time.monotonic() - started)
    finally:
        handler.close()
        if publishing is not None:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
        if publisher is not None:
            publisher.close()
        await asyncio.sleep(0)
        print(f"done: {handler.counters()['delivered']:,} messages in "
              f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip


async def start_publisher(args, lines, deadline) -> ItchPublisher:
    """The embedded simulator, started: one session sized to the run."""
    span = 600.0 if deadline is None else max(1.0, deadline - time.monotonic())
    feed = ItchFeed(seed=args.seed, events=args.events or int(min(args.rate * span, 200_000)))
    impairment = LineImpairment(loss=args.loss, reorder=args.reorder, duplicate=args.loss)
    publisher = ItchPublisher(
        feed, lines, rate=args.rate, impairments={"A": impairment, "B": impairment},
        request_addr=("0.0.0.0", 0), interface=args.interface,
    )  # fmt: skip
    await publisher.start()
    return publisher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after N seconds (default: run until Ctrl-C)",
    )
    parser.add_argument("--loop", choices=["aiolowlat", "uvloop", "asyncio"], default="aiolowlat")
    parser.add_argument("--transport", choices=["kernel", "uring"], default=None,
                        help="default: uring on the aiolowlat loop, kernel on the others")
    parser.add_argument(
        "--multicast",
        action="store_true",
        help="embedded simulator on groups 239.1.1.1:30001 / 239.1.1.2:30002",
    )
    parser.add_argument("--interface", default=None, help="multicast interface, e.g. lo")
    parser.add_argument(
        "--feed", default=None, help="external publisher: A_HOST:PORT,B_HOST:PORT,REQUEST_HOST:PORT"
    )
    parser.add_argument("--rate", type=float, default=20_000, help="simulator messages/s")
    parser.add_argument("--events", type=int, default=0, help="simulator session size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.01, help="simulator loss per line")
    parser.add_argument("--reorder", type=float, default=0.01)
    # --config FILE (loop, tuning, the [feeds.itch] lines and transport: see
    # examples/strategy.toml) and --set key=value overrides
    aiolowlat.config.add_arguments(parser)
    args = parser.parse_args()
    args.settings = None
    if args.config is not None:
        try:
            args.settings = aiolowlat.config.from_args(args)
        except aiolowlat.config.ConfigError as exc:
            parser.error(str(exc))
        if "itch" not in args.settings.feeds:
            parser.error(f"{args.config} has no [feeds.itch] section")
        with contextlib.suppress(KeyboardInterrupt):
            aiolowlat.run(demo(args), config=args.settings)
        return
    if args.transport is None:
        args.transport = "uring" if args.loop == "aiolowlat" else "kernel"
    if args.transport == "uring" and args.loop != "aiolowlat":
        parser.error("--transport uring needs --loop aiolowlat")
    coro = demo(args)
    with contextlib.suppress(KeyboardInterrupt):
        if args.loop == "aiolowlat":
            aiolowlat.run(coro)
        elif args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)


if __name__ == "__main__":
    main()
