"""Market-data ingest: MoldUDP64/ITCH datagrams per transport, loop and delivery path.

Throughput: the receiver's socket buffer is filled with a burst of real
MoldUDP64/ITCH packets before the endpoint is opened on it (so none is lost to
scheduling), then the drain is timed from the endpoint's creation; every message
must arrive. Each
case counts ITCH messages from the MoldUDP64 headers ("count"), decodes every
message into typed ITCH objects in Python ("decode"), or decodes them in C into
reusable records ("decode_c", aiolowlat.protocols.itch_native).

A "recvmmsg-floor" row drains the same burst with recvmmsg in C alone: the kernel's
share, and so the ceiling of any kernel-socket path's ratio.

Latency ("one_way"): a publisher process on the same core sends packets stamped
with time.time_ns(); the receiver records callback time minus send time.

    python benchmarks/multicast_ingest.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import struct
import sys
import time

import aiolowlat
from aiolowlat.protocols.itch import ItchDecoder
from aiolowlat.protocols.itch_native import NativeItchDecoder
from aiolowlat.protocols.moldudp64 import decode_packet
from aiolowlat.sim.itch_feed import generate_session, packetize
from aiolowlat.transports import open_datagram_endpoint, open_udp_socket

_COUNT = struct.Struct(">H")
# (impl, loop, transport, path): impl "asyncio-endpoint" is loop.create_datagram_endpoint.
CASES = [
    ("asyncio-endpoint", "asyncio", None, "datagram"),
    ("uvloop-endpoint", "uvloop", None, "datagram"),
    ("aiolowlat-kernel", "asyncio", "kernel", "batch"),
    ("aiolowlat-kernel", "aiolowlat", "kernel", "datagram"),
    ("aiolowlat-kernel", "aiolowlat", "kernel", "batch"),
    ("aiolowlat-uring", "aiolowlat", "uring", "datagram"),
    ("aiolowlat-uring", "aiolowlat", "uring", "batch"),
]


def new_loop(kind):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return aiolowlat.new_event_loop() if kind == "aiolowlat" else asyncio.new_event_loop()


class Counter(asyncio.DatagramProtocol):
    """Counts (or decodes) ITCH messages; per datagram or per batch."""

    def __init__(self, want, decode):
        self.want, self.messages, self.done = want, 0, asyncio.Event()
        self.decoder = ItchDecoder() if decode == "python" else None
        self.native = NativeItchDecoder() if decode == "c" else None

    def datagram_received(self, data, addr):
        self._take(data)

    def _take(self, data):
        if self.native is not None:
            self.messages += self.native.decode_packet(data)
        elif self.decoder is None:
            self.messages += _COUNT.unpack_from(data, 18)[0]
        else:
            decode = self.decoder.decode
            for message in decode_packet(data).messages:
                decode(message)
            self.messages += _COUNT.unpack_from(data, 18)[0]
        if self.messages >= self.want:
            self.done.set()


class BatchCounter(Counter):
    def datagrams_received(self, batch):
        if self.native is None and self.decoder is None:  # count: one pass over the batch
            unpack = _COUNT.unpack_from
            self.messages += sum([unpack(data, 18)[0] for data, _, _ in batch])
            if self.messages >= self.want:
                self.done.set()
            return
        for data, _, _ in batch:
            self._take(data)


async def ingest(case, packets, want, decode, rounds):
    impl, _, transport, path = case
    loop = asyncio.get_running_loop()
    rates = []
    for _ in range(rounds):
        factory = (lambda: BatchCounter(want, decode)) if path == "batch" \
            else (lambda: Counter(want, decode))
        sock, _ = open_udp_socket(("127.0.0.1", 0), rcvbuf=64 << 20, rcvbuf_force=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for packet in packets:
                tx.sendto(packet, sock.getsockname())
        started = time.perf_counter()
        if transport is None:
            tr, proto = await loop.create_datagram_endpoint(factory, sock=sock)
        else:
            tr, proto = await open_datagram_endpoint(factory, transport=transport, sock=sock)
        try:
            await asyncio.wait_for(proto.done.wait(), 30)
        except TimeoutError:
            tr.close()
            return {"error": f"lost messages: {proto.messages} of {want}"}
        rates.append(want / (time.perf_counter() - started))
        tr.close()
    rates.sort()
    return {"msgs_per_s": round(rates[len(rates) // 2]), "ns_per_msg":
            round(1e9 / rates[len(rates) // 2], 1)}


def _publisher(port, count, gap_s):
    os.sched_setaffinity(0, {0})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(count):
            tx.sendto(struct.pack("=q", time.time_ns()) + bytes(56), ("127.0.0.1", port))
            time.sleep(gap_s)


class Stamps(asyncio.DatagramProtocol):
    def __init__(self, want):
        self.want, self.lat, self.done = want, [], asyncio.Event()

    def datagram_received(self, data, addr):
        self.lat.append(time.time_ns() - struct.unpack_from("=q", data)[0])
        if len(self.lat) >= self.want:
            self.done.set()


class BatchStamps(Stamps):
    def datagrams_received(self, batch):
        now = time.time_ns()
        for data, _, _ in batch:
            self.lat.append(now - struct.unpack_from("=q", data)[0])
        if len(self.lat) >= self.want:
            self.done.set()


async def one_way(case, count):
    _, _, transport, path = case
    loop = asyncio.get_running_loop()
    proto = BatchStamps(count) if path == "batch" else Stamps(count)
    if transport is None:
        tr, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    else:
        tr, _ = await open_datagram_endpoint(lambda: proto, transport=transport,
                                             local_addr=("127.0.0.1", 0))
    pub = mp.get_context("fork").Process(
        target=_publisher, args=(tr.get_extra_info("sockname")[1], count, 0.0002))
    pub.start()
    try:
        await asyncio.wait_for(proto.done.wait(), 60)
    finally:
        pub.kill()
        pub.join()
        tr.close()
    lat = sorted(proto.lat[count // 10:])
    return {"rtt_p50_us": None, "one_way_p50_us": round(lat[len(lat) // 2] / 1e3, 1),
            "one_way_p99_us": round(lat[int(len(lat) * 0.99)] / 1e3, 1)}


def recvmmsg_floor(packets, rounds):
    """The kernel's own cost: the same burst drained by recvmmsg in C, no loop, no protocol."""
    from aiolowlat._native import ffi, lib

    bufs = [ffi.new(f"unsigned char[{2048 * 64}]"), ffi.new("int32_t[64]"),
            ffi.new("int64_t[64]"), ffi.new("unsigned char[8192]"), ffi.new("uint32_t[64]")]
    rates = []
    for _ in range(rounds):
        sock, _ = open_udp_socket(("127.0.0.1", 0), rcvbuf=64 << 20, rcvbuf_force=True)
        with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for packet in packets:
                tx.sendto(packet, sock.getsockname())
            got, started = 0, time.perf_counter()
            while got < len(packets):
                n = lib.al_recv_batch(sock.fileno(), bufs[0], 2048, 64, *bufs[1:])
                if n <= 0:
                    return {"error": f"recvmmsg returned {n} after {got} packets"}
                got += n
            rates.append(time.perf_counter() - started)
    return min(rates)


def run_case(case, what, settings, packets, want):
    loop = new_loop(case[1])
    try:
        if what == "one_way":
            coro = one_way(case, settings.latency_count)
        else:
            decode = {"count": None, "decode": "python", "decode_c": "c"}[what]
            coro = ingest(case, packets, want, decode, settings.rounds)
        return loop.run_until_complete(asyncio.wait_for(coro, 120))
    except Exception as exc:  # one broken case must not stop the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        loop.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under 60 s")
    args = parser.parse_args(argv)
    args.rounds = 1 if args.quick else 3
    args.latency_count = 2000 if args.quick else 10000
    os.sched_setaffinity(0, {0})  # the receiver owns core 0; latency publisher shares it
    # Raise glibc's mmap threshold as a long-running process has: asyncio's endpoint reads
    # into 256 KiB buffers, which a fresh process would map and unmap on every datagram.
    bytearray(1 << 20)
    messages = generate_session(1, events=60000 if args.quick else 200000)
    packets = packetize(messages, "BENCH00001", end_of_session_packets=0)
    want = sum(_COUNT.unpack_from(p, 18)[0] for p in packets)
    rows = []
    for what in ("count", "decode", "decode_c", "one_way"):
        for case in CASES:
            if what == "one_way" and case[3] == "batch" and case[2] == "kernel" \
                    and case[1] == "asyncio":
                continue
            row = {"bench": "multicast_ingest", "case": what, "impl": case[0], "loop": case[1],
                   "path": case[3]}
            row.update(run_case(case, what, args, packets, want))
            row = {k: v for k, v in row.items() if v is not None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    floor = recvmmsg_floor(packets, args.rounds)
    if isinstance(floor, float):
        row = {"bench": "multicast_ingest", "case": "count", "impl": "recvmmsg-floor",
               "loop": "none", "path": "C", "msgs_per_s": round(want / floor),
               "ns_per_msg": round(floor / want * 1e9, 1)}
    else:
        row = {"bench": "multicast_ingest", "case": "count", "impl": "recvmmsg-floor",
               "loop": "none", "path": "C", **floor}
    rows.insert(len(CASES), row)  # beside the other count rows: the ceiling of any ratio
    print(json.dumps(row), flush=True)
    base = {r["case"]: r.get("msgs_per_s") for r in rows if r["impl"] == "asyncio-endpoint"}
    print(f"\n{'case':8} {'impl':18} {'loop':10} {'path':9} {'msgs/s':>12} {'ns/msg':>8} "
          f"{'1way p50':>9} {'p99':>7}  vs asyncio endpoint")
    for r in rows:
        ratio = (f"{r['msgs_per_s'] / base[r['case']]:.2f}x"
                 if r.get("msgs_per_s") and base.get(r["case"]) else "")
        print(f"{r['case']:8} {r['impl']:18} {r['loop']:10} {r['path']:9} "
              f"{r.get('msgs_per_s', '-'):>12} {r.get('ns_per_msg', '-'):>8} "
              f"{r.get('one_way_p50_us', '-'):>9} {r.get('one_way_p99_us', '-'):>7}  "
              f"{ratio or r.get('error', '')}")
    print(f"({len(packets)} packets, {want} ITCH messages per ingest round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
