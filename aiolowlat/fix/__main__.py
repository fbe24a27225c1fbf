"""Run FIX sessions from a QuickFIX-style settings file.

    python -m aiolowlat.fix initiator --config client.cfg [--seconds N] [--orders-per-second R]
    python -m aiolowlat.fix acceptor --config server.cfg [--seconds N]

Received application messages are printed, one JSON object a line. ``--orders-per-second``
makes an initiator send limit orders (demo traffic). Without ``--seconds`` it runs until
Ctrl-C; either way it logs out cleanly and exits 0. Sessions with QuickFIX's SSL keys
(SocketUseSSL=Y, ServerCertificateFile, ...) run over TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import sys
import time

import msgspec

from . import (
    FixAcceptor,
    FixInitiator,
    FixStruct,
    NewOrderSingle,
    SessionNotReady,
    SettingsError,
    StoreError,
    load_settings,
)


def _print_message(session, msg) -> None:
    if isinstance(msg, FixStruct):
        record = {"session": "-".join(session.key), "type": type(msg).__name__,
                  **msgspec.structs.asdict(msg)}
    else:
        record = {"session": "-".join(session.key), "type": msg.msg_type.decode(),
                  "fields": {str(t): v.decode("latin-1") for t, v in msg.fields}}
    print(msgspec.json.encode(record).decode(), flush=True)


async def _send_orders(session, rate: float, stop: asyncio.Event) -> None:
    ids = itertools.count(1)
    interval = 1.0 / rate
    run_id = int(time.time() * 1000) % 10_000_000
    while not stop.is_set():
        try:
            await session.wait_logged_on(1.0)
        except TimeoutError:
            continue
        try:
            session.send_nowait(NewOrderSingle(cl_ord_id=f"{run_id}-{next(ids)}", symbol="AAPL",
                                               side="1", order_qty=1, price=1.0))
        except (SessionNotReady, ConnectionError):
            continue
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


async def _run(args) -> int:
    try:
        settings = [s for s in load_settings(args.config) if s.connection_type == args.role]
    except (OSError, SettingsError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    if not settings:
        print(f"error: {args.config} has no {args.role} [SESSION]", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    senders = []
    try:
        if args.role == "initiator":
            runners = [FixInitiator(s, on_message=_print_message) for s in settings]
            for r in runners:
                session = await r.start()
                if args.orders_per_second:
                    senders.append(loop.create_task(
                        _send_orders(session, args.orders_per_second, stop)))
        else:
            runners = [await FixAcceptor(settings, on_message=_print_message).start()]
    except (OSError, StoreError, ValueError) as exc:  # ValueError: TLS differing on one port
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        await asyncio.wait_for(stop.wait(), args.seconds)
    except TimeoutError:
        pass
    stop.set()
    await asyncio.gather(*senders)
    for r in runners:
        await r.stop()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiolowlat.fix",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("initiator", "acceptor"))
    parser.add_argument("--config", required=True, help="QuickFIX-style settings file")
    parser.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--orders-per-second", type=float, default=0.0,
                        help="initiator: send this many demo limit orders per second")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "aiolowlat"), default="asyncio")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    elif args.loop == "aiolowlat":
        import aiolowlat

        factory = aiolowlat.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
