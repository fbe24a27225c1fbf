"""The ``aiolowlat`` command: demo, sim, feed, bench, doctor, record, replay.

Every command that runs a feed or a session takes ``--seconds N`` and stops by itself
after N seconds with exit code 0; without it, it runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import pathlib
import subprocess
import sys
import time

from . import record as _record

# Commands that are another module's command line, run with the arguments that follow.
_DELEGATED = {
    "doctor": ("aiolowlat.doctor", "check this host for what the config needs, with fixes"),
}
SIMULATORS = {
    "itch": "aiolowlat.sim.itch_publisher",
    "ws": "aiolowlat.sim.ws_exchange",
    "fix": "aiolowlat.sim.fix_exchange",
}
REPO = pathlib.Path(__file__).resolve().parents[1]
_DEFAULT_SYMBOLS = {"binance": "BTCUSDT", "coinbase": "BTC-USD", "bybit": "BTCUSDT",
                    "okx": "BTC-USDT", "kraken": "BTC/USD"}


def _module_main(module: str, argv: list[str]) -> int:
    code = importlib.import_module(module).main(argv)
    return int(code or 0)


def _demo(argv: list[str]) -> int:
    demo = REPO / "examples" / "demo.py"
    if not demo.exists():
        print(f"aiolowlat demo runs examples/demo.py of a source checkout; none beside {REPO}",
              file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(demo), *argv]).returncode


def _sim(args) -> int:
    if args.which != "all":
        return _module_main(SIMULATORS[args.which], args.rest)
    # All of them, each its own process, stopped together.
    procs = [subprocess.Popen([sys.executable, "-m", "aiolowlat", "sim", name, *args.rest])
             for name in SIMULATORS]
    try:
        return max(proc.wait() for proc in procs)
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        return max(proc.wait(timeout=10) for proc in procs)


def _bench(args) -> int:
    folder = REPO / "benchmarks"
    if not folder.is_dir():
        print("aiolowlat bench runs the benchmarks/ of a source checkout; none beside "
              f"{REPO}", file=sys.stderr)
        return 2
    scripts = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_")
                     and "server" not in p.name and (not args.only or p.stem in args.only))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for number, script in enumerate(scripts, 1):
        print(f"[{number}/{len(scripts)}] {script.stem} ...", flush=True)
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        (out / f"{script.stem}.txt").write_text(result.stdout + result.stderr)
        rows = [line for line in result.stdout.splitlines() if line.startswith("{")]
        (out / f"{script.stem}.jsonl").write_text("".join(f"{row}\n" for row in rows))
        status = "ok" if result.returncode == 0 else f"exit {result.returncode}"
        failed += result.returncode != 0
        print(f"    {status}: {len(rows)} cases in {time.monotonic() - started:.0f} s -> "
              f"{out / script.stem}.txt", flush=True)
    _plot(out)
    return 1 if failed else 0


def _plot(out: pathlib.Path) -> None:
    """A PNG of each latency case's percentiles (p50, p99, p99.9), per implementation."""
    import json

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("    (no plot: pip install matplotlib for latency.png)", flush=True)
        return
    points = []
    for path in sorted(out.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            marks = [(q, row.get(f"rtt_p{q}_us")) for q in ("50", "99", "999")]
            marks = [(q, v) for q, v in marks if v is not None]
            if marks:
                label = f"{row.get('bench')}/{row.get('case')}/{row.get('impl')}/{row.get('loop')}"
                points.append((label, marks))
    if not points:
        return
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(points) + 1.5))
    for index, (_, marks) in enumerate(points):
        ax.plot([v for _, v in marks], [index] * len(marks), "-o", color="tab:blue")
    ax.set_yticks(range(len(points)), [label for label, _ in points], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("round-trip time, µs (dots: p50, p99, p99.9)")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    print(f"    plot: {out / 'latency.png'}", flush=True)


async def _venue(name: str, live: bool, seed: int):
    """(adapter, ssl context, simulator or None): the real venue with ``live``, else the
    embedded simulator, started, whose certificate the context trusts."""
    from .venues import ADAPTERS

    if live:
        return ADAPTERS[name](), None, None
    from .sim.ws_exchange import WsExchange

    sim = await WsExchange(seed=seed).start()
    return ADAPTERS[name](simulator=sim.url), sim.client_ssl_context(), sim


async def _feed(args) -> int:
    """Print a venue's events: from the embedded simulator, or the real venue with --live."""
    from .venues import BookSnapshot, Trade, venue_feed

    adapter, ssl, sim = await _venue(args.venue, args.live, args.seed)
    events = 0

    async def show():
        nonlocal events
        async for event in venue_feed(adapter, args.symbols, ssl=ssl):
            events += 1
            if isinstance(event, Trade):
                print(f"{event.venue} {event.symbol} trade {event.side:4} {event.size:g} @ "
                      f"{event.price:g}", flush=True)
            elif not isinstance(event, BookSnapshot) and events % 20:
                continue
            book = adapter.books.get(event.symbol)
            if book is not None and book.best_bid() and book.best_ask():
                (bid, bid_size), (ask, ask_size) = book.best_bid(), book.best_ask()
                print(f"{event.venue} {event.symbol} book {bid_size:g} @ {bid:g} / "
                      f"{ask_size:g} @ {ask:g}", flush=True)

    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(show(), args.seconds)
    finally:
        if sim is not None:
            await sim.stop()
    print(f"{events:,} events; {adapter.counters}", flush=True)
    return 0


async def _record_itch(args) -> int:
    from .sim import ItchFeed, LineImpairment
    from .sim.itch_publisher import ItchPublisher
    from .transports import open_datagram_endpoint

    deadline = time.monotonic() + (args.seconds or 1e9)
    with _record.Recorder(args.out) as rec:
        lines = {}
        for name in "AB":
            endpoint, _ = await open_datagram_endpoint(
                lambda name=name: rec.wrap(name, asyncio.DatagramProtocol()),
                transport="kernel", local_addr=("127.0.0.1", 0), rcvbuf=4 << 20)
            lines[name] = endpoint.get_extra_info("sockname")[:2]
        feed = ItchFeed(seed=args.seed, events=args.events)
        impairment = LineImpairment(loss=0.01, reorder=0.01)
        async with ItchPublisher(feed, lines, rate=args.rate,
                                 impairments={"A": impairment, "B": impairment}) as publisher:
            publishing = asyncio.ensure_future(publisher.publish())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(publishing, max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(0.05)  # the last datagrams in flight
        print(f"recorded {rec.records:,} datagrams of {len(feed.messages):,} messages "
              f"to {args.out}", flush=True)
    return 0


async def _record_venue(args) -> int:
    import json

    from .venues import run_feed

    adapter, ssl, sim = await _venue(args.feed, args.live, args.seed)
    symbols = args.symbols or [_DEFAULT_SYMBOLS[args.feed]]
    with _record.Recorder(args.out) as rec:
        rec.message(f"{args.feed}:symbols", json.dumps(symbols))
        _record.tap_adapter(rec, adapter)
        feed = asyncio.ensure_future(run_feed(adapter, symbols, lambda _: None, ssl=ssl))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(feed), args.seconds)
        finally:
            feed.cancel()
            await asyncio.gather(feed, return_exceptions=True)
            if sim is not None:
                await sim.stop()
        print(f"recorded {rec.records:,} {args.feed} messages to {args.out}", flush=True)
    return 0


def _replay_venues(path, symbols: dict[str, list[str]]) -> None:
    from .venues import ADAPTERS

    adapters = {venue: ADAPTERS[venue](simulator="wss://replay.invalid/")  # never connects
                for venue in sorted(symbols)}
    events = _record.replay_adapters(path, adapters, symbols)
    for venue, adapter in adapters.items():
        print(f"{venue}: {events[venue]:,} events; {adapter.counters}", flush=True)
        for symbol, book in sorted(adapter.books.items()):
            print(f"  {symbol} bid {book.best_bid()} ask {book.best_ask()}", flush=True)


async def _replay(args) -> int:
    import json

    from .protocols.itch import PRICE_SCALE
    from .protocols.itch_feed import ItchFeedHandler
    from .protocols.sequencer import Sequencer
    from .venues import ADAPTERS

    # One streaming scan for what the recording holds: venue feeds (with their symbols,
    # which `record` writes first) or datagram lines.
    symbols: dict[str, list[str]] = {}
    lines = set()
    for r in _record.read(args.file):
        venue, _, what = r.channel.partition(":")
        if venue in ADAPTERS:
            found = symbols.setdefault(venue, [])
            if what == "symbols":
                found.extend(json.loads(r.data))
        elif r.kind == _record.DATAGRAM:
            lines.add(r.channel)
    if symbols:
        _replay_venues(args.file, symbols)
        return 0
    handler = ItchFeedHandler(Sequencer(first_sequence=None, lines=tuple(sorted(lines))))
    started = time.monotonic()
    targets = {name: handler.protocol(name) for name in lines}
    count = await _record.replay(args.file, targets, speed=args.speed)
    await asyncio.sleep(0.05)  # the handler's reorder window closes
    handler.close()
    print(f"replayed {count:,} records in {time.monotonic() - started:.2f} s; "
          f"feed: {handler.counters()}", flush=True)
    for symbol, book in sorted(handler.books.items()):
        top = book.top()
        bid, ask = ("-" if p is None else f"{p / PRICE_SCALE:.4f}"
                    for p in (top.bid_price, top.ask_price))
        print(f"  {symbol:<6} bid {top.bid_size:>6,} @ {bid:>10}  ask {top.ask_size:>6,} @ {ask:>10}",
              flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiolowlat", description="asyncio for low-latency "
                                     "trading I/O: the simulators, feeds, benchmarks, host checks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    p = sub.add_parser("sim", help="run one simulator (itch, ws, fix) or all")
    p.add_argument("which", choices=[*SIMULATORS, "all"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the simulator's own options")
    p = sub.add_parser("bench", help="run the benchmarks; writes their tables and latency.png")
    p.add_argument("--quick", action="store_true", help="each benchmark under 60 s")
    p.add_argument("--only", nargs="*", help="benchmark names (e.g. loop_echo)")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    p = sub.add_parser("demo", help="the demo: a strategy on the embedded exchange simulators",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the demo's own options")
    p = sub.add_parser("feed", help="print a venue's live feed (the simulator unless --live)")
    p.add_argument("venue", choices=["binance", "coinbase", "bybit", "okx", "kraken"])
    p.add_argument("symbols", nargs="+", help="in the venue's spelling, e.g. BTCUSDT, BTC-USD")
    p.add_argument("--live", action="store_true", help="the real venue, not the simulator")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("record", help="record a feed with receive times to a file")
    p.add_argument("feed", choices=["itch", *_DEFAULT_SYMBOLS],
                   help="the embedded ITCH simulator's A/B lines, or a venue")
    p.add_argument("symbols", nargs="*", help="a venue's symbols (default: its BTC pair)")
    p.add_argument("--live", action="store_true", help="the real venue, not the simulator")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=50_000)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("replay", help="replay a recording through the feed handler or the "
                                      "venue adapters")
    p.add_argument("file")
    p.add_argument("--speed", type=float, default=None,
                   help="1.0 keeps the recorded pace (default: as fast as possible)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Commands that are another program's command line get every argument that follows,
    # options included (argparse's REMAINDER would not take a leading --option).
    if argv and argv[0] in _DELEGATED:
        return _module_main(_DELEGATED[argv[0]][0], argv[1:])
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    if len(argv) > 1 and argv[0] == "sim" and argv[1] in (*SIMULATORS, "all"):
        return _sim(argparse.Namespace(which=argv[1], rest=argv[2:]))
    args = _parser().parse_args(argv)
    try:
        if args.command == "feed":
            return asyncio.run(_feed(args))
        if args.command == "bench":
            return _bench(args)
        if args.command == "record":
            return asyncio.run(_record_itch(args) if args.feed == "itch"
                               else _record_venue(args))
        if args.command == "replay":
            return asyncio.run(_replay(args))
    except KeyboardInterrupt:
        return 0
    except (_record.RecordingError, FileNotFoundError) as exc:
        print(f"aiolowlat {args.command}: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
