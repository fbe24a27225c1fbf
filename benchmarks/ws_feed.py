"""WebSocket market feed: receive+decode msgs/s and RTT, aiolowlat vs picows, aiohttp, websockets.

One server process (benchmarks/ws_feed_server.py: pre-built Binance trade frames sent in big
batches; an echo endpoint) per case, on its own core for the feed and on the client's core
for round trips (DESIGN.md: a cross-core wake-up would hide every difference). Clients run in
one spawned process per loop, every implementation interleaved in the same run, and each
message is decoded with msgspec into a Struct.

    python benchmarks/ws_feed.py --quick          # 2 rounds, under 60 s
    python benchmarks/ws_feed.py                  # 3 rounds, 10x the messages
    python benchmarks/ws_feed.py --impls aiolowlat,picows --loops uvloop --cases feed_ws

Output: one JSON line per (case, impl, loop), then a table with ratios to picows on the same
loop in the same run (msgs/s: higher is better; rtt p50: lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing as mp
import os
import pathlib
import signal
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import msgspec

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ws_feed_server  # noqa: E402

IMPLS = (
    "aiolowlat", "aiolowlat-loop", "aiolowlat-fastnet", "aiolowlat-batch", "aiolowlat-recv", "picows", "picows-std",
    "aiohttp", "websockets",
)  # fmt: skip
LOOPS = ("asyncio", "uvloop", "aiolowlat")
CASES = ("feed_ws", "feed_wss", "rtt_ws", "rtt_wss")


class Trade(msgspec.Struct):
    """A Binance spot trade (stream <symbol>@trade)."""

    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool


@dataclass(frozen=True)
class Settings:
    messages: int  # per feed run, of which the first tenth is warm-up
    round_trips: int  # per rtt run, plus a tenth as warm-up
    rounds: int
    deadline_s: float  # per run
    budget_s: float  # for the whole invocation: later runs are reported as skipped


QUICK = Settings(messages=100_000, round_trips=1_500, rounds=2, deadline_s=5, budget_s=50)
FULL = Settings(messages=1_000_000, round_trips=20_000, rounds=3, deadline_s=60, budget_s=1800)


# --- clients: one coroutine per implementation and mode --------------------------------------


class Counter:
    """Counts decoded messages; times the last nine tenths (the first tenth warms up)."""

    last = None  # the run's Counter or Pinger: how far a run that timed out got

    def __init__(self, total: int):
        Counter.last = self
        self.total, self.warm = total, total // 10
        self.n = 0
        self.done = asyncio.get_running_loop().create_future()

    def tick(self, k: int = 1):
        before, self.n = self.n, self.n + k
        if before < self.warm <= self.n:
            self.t0, self.n0 = time.perf_counter_ns(), self.n
        if before < self.total <= self.n:
            rate = (self.n - self.n0) * 1e9 / (time.perf_counter_ns() - self.t0)
            self.done.set_result(rate)


class Pinger:
    """One message in flight: send, wait for the echo, record the round trip."""

    def __init__(self, rounds: int):
        Counter.last = self
        self.warm, self.total = rounds // 10, rounds + rounds // 10
        self.rtts: list[int] = []
        self.n = 0
        self.payload = ws_feed_server.trade(0).decode()
        self.done = asyncio.get_running_loop().create_future()

    def echoed(self) -> bool:
        """Record one round trip; False when all are done."""
        now = time.perf_counter_ns()
        self.n += 1
        if self.n > self.warm:
            self.rtts.append(now - self.sent)
        if self.n >= self.total:
            if not self.done.done():
                self.done.set_result(self.rtts)
            return False
        return True


async def aiolowlat_client(url, ssl_ctx, mode, s: Settings, batch=False, fastnet=None):
    """on_ws_frame per message, as picows; with batch=True, a read's messages in one call."""
    import aiolowlat.ws as alws

    decode = msgspec.json.Decoder(Trade).decode
    batch_decoder = msgspec.json.Decoder(list[Trade]) if batch else None
    if mode == "feed":
        counter = Counter(s.messages)

        class Feed(alws.WSListener):
            def on_ws_frame(self, transport, frame):
                if frame.opcode == 1:
                    decode(frame.payload)
                    counter.tick()

            def on_ws_batch(self, transport, trades, rx_ns):
                counter.tick(len(trades))

        Feed.batch_decoder = batch_decoder

        transport, _ = await alws.ws_connect(
            Feed, url, ssl=ssl_ctx, max_size=None, fastnet=fastnet
        )
        try:
            return await counter.done
        finally:
            transport.disconnect()
    pinger = Pinger(s.round_trips)

    class Echo(alws.WSListener):
        def on_ws_frame(self, transport, frame):  # as picows_client's, line for line
            if frame.opcode == 1:
                decode(frame.payload)
                if pinger.echoed():
                    pinger.sent = time.perf_counter_ns()
                    transport.send(1, pinger.payload.encode())

        def on_ws_batch(self, transport, trades, rx_ns):
            for _ in trades:
                if pinger.echoed():
                    pinger.sent = time.perf_counter_ns()
                    transport.send(1, pinger.payload.encode())

    Echo.batch_decoder = batch_decoder

    transport, _ = await alws.ws_connect(Echo, url, ssl=ssl_ctx, fastnet=fastnet)
    try:
        pinger.sent = time.perf_counter_ns()
        transport.send(1, pinger.payload.encode())
        return await pinger.done
    finally:
        transport.disconnect()


async def aiolowlat_recv_client(url, ssl_ctx, mode, s: Settings):
    import aiolowlat.ws as alws

    decode = msgspec.json.Decoder(Trade).decode
    async with alws.connect(url, ssl=ssl_ctx, max_size=None, ping_interval=None) as ws:
        return await _await_style(ws.recv, ws.send, decode, mode, s)


async def websockets_client(url, ssl_ctx, mode, s: Settings):
    from websockets.asyncio.client import connect

    decode = msgspec.json.Decoder(Trade).decode
    async with connect(url, ssl=ssl_ctx, compression=None, max_size=None) as ws:
        return await _await_style(ws.recv, ws.send, decode, mode, s)


async def aiohttp_client(url, ssl_ctx, mode, s: Settings):
    import aiohttp

    decode = msgspec.json.Decoder(Trade).decode
    async with aiohttp.ClientSession() as session:
        kw = {"ssl": ssl_ctx} if ssl_ctx else {}
        async with session.ws_connect(url, max_msg_size=0, compress=0, **kw) as ws:

            async def recv():
                return (await ws.receive()).data

            return await _await_style(recv, ws.send_str, decode, mode, s)


async def _await_style(recv, send, decode, mode, s: Settings):
    if mode == "feed":
        counter = Counter(s.messages)
        while not counter.done.done():
            decode(await recv())
            counter.tick()
        return counter.done.result()
    pinger = Pinger(s.round_trips)
    while True:
        pinger.sent = time.perf_counter_ns()
        await send(pinger.payload)
        decode(await recv())
        if not pinger.echoed():
            return pinger.done.result()


async def picows_client(url, ssl_ctx, mode, s: Settings, **kw):
    """picows as installed: with aiofastnet (its own C transports and TLS) when present."""
    import picows

    decode = msgspec.json.Decoder(Trade).decode
    if mode == "feed":
        counter = Counter(s.messages)

        class Feed(picows.WSListener):
            def on_ws_frame(self, transport, frame):
                if frame.msg_type == picows.WSMsgType.TEXT:
                    decode(frame.get_payload_as_memoryview())
                    counter.tick()

        transport, _ = await picows.ws_connect(
            Feed, url, ssl_context=ssl_ctx, max_frame_size=2**30, **kw
        )
        try:
            return await counter.done
        finally:
            transport.disconnect()
    pinger = Pinger(s.round_trips)

    class Echo(picows.WSListener):
        def on_ws_frame(self, transport, frame):
            if frame.msg_type == picows.WSMsgType.TEXT:
                decode(frame.get_payload_as_memoryview())
                if pinger.echoed():
                    pinger.sent = time.perf_counter_ns()
                    transport.send(picows.WSMsgType.TEXT, pinger.payload.encode())

    transport, _ = await picows.ws_connect(Echo, url, ssl_context=ssl_ctx, **kw)
    try:
        pinger.sent = time.perf_counter_ns()
        transport.send(picows.WSMsgType.TEXT, pinger.payload.encode())
        return await pinger.done
    finally:
        transport.disconnect()


CLIENTS = {
    "aiolowlat": aiolowlat_client,
    "aiolowlat-batch": functools.partial(aiolowlat_client, batch=True),
    # on the loop's own transports (the default on the aiolowlat loop only)
    "aiolowlat-loop": functools.partial(aiolowlat_client, fastnet=False),
    # on aiofastnet's transports (the default on other loops), as picows runs by default
    "aiolowlat-fastnet": functools.partial(aiolowlat_client, fastnet=True),
    "aiolowlat-recv": aiolowlat_recv_client,
    "picows": picows_client,
    # picows on the loop's own transports, as aiolowlat-loop runs
    "picows-std": functools.partial(picows_client, use_aiofastnet=False),
    "aiohttp": aiohttp_client,
    "websockets": websockets_client,
}


# --- processes -------------------------------------------------------------------------------


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import aiolowlat

    return aiolowlat.new_event_loop()


def percentile_us(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))] / 1000


# Fewer messages for the clients that are 3-10x slower, so each feed run takes about as long.
SLOW_IMPLS = {"websockets": 4, "aiohttp": 2}


def run_job(kind, impl, case, ports, cafile, s: Settings, stop_at: float) -> dict:
    mode, scheme = case.split("_")
    s = replace(s, messages=s.messages // SLOW_IMPLS.get(impl, 1))
    ssl_ctx = None
    if scheme == "wss":
        ssl_ctx = ssl.create_default_context(cafile=cafile)
    host = "localhost" if ssl_ctx else "127.0.0.1"
    url = f"{scheme}://{host}:{ports[case]}/" + (f"feed?n={s.messages}" if mode == "feed" else "echo")

    deadline_s = min(s.deadline_s, stop_at - time.time())
    if deadline_s <= 0:
        return {"error": f"skipped: over the {s.budget_s:g} s budget"}

    async def main():
        Counter.last = None
        async with asyncio.timeout(deadline_s):
            return await CLIENTS[impl](url, ssl_ctx, mode, s)

    try:
        with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
            result = runner.run(main())
    except TimeoutError:
        got = Counter.last
        where = f"{got.n} of {got.total}" if got else "before the handshake"
        return {"error": f"not done within {deadline_s:.3g} s ({where})"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if mode == "feed":
        return {"msgs_per_s": result}
    rtts = sorted(result)
    return {
        "rtt_p50_us": percentile_us(rtts, 0.5),
        "rtt_p99_us": percentile_us(rtts, 0.99),
        "rtt_p999_us": percentile_us(rtts, 0.999),
        "round_trips_per_s": len(rtts) * 1e9 / sum(rtts),
    }


def client_proc(kind, jobs, ports, cafile, core, s: Settings, stop_at, pipe) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.sched_setaffinity(0, {core})
    bytes(1 << 20)  # raise glibc's mmap threshold, as a long-running process has (loop_echo.py)
    for impl, case in jobs:
        pipe.send((impl, case, run_job(kind, impl, case, ports, cafile, s, stop_at)))
    pipe.send(None)


def start_servers(cases, cores, cert, key, ctx) -> tuple[list, dict]:
    procs, ports = [], {}
    for case in cases:
        mode, scheme = case.split("_")
        rx, tx = ctx.Pipe(duplex=False)
        core = cores[0] if mode == "feed" else cores[-1]  # rtt: the client's core
        tls = (cert, key) if scheme == "wss" else (None, None)
        proc = ctx.Process(target=ws_feed_server.serve, args=(core, *tls, tx), daemon=True)
        proc.start()
        procs.append(proc)
        if not rx.poll(20):
            raise SystemExit(f"server for {case} did not start")
        ports[case] = rx.recv()
    return procs, ports


def run_loop(kind, jobs, ports, cafile, core, s: Settings, stop_at, ctx) -> list:
    rx, tx = ctx.Pipe(duplex=False)
    args = (kind, jobs, ports, cafile, core, s, stop_at, tx)
    proc = ctx.Process(target=client_proc, args=args)
    proc.start()
    tx.close()
    results = []
    # The child skips runs past stop_at; this only covers a child that hangs outside a run.
    deadline = time.monotonic() + min(s.deadline_s * len(jobs), stop_at - time.time()) + 10
    try:
        while time.monotonic() < deadline and rx.poll(max(0.0, deadline - time.monotonic())):
            item = rx.recv()
            if item is None:
                break
            results.append(item)
            if "error" in item[2]:
                print(f"ws_feed: {item[1]} {item[0]} on {kind}: {item[2]['error']}", file=sys.stderr)
    except EOFError:
        pass
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    done = {(impl, case) for impl, case, _ in results}
    results += [(i, c, {"error": "client process died"}) for i, c in jobs if (i, c) not in done]
    return results


# --- report ----------------------------------------------------------------------------------


METRICS = ("msgs_per_s", "rtt_p50_us", "rtt_p99_us", "rtt_p999_us", "round_trips_per_s")


def summarize(case, impl, kind, runs) -> dict:
    row = {"bench": "ws_feed", "case": case, "impl": impl, "loop": kind}
    ok = [r for r in runs if "error" not in r]
    for key in METRICS:
        values = [r[key] for r in ok if key in r]
        if values:
            median = statistics.median(values)
            row[key] = round(median) if key.endswith("_per_s") else round(median, 2)
    row["rounds"] = len(ok)
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        row["error"] = errors[0]
    return row


def vs_picows(row, rows) -> str:
    base = next(
        (r for r in rows if (r["case"], r["loop"], r["impl"]) == (row["case"], row["loop"], "picows")),
        {},
    )
    key = "msgs_per_s" if row["case"].startswith("feed") else "rtt_p50_us"
    if not base.get(key) or key not in row:
        return "-"
    return f"{row[key] / base[key]:.2f}x"


def print_table(rows) -> None:
    fmt = "{:<9} {:<17} {:<10} {:>11} {:>8} {:>8} {:>9}  {:<8}"
    print()
    print(fmt.format("case", "impl", "loop", "msgs/s", "p50 us", "p99 us", "p99.9 us", "vs picows"))
    for row in rows:
        line = fmt.format(
            row["case"], row["impl"], row["loop"],
            f"{row['msgs_per_s']:,}" if "msgs_per_s" in row else "-",
            *(f"{row[k]:.1f}" if k in row else "-" for k in ("rtt_p50_us", "rtt_p99_us", "rtt_p999_us")),
            vs_picows(row, rows),
        )  # fmt: skip
        if "error" in row:
            line += f" error: {row['error'][:70]}"
        print(line.rstrip())
    print("vs picows: msgs/s ratio for feed cases (higher is better), "
          "rtt p50 ratio for rtt cases (lower is better); same loop, same run")  # fmt: skip


def parse_list(text, known, what) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in known]
    if bad or not items:
        raise SystemExit(f"unknown {what}: {','.join(bad)} (choose from {','.join(known)})")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (under 60 s)")
    parser.add_argument("--json-only", action="store_true", help="JSON lines only, no table")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 2)")
    args = parser.parse_args(argv)
    impls = parse_list(args.impls, IMPLS, "impls")
    loops = parse_list(args.loops, LOOPS, "loops")
    cases = parse_list(args.cases, CASES, "cases")
    s = QUICK if args.quick else FULL
    rounds = args.rounds or s.rounds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ctx = mp.get_context("spawn")
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="ws-feed-") as tmp:
        certfile, keyfile, cafile = (os.path.join(tmp, n) for n in ("c.pem", "k.pem", "ca.pem"))
        cert.cert_chain_pems[0].write_to_path(certfile)
        cert.private_key_pem.write_to_path(keyfile)
        ca.cert_pem.write_to_path(cafile)
        stop_at = time.time() + s.budget_s
        servers, ports = start_servers(cases, cores, certfile, keyfile, ctx)
        runs: dict = {}
        try:
            for r in range(rounds):
                # Interleave implementations within each case; reverse every other round.
                jobs = [(i, c) for c in cases for i in (impls if r % 2 == 0 else impls[::-1])]
                for kind in loops if r % 2 == 0 else loops[::-1]:
                    results = run_loop(kind, jobs, ports, cafile, cores[-1], s, stop_at, ctx)
                    for impl, case, res in results:
                        runs.setdefault((case, impl, kind), []).append(res)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            for proc in servers:
                proc.terminate()
                proc.join(2)
    rows = []
    for case in cases:
        for kind in loops:
            for impl in impls:
                rows.append(summarize(case, impl, kind, runs.get((case, impl, kind), [])))
                print(json.dumps(rows[-1]), flush=True)
    if not args.json_only:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
