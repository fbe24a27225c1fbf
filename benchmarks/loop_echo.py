"""Loopback echo benchmark: asyncio vs uvloop vs aiolowlat (sleeping and busy-polling).

Server and client run in separate spawned processes on the same loop kind. Each case runs the
selected loops in interleaved rounds and reports the median over rounds, so the ratios between
loops come from one run on one (noisy) machine.

    cd /work/main && python benchmarks/loop_echo.py        # full: 3 rounds, ~8 min
    python benchmarks/loop_echo.py --quick                 # 1 round, under 60 s
    python benchmarks/loop_echo.py --loops uvloop,aiolowlat --cases tcp_pingpong_64 --json-only

Output: one JSON line per (case, loop), then a table. Its "vs uvloop" column is the ratio to
uvloop in the same run of the p50 round trip (latency cases: lower is better) or of
round_trips_per_s (throughput cases: higher is better).

The "c-uring" and "c-uring-busy" rows are the floor: the TCP cases in C alone
(csrc/loop_pingpong.c, built here with gcc), on rings set up as the aiolowlat loop sets up
its own, pinned as the loops are, no Python. The gap from a loop's row to them is what the
loop and its protocol cost; their own ratio to uvloop is as far as any io_uring loop gets here.
"c-socket-busy" (ping-pong only) is the same program on plain sockets spinning on recv(2):
the gap from c-uring-busy to it is what io_uring's completion path (poll wake-up, task work,
an io_uring_enter to run it) costs a busy-polling side.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from _cbuild import build_c

HOST = "127.0.0.1"
LOOPS = ("asyncio", "uvloop", "aiolowlat", "aiolowlat-busy", "c-uring", "c-uring-busy",
         "c-socket-busy")
# csrc/loop_pingpong.c: TCP cases only; its BUSY argument for each
C_FLOORS = {"c-uring": 0, "c-uring-busy": 1, "c-socket-busy": 2}
LATENCY_ONLY = ("c-socket-busy",)
METRICS = ("rtt_p50_us", "rtt_p99_us", "rtt_p999_us", "round_trips_per_s")


@dataclass(frozen=True)
class Case:
    mode: str  # "latency": one peer, rtt percentiles; "throughput": lock-step connections
    transport: str  # "tcp" (Protocol callbacks), "streams" or "udp"
    size: int
    conns: int


CASES = {
    "tcp_pingpong_64": Case("latency", "tcp", 64, 1),
    "tcp_echo_1k_c10": Case("throughput", "tcp", 1024, 10),
    "tcp_echo_1k_c100": Case("throughput", "tcp", 1024, 100),
    "streams_echo_1k_c10": Case("throughput", "streams", 1024, 10),
    "udp_pingpong_64": Case("latency", "udp", 64, 1),
}


@dataclass(frozen=True)
class Settings:
    round_trips: int  # measured round trips per latency run
    warmup_round_trips: int
    duration_s: float  # measured window per throughput run
    warmup_s: float
    deadline_s: float  # hard limit for one run (case, loop, round), startup included


FULL = Settings(
    round_trips=50_000, warmup_round_trips=5_000, duration_s=3.0, warmup_s=0.5, deadline_s=60.0
)
QUICK = Settings(
    round_trips=10_000, warmup_round_trips=1_000, duration_s=1.0, warmup_s=0.3, deadline_s=60.0
)


class BenchError(Exception):
    pass


# --- loops and pinning -------------------------------------------------------------------------


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import aiolowlat

    return aiolowlat.new_event_loop(busy_poll=kind == "aiolowlat-busy")


def run_on(kind: str, main):
    """Run main() on a fresh loop of this kind; the loop is built first so a broken loop does
    not leave an un-awaited coroutine behind."""
    with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as runner:
        runner.get_loop()
        return runner.run(main())


def cores_for(kind: str) -> tuple[int, int]:
    """(server core, client core). Sleeping loops share one core: a cross-core wake-up (~25 us
    here) would hide every difference being measured. A busy-polling side needs its own core."""
    cores = sorted(os.sched_getaffinity(0))
    if kind.endswith("-busy") and len(cores) > 1:
        return cores[0], cores[1]
    return cores[0], cores[0]


def enter_child(core: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns shutdown (it kills us)
    os.sched_setaffinity(0, {core})
    # Free one large block first, as any long-running process has: glibc then raises its mmap
    # threshold. Without it, a fresh process pays mmap+munmap for every 256 KiB recv buffer
    # (asyncio's read size), ~20 us per round trip here: an artifact of short-lived processes.
    bytes(1 << 20)  # allocated and freed here


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    # asyncio and uvloop already set it; do it explicitly so every loop measures the same thing.
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- server ------------------------------------------------------------------------------------


class TcpEcho(asyncio.Protocol):
    def connection_made(self, transport):
        set_nodelay(transport)
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def stream_echo(reader, writer, size):
    set_nodelay(writer.transport)
    try:
        while True:
            writer.write(await reader.readexactly(size))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # client went away
    finally:
        writer.close()


async def start_server(case: Case):
    """Listen on an ephemeral port; return (server object to keep alive, port)."""
    loop = asyncio.get_running_loop()
    if case.transport == "tcp":
        server = await loop.create_server(TcpEcho, HOST, 0, backlog=1024)
    elif case.transport == "streams":
        handler = functools.partial(stream_echo, size=case.size)
        server = await asyncio.start_server(handler, HOST, 0, backlog=1024)
    else:
        transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=(HOST, 0))
        return transport, transport.get_extra_info("sockname")[1]
    return server, server.sockets[0].getsockname()[1]


def server_proc(case_name: str, kind: str, core: int, lifetime_s: float, conn) -> None:
    """Sends the port (int) or an error (str) to the parent, then serves until terminated."""
    enter_child(core)

    async def serve():
        server, port = await start_server(CASES[case_name])
        conn.send(port)
        await asyncio.sleep(lifetime_s)  # backstop only: the parent terminates us long before
        server.close()

    try:
        run_on(kind, serve)
    except Exception as exc:
        conn.send(f"server: {describe(exc)}")


# --- client: latency ---------------------------------------------------------------------------


class PingPong:
    """One message in flight: send, wait for the whole echo, record the round trip, repeat."""

    def __init__(self, size: int, warmup: int, count: int):
        self.payload = b"x" * size
        self.warmup, self.total = warmup, warmup + count
        self.rtts: list[int] = []
        self.done = asyncio.get_running_loop().create_future()  # -> measured wall time, ns
        self.n = 0

    def send(self):
        self.pending = len(self.payload)
        self.sent_ns = time.perf_counter_ns()
        self.write(self.payload)

    def received(self, nbytes: int):
        self.pending -= nbytes
        if self.pending > 0:
            return  # TCP may deliver the echo in pieces
        now = time.perf_counter_ns()
        self.n += 1
        if self.n > self.warmup:
            self.rtts.append(now - self.sent_ns)
        elif self.n == self.warmup:
            self.start_ns = now
        if self.n < self.total:
            self.send()
        elif not self.done.done():
            self.done.set_result(now - self.start_ns)

    def fail(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("connection lost"))


class TcpPingPong(PingPong, asyncio.Protocol):
    def connection_made(self, transport):
        set_nodelay(transport)
        self.write = transport.write
        self.send()

    def data_received(self, data):
        self.received(len(data))

    def connection_lost(self, exc):
        self.fail(exc)


class UdpPingPong(PingPong, asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.write = transport.sendto
        self.send()

    def datagram_received(self, data, addr):
        self.received(len(data))

    def error_received(self, exc):
        self.fail(exc)


def percentile_us(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))] / 1000


async def latency_client(case: Case, port: int, s: Settings) -> dict:
    loop = asyncio.get_running_loop()
    cls = TcpPingPong if case.transport == "tcp" else UdpPingPong

    def factory():
        return cls(case.size, s.warmup_round_trips, s.round_trips)

    if case.transport == "tcp":
        transport, proto = await loop.create_connection(factory, HOST, port)
    else:
        transport, proto = await loop.create_datagram_endpoint(factory, remote_addr=(HOST, port))
    try:
        wall_ns = await proto.done
    finally:
        transport.close()
    rtts = sorted(proto.rtts)
    return {
        "rtt_p50_us": percentile_us(rtts, 0.50),
        "rtt_p99_us": percentile_us(rtts, 0.99),
        "rtt_p999_us": percentile_us(rtts, 0.999),
        "round_trips_per_s": len(rtts) * 1e9 / wall_ns,
    }


# --- client: throughput ------------------------------------------------------------------------


class Tally:
    """Shared by all connections of a run; single-threaded, so plain fields suffice."""

    def __init__(self):
        self.running = True
        self.count = 0
        self.error: BaseException | None = None


class TcpLockStep(asyncio.Protocol):
    def __init__(self, payload: bytes, tally: Tally):
        self.payload, self.tally = payload, tally

    def connection_made(self, transport):
        set_nodelay(transport)
        self.transport = transport

    def send(self):
        self.pending = len(self.payload)
        self.transport.write(self.payload)

    def data_received(self, data):
        self.pending -= len(data)
        if self.pending <= 0:
            self.tally.count += 1
            if self.tally.running:
                self.send()

    def connection_lost(self, exc):
        if self.tally.running:
            self.tally.error = exc or ConnectionError("connection lost")


async def stream_lock_step(reader, writer, payload: bytes, tally: Tally):
    while tally.running:
        writer.write(payload)
        await writer.drain()
        await reader.readexactly(len(payload))
        tally.count += 1


async def throughput_client(case: Case, port: int, s: Settings) -> dict:
    loop = asyncio.get_running_loop()
    payload = b"x" * case.size
    tally = Tally()
    tasks, transports = [], []
    try:
        # Connect all first (sequentially: no accept-backlog overflow), then start together.
        if case.transport == "tcp":
            protos = []
            for _ in range(case.conns):
                transport, proto = await loop.create_connection(
                    lambda: TcpLockStep(payload, tally), HOST, port
                )
                transports.append(transport)
                protos.append(proto)
            for proto in protos:
                proto.send()
        else:
            streams = [await asyncio.open_connection(HOST, port) for _ in range(case.conns)]
            for reader, writer in streams:
                set_nodelay(writer.transport)
                transports.append(writer)
                tasks.append(asyncio.create_task(stream_lock_step(reader, writer, payload, tally)))

        await asyncio.sleep(s.warmup_s)
        n0, t0 = tally.count, time.perf_counter()
        await asyncio.sleep(s.duration_s)
        n1, t1 = tally.count, time.perf_counter()

        failed = [t.exception() for t in tasks if t.done() and not t.cancelled()]
        if tally.error or any(failed):
            raise tally.error or next(e for e in failed if e)
        if n1 == n0:
            raise BenchError("no round trips completed")
    finally:
        tally.running = False
        for task in tasks:
            task.cancel()
        for transport in transports:
            transport.close()
    return {"round_trips_per_s": (n1 - n0) / (t1 - t0)}


def client_proc(case_name: str, kind: str, core: int, port: int, s: Settings, conn) -> None:
    """Sends a metrics dict or {"error": ...} to the parent."""
    enter_child(core)
    case = CASES[case_name]
    body = latency_client if case.mode == "latency" else throughput_client

    budget_s = max(1.0, s.deadline_s - 5)  # under the parent's deadline: a slow run says why

    async def main():
        async with asyncio.timeout(budget_s):
            return await body(case, port, s)

    try:
        result = run_on(kind, main)
    except TimeoutError:
        result = {"error": f"client: not done within its {budget_s:g} s budget"}
    except Exception as exc:
        result = {"error": f"client: {describe(exc)}"}
    conn.send(result)


# --- parent ------------------------------------------------------------------------------------


def receive(conn, proc, who: str, deadline: float, s: Settings):
    if not conn.poll(max(0.0, deadline - time.monotonic())):
        raise BenchError(f"{who} gave no answer within the {s.deadline_s:g} s deadline")
    try:
        return conn.recv()
    except EOFError:
        proc.join(1)
        raise BenchError(f"{who} exited with code {proc.exitcode} and no answer") from None


def stop(proc) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(2)
    if proc.is_alive():
        proc.kill()
    proc.join()


def run_floor(case_name: str, kind: str, s: Settings) -> dict:
    """The C floor of a TCP case: one program, its own client and server processes."""
    case = CASES[case_name]
    server_core, client_core = cores_for(kind)
    busy = str(C_FLOORS[kind])
    if case.mode == "latency":
        args = ["latency", case.size, s.round_trips, s.warmup_round_trips]
    else:
        args = ["throughput", case.size, case.conns, s.duration_s, s.warmup_s]
    try:
        prog = build_c("loop_pingpong", "-luring")
        done = subprocess.run([prog, *map(str, args), busy, str(server_core), str(client_core)],
                              capture_output=True, text=True, timeout=s.deadline_s)
    except RuntimeError as exc:  # gcc's message
        return {"error": str(exc)[:200]}
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": describe(exc)}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[:200]}"}
    return json.loads(done.stdout)


def run_once(case_name: str, kind: str, s: Settings) -> dict:
    """One server + client pair, both always reaped; returns metrics or {"error": ...}."""
    if kind in C_FLOORS:
        return run_floor(case_name, kind, s)
    ctx = mp.get_context("spawn")  # fresh interpreters: no loop state inherited from the parent
    server_core, client_core = cores_for(kind)
    deadline = time.monotonic() + s.deadline_s
    procs, conns = [], []
    try:
        port_rx, port_tx = ctx.Pipe(duplex=False)
        conns += [port_rx, port_tx]
        server = ctx.Process(
            target=server_proc,
            daemon=True,
            args=(case_name, kind, server_core, s.deadline_s + 10, port_tx),
        )
        server.start()
        procs.append(server)
        port_tx.close()  # so a dead server shows up as EOF, not as a silent wait
        port = receive(port_rx, server, "server", deadline, s)
        if isinstance(port, str):
            server.join(2)  # it is exiting: let it finish, rather than cut its stderr short
            return {"error": port}

        result_rx, result_tx = ctx.Pipe(duplex=False)
        conns += [result_rx, result_tx]
        client = ctx.Process(
            target=client_proc, daemon=True, args=(case_name, kind, client_core, port, s, result_tx)
        )
        client.start()
        procs.append(client)
        result_tx.close()
        result = receive(result_rx, client, "client", deadline, s)
        client.join(2)  # it exits on its own once it has answered
        return result
    except BenchError as exc:
        return {"error": str(exc)}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for conn in conns:
            conn.close()


def summarize(case_name: str, kind: str, runs: list[dict]) -> dict:
    row = {"bench": "loop_echo", "case": case_name, "impl": kind, "loop": kind}
    ok = [r for r in runs if "error" not in r]
    for key in METRICS:
        values = [r[key] for r in ok if key in r]
        if values:
            median = statistics.median(values)
            row[key] = round(median) if key == "round_trips_per_s" else round(median, 2)
    row["rounds"] = len(ok)
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        row["error"] = errors[0] if len(errors) == 1 else f"{errors[0]} ({len(errors)} rounds)"
    return row


def vs_uvloop(row: dict, rows: list[dict]) -> str:
    base = next((r for r in rows if r["case"] == row["case"] and r["loop"] == "uvloop"), {})
    key = "rtt_p50_us" if CASES[row["case"]].mode == "latency" else "round_trips_per_s"
    if not base.get(key) or key not in row:
        return "-"
    return f"{row[key] / base[key]:.2f}x {'p50' if key == 'rtt_p50_us' else 'rt/s'}"


def print_table(rows: list[dict]) -> None:
    def us(row, key):
        return f"{row[key]:.1f}" if key in row else "-"

    fmt = "{:<20} {:<15} {:>8} {:>8} {:>9} {:>10}  {:<12}"
    print()
    print(fmt.format("case", "loop", "p50 us", "p99 us", "p99.9 us", "rt/s", "vs uvloop").rstrip())
    for row in rows:
        rate = f"{row['round_trips_per_s']:,}" if "round_trips_per_s" in row else "-"
        line = fmt.format(
            row["case"],
            row["loop"],
            us(row, "rtt_p50_us"),
            us(row, "rtt_p99_us"),
            us(row, "rtt_p999_us"),
            rate,
            vs_uvloop(row, rows),
        )
        if "error" in row:
            line += f" error: {row['error'][:80]}"
        print(line.rstrip())
    print(
        "vs uvloop: p50 ratio for latency cases (lower is better), "
        "rt/s ratio for throughput cases (higher is better)"
    )


def parse_list(text: str, known, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown or not items:
        raise SystemExit(f"unknown {what}: {','.join(unknown)} (choose from {','.join(known)})")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (under 60 s)")
    parser.add_argument("--json-only", action="store_true", help="JSON lines only, no table")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma separated subset")
    parser.add_argument("--cases", default=",".join(CASES), help="comma separated subset")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 3, quick 1)")
    parser.add_argument("--deadline", type=float, help="hard limit per run in s (default 60)")
    args = parser.parse_args(argv)

    loops = parse_list(args.loops, LOOPS, "loops")
    cases = parse_list(args.cases, CASES, "cases")
    s = QUICK if args.quick else FULL
    if args.deadline:
        s = Settings(**{**s.__dict__, "deadline_s": args.deadline})
    rounds = args.rounds or (1 if args.quick else 3)
    # SIGTERM -> SystemExit, so the finally blocks still reap the children.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    rows = []
    try:
        for case_name in cases:
            case = CASES[case_name]
            kinds = [k for k in loops if (k not in C_FLOORS or case.transport == "tcp")
                     and (k not in LATENCY_ONLY or case.mode == "latency")]
            runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for i in range(rounds):
                # Interleave loops, reversing the order every other round to cancel drift.
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    runs[kind].append(run_once(case_name, kind, s))
            for kind in kinds:
                rows.append(summarize(case_name, kind, runs[kind]))
                print(json.dumps(rows[-1]), flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if not args.json_only:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
