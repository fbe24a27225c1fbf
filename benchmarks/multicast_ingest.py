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

Over a veth pair ("count_veth", "one_way_veth"; root: namespaces, XDP): the same
burst multicast from namespace b to a group that namespace a receives with asyncio's
endpoint and on the kernel, uring, af_xdp and dpdk transports, so every row has a
same-path peer (count_veth's ratio column is to asyncio's endpoint over veth,
one_way_veth's to the kernel transport). count_veth: every
datagram of the burst waits in the socket buffer or in the engine's ring (the engine
thread, on core 1, took all of them: none lost) before the timed drain.
one_way_veth: the busy-polling aiolowlat loop on core 1 (the engines run inline on
it), the publisher in namespace b on core 0.

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
from aiolowlat.sim.itch_publisher import multicast_send_socket
from aiolowlat.transports import EngineConfig, open_datagram_endpoint, open_udp_socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # netns.py: the veth pair's helpers

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

# Over veth: asyncio's endpoint as the baseline, every transport's batch path.
VETH_CASES = [
    ("asyncio-endpoint", "asyncio", None, "datagram"),
    ("aiolowlat-kernel", "aiolowlat", "kernel", "batch"),
    ("aiolowlat-uring", "aiolowlat", "uring", "batch"),
    ("aiolowlat-af_xdp", "aiolowlat", "af_xdp", "batch"),
    ("aiolowlat-dpdk", "aiolowlat", "dpdk", "batch"),
]
VETH_GROUP, VETH_PORT, ENGINE_IP = "239.9.9.9", 31900, "192.0.2.10"
ENGINES = ("af_xdp", "dpdk")


def new_loop(kind):
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "aiolowlat-busy":
        return aiolowlat.new_event_loop(busy_poll=True)
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


# -- over a veth pair between two namespaces --

def _veth_socket(pair):
    """The receiving socket in namespace a, joined to the group on its end of the veth."""
    from netns import in_netns

    return in_netns(pair.a, lambda: open_udp_socket(
        (VETH_GROUP, VETH_PORT), groups=[VETH_GROUP], interface=pair.dev_a, rcvbuf=64 << 20,
        rcvbuf_force=True)[0])


def _engine_config(pair, busy, slots):
    if busy:  # the engine runs inline on the busy-polling loop's core
        return EngineConfig(interface=pair.dev_a, netns=pair.a, local_ip=ENGINE_IP, poll=True,
                            threaded=False, ring_slots=slots, slot_size=512)
    # The engine thread spins on core 1 so that it takes the whole burst (a sleeping one
    # lets the XSK's RX ring overflow); the drain runs on core 0.
    return EngineConfig(interface=pair.dev_a, netns=pair.a, local_ip=ENGINE_IP, core=1,
                        busy_poll=True, ring_slots=slots, slot_size=512)


async def _open_engine(pair, transport, factory, busy, slots=16384):
    return await open_datagram_endpoint(
        factory, transport=transport, local_addr=(VETH_GROUP, VETH_PORT), groups=[VETH_GROUP],
        engine=_engine_config(pair, busy, slots))


def _send_burst(pair, packets, taken=None, chunk=256):
    """Multicast packets from namespace b in chunks; after each, until taken() (what the
    receiver has) catches up, or a millisecond without it: the 2 cores here are shared,
    and a burst faster than the receiver's thread overflows the rings before it."""
    from netns import in_netns

    with in_netns(pair.b, multicast_send_socket, pair.dev_b) as tx:
        tx.setblocking(True)
        for start in range(0, len(packets), chunk):
            for packet in packets[start:start + chunk]:
                tx.sendto(packet, (VETH_GROUP, VETH_PORT))
            sent = min(start + chunk, len(packets))
            for _ in range(2000):  # bounded: up to 1 s per chunk
                if taken is None or taken() >= sent:
                    break
                time.sleep(0.0005)
            if taken is None:
                time.sleep(0.001)


async def ingest_veth(case, pair, packets, want, rounds):
    """Drain a burst that waits whole in the socket buffer or the engine's ring."""
    _, _, transport, _ = case
    rates = []
    for _ in range(rounds):
        factory = (lambda: BatchCounter(want, None)) if case[3] == "batch" \
            else (lambda: Counter(want, None))
        if transport in ENGINES:
            tr, proto = await _open_engine(pair, transport, factory, busy=False)
            tr.pause_reading()
            _send_burst(pair, packets, lambda tr=tr: tr.stats()["endpoint"]["rx_udp"])
            for _ in range(500):  # bounded: until the engine thread has taken the burst
                if tr.stats()["endpoint"]["rx_udp"] >= len(packets):
                    break
                await asyncio.sleep(0.01)
            stats = tr.stats()
            if stats["endpoint"]["rx_udp"] < len(packets) or stats["rx_ring_full"]:
                tr.close()
                return {"error": f"engine took {stats['endpoint']['rx_udp']} of {len(packets)}"
                                 f" datagrams (its ring full: {stats['rx_ring_full']}, lost "
                                 f"before it: {stats['nic_rx_dropped']})"}
            started = time.perf_counter()
            tr.resume_reading()
        else:
            sock = _veth_socket(pair)
            _send_burst(pair, packets)
            await asyncio.sleep(0.05)  # the receive softirq may trail the last send
            started = time.perf_counter()
            if transport is None:
                tr, proto = await asyncio.get_running_loop().create_datagram_endpoint(
                    factory, sock=sock)
            else:
                tr, proto = await open_datagram_endpoint(factory, transport=transport,
                                                         sock=sock)
        try:
            await asyncio.wait_for(proto.done.wait(), 30)
            elapsed = time.perf_counter() - started  # not the close: an engine's stop is slow
        except TimeoutError:
            return {"error": f"lost messages: {proto.messages} of {want}"}
        finally:
            tr.close()
            await asyncio.sleep(0.01)
        rates.append(want / elapsed)
    rates.sort()
    return {"msgs_per_s": round(rates[len(rates) // 2]), "ns_per_msg":
            round(1e9 / rates[len(rates) // 2], 1)}


def _veth_publisher(pair, count, gap_s):
    from netns import _enter

    _enter(pair.b)  # a forked child: its one thread moves to namespace b
    os.sched_setaffinity(0, {0})
    with multicast_send_socket(pair.dev_b) as tx:
        tx.setblocking(True)
        for _ in range(count):
            tx.sendto(struct.pack("=q", time.time_ns()) + bytes(56), (VETH_GROUP, VETH_PORT))
            time.sleep(gap_s)


async def one_way_veth(case, pair, count):
    _, _, transport, _ = case
    proto = BatchStamps(count)
    if transport in ENGINES:
        tr, _ = await _open_engine(pair, transport, lambda: proto, busy=True, slots=4096)
    else:
        tr, _ = await open_datagram_endpoint(lambda: proto, transport=transport,
                                             sock=_veth_socket(pair))
    pub = mp.get_context("fork").Process(target=_veth_publisher, args=(pair, count, 0.0002))
    pub.start()
    try:
        await asyncio.wait_for(proto.done.wait(), 30)
    finally:
        pub.kill()
        pub.join()
        tr.close()
        await asyncio.sleep(0.01)
    lat = sorted(proto.lat[count // 10:])
    return {"one_way_p50_us": round(lat[len(lat) // 2] / 1e3, 1),
            "one_way_p99_us": round(lat[int(len(lat) * 0.99)] / 1e3, 1)}


def run_veth_case(case, what, settings, pair, packets, want):
    loop = new_loop("aiolowlat-busy" if what == "one_way_veth" else case[1])
    try:
        if what == "one_way_veth":
            os.sched_setaffinity(0, {1})  # the busy loop's own core; the publisher has 0
            coro = one_way_veth(case, pair, settings.latency_count)
        else:
            coro = ingest_veth(case, pair, packets, want, settings.veth_rounds)
        return loop.run_until_complete(asyncio.wait_for(coro, 120))
    except Exception as exc:  # one broken case must not stop the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        os.sched_setaffinity(0, {0})
        loop.close()


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


def veth_rows(args, packets, want):
    """count_veth and one_way_veth over a veth pair made (and removed) here."""
    from netns import VethPair, ip

    rows = []
    with VethPair() as pair:
        # A real NIC puts full UDP checksums on the wire; veth leaves them to offload.
        ip("netns", "exec", pair.b, "ethtool", "-K", pair.dev_b, "tx", "off")
        for what in ("count_veth", "one_way_veth"):
            for case in VETH_CASES:
                if what == "one_way_veth" and case[2] is None:
                    continue  # the one-way rows run on the busy aiolowlat loop
                row = {"bench": "multicast_ingest", "case": what, "impl": case[0],
                       "loop": "aiolowlat-busy" if what == "one_way_veth" else case[1],
                       "path": case[3]}
                row.update(run_veth_case(case, what, args, pair, packets, want))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under 60 s")
    args = parser.parse_args(argv)
    args.rounds = 1 if args.quick else 3
    args.latency_count = 2000 if args.quick else 10000
    args.veth_rounds = 3 if args.quick else 5  # a round is short here; the median steadies it
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
    rows += veth_rows(args, packets, want)
    base = {r["case"]: r for r in rows if r["impl"] == "asyncio-endpoint"}
    for r in rows:  # one-way over veth: the kernel transport on the same busy loop
        if r["case"] == "one_way_veth" and r["impl"] == "aiolowlat-kernel":
            base[r["case"]] = r
    print(f"\n{'case':12} {'impl':18} {'loop':14} {'path':9} {'msgs/s':>12} {'ns/msg':>8} "
          f"{'1way p50':>9} {'p99':>7}  vs asyncio endpoint on the same path "
          "(one_way_veth: vs kernel)")
    for r in rows:
        peer = base.get(r["case"], {})
        if r.get("msgs_per_s") and peer.get("msgs_per_s"):
            ratio = f"{r['msgs_per_s'] / peer['msgs_per_s']:.2f}x"
        elif r.get("one_way_p50_us") and peer.get("one_way_p50_us"):
            ratio = f"{r['one_way_p50_us'] / peer['one_way_p50_us']:.2f}x latency"
        else:
            ratio = ""
        print(f"{r['case']:12} {r['impl']:18} {r['loop']:14} {r['path']:9} "
              f"{r.get('msgs_per_s', '-'):>12} {r.get('ns_per_msg', '-'):>8} "
              f"{r.get('one_way_p50_us', '-'):>9} {r.get('one_way_p99_us', '-'):>7}  "
              f"{ratio or r.get('error', '')}")
    print(f"({len(packets)} packets, {want} ITCH messages per ingest round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
