"""The loop at work: a TCP echo server and ping-pong clients on one aiolowlat loop.

Prints, every second, round trips, RTT percentiles and the io_uring core's
counters; `--loop asyncio|uvloop` runs the same code on another loop to compare.

    python examples/loop_demo.py --seconds 10 --connections 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time

import aiolowlat

PAYLOAD = b"x" * 64


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class PingClient(asyncio.Protocol):
    """Sends 64 B, waits for the echo, records the RTT, sends again."""

    def __init__(self, rtts: list[int]):
        self.rtts = rtts
        self.pending = 0

    def connection_made(self, transport):
        self.transport = transport
        self._ping()

    def _ping(self):
        self.pending = len(PAYLOAD)
        self.sent_at = time.perf_counter_ns()
        self.transport.write(PAYLOAD)

    def data_received(self, data):
        self.pending -= len(data)
        if self.pending <= 0:
            self.rtts.append(time.perf_counter_ns() - self.sent_at)
            self._ping()


def _percentile(sorted_values: list[int], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))] / 1000


async def demo(seconds: float | None, connections: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rtts: list[int] = []
    clients = [await loop.create_connection(lambda: PingClient(rtts), "127.0.0.1", port)
               for _ in range(connections)]
    print(f"loop={type(loop).__module__}.{type(loop).__name__} connections={connections} "
          f"port={port}", flush=True)
    total, started = 0, time.monotonic()
    try:
        while seconds is None or time.monotonic() - started < seconds:
            await asyncio.sleep(1.0)
            window, rtts[:] = sorted(rtts), []
            total += len(window)
            if not window:
                continue
            line = (f"{len(window):>8,} round trips/s  rtt p50 {_percentile(window, 0.5):6.1f} us"
                    f"  p99 {_percentile(window, 0.99):6.1f} us"
                    f"  mean {statistics.fmean(window) / 1000:6.1f} us")
            if isinstance(loop, aiolowlat.Loop):
                stats = loop.ring_stats()
                line += f"  [io_uring cqes {stats['cqes']:,} sends {stats['sends']:,}]"
            print(line, flush=True)
    finally:
        for transport, _ in clients:
            transport.close()
        server.close()
        await server.wait_closed()
        print(f"done: {total:,} round trips in {time.monotonic() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop after N seconds (default: run until Ctrl-C)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--loop", choices=["aiolowlat", "uvloop", "asyncio"], default="aiolowlat")
    parser.add_argument("--busy-poll", action="store_true",
                        help="spin on the completion queue (give the process a core of its own)")
    args = parser.parse_args()
    coro = demo(args.seconds, args.connections)
    with contextlib.suppress(KeyboardInterrupt):
        if args.loop == "aiolowlat":
            aiolowlat.run(coro, busy_poll=args.busy_poll)
        elif args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)


if __name__ == "__main__":
    main()
