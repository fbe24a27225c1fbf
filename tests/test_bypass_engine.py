"""The af_xdp and dpdk transports on a veth pair between two namespaces the tests make.

The engine owns dev_a in namespace a with an address the kernel there does not have
(ENGINE_IP), so only the engine can answer for it: ARP included. The peer in namespace
b is an ordinary kernel socket. The peer's veth computes UDP checksums in software
(tx offload off), as a real NIC puts a full checksum on the wire.
"""

import asyncio
import concurrent.futures
import ctypes
import errno
import gc
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from conftest import run
from netns import VethPair, in_netns, ip
from test_bypass_pkt import udp_frame
from test_itch_feed_handler import (
    ONE_PERCENT,
    SEED,
    lost_on_both_lines,
    new_handler,
    reference_snapshot,
)

import aiolowlat
from aiolowlat.sim import ItchFeed
from aiolowlat.sim.itch_publisher import ItchPublisher
from aiolowlat.transports import (
    EngineConfig,
    TransportUnavailableError,
    _engine,
    open_datagram_endpoint,
    open_udp_socket,
)
from aiolowlat.transports._engine import Engine

ENGINE_IP, PORT, GROUP = "192.0.2.10", 30001, "239.7.7.7"
# dpdk: the engine's default vdev, net_af_xdp on this veth; dpdk-af_packet: its fallback
KINDS = ("af_xdp", "dpdk", "dpdk-af_packet")


@pytest.fixture(scope="module")
def hosts():
    with VethPair() as pair:
        ip("netns", "exec", pair.b, "ethtool", "-K", pair.dev_b, "tx", "off")
        yield pair


@pytest.fixture(scope="module", autouse=True)
def dpdk_eal(hosts):
    """DPDK's EAL is initialised once per process and keeps its fds (an interrupt pipe,
    epoll, timerfd, the memory memfd) for good: make it exist before any fd count."""
    Engine("dpdk", config(hosts), ENGINE_IP).stop()


def config(hosts, kind="", **options):
    if kind == "dpdk-af_packet":
        options["vdev"] = f"net_af_packet,iface={hosts.dev_a},framecnt=4096"
    return EngineConfig(interface=hosts.dev_a, netns=hosts.a, **options)


def transport_of(kind):
    return kind.split("-")[0]


def forget_engine(hosts):
    """The peer forgets the engine's MAC, so its next datagram starts with ARP."""
    ip("-n", hosts.b, "neigh", "flush", "dev", hosts.dev_b)


def peer_neighbour(hosts):
    return subprocess.run(["ip", "-n", hosts.b, "neigh", "show", ENGINE_IP, "dev", hosts.dev_b],
                          capture_output=True, text=True, timeout=10).stdout


def xdp_attached(hosts) -> bool:
    out = subprocess.run(["ip", "-n", hosts.a, "link", "show", hosts.dev_a], capture_output=True,
                         text=True, timeout=10).stdout
    return "prog/xdp" in out


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(b"echo " + data, addr)


class BatchEcho(Echo):
    """The batch path: a list of (data, addr, rx_ns) per loop iteration."""

    def datagrams_received(self, batch):
        self.stamps = [rx_ns for _, _, rx_ns in batch]
        for data, addr, _ in batch:
            self.transport.sendto(b"echo " + data, addr)


class Collect(asyncio.DatagramProtocol):
    def __init__(self, want):
        self.want, self.got, self.done = want, [], asyncio.Event()

    def datagram_received(self, data, addr):
        self.got.append((data, addr))
        if len(self.got) >= self.want:
            self.done.set()


async def open_peer(hosts, want):
    sock = in_netns(hosts.b, lambda: open_udp_socket((hosts.addr_b, 0))[0])
    return await open_datagram_endpoint(lambda: Collect(want), transport="kernel", sock=sock)


async def echo_round(hosts, kind, protocol, count=20, expect_xdp_mode=None, **options):
    forget_engine(hosts)
    tr, _ = await open_datagram_endpoint(protocol, transport=transport_of(kind),
                                         local_addr=(ENGINE_IP, PORT),
                                         engine=config(hosts, kind, **options))
    peer_tr, peer = await open_peer(hosts, count)
    try:
        for i in range(count):
            peer_tr.sendto(b"ping %d" % i, (ENGINE_IP, PORT))
        await asyncio.wait_for(peer.done.wait(), 5)
        stats = tr.get_extra_info("engine").stats()
        mac = tr.get_extra_info("mac")
    finally:
        peer_tr.close()
        tr.close()
        await asyncio.sleep(0.01)
    assert sorted(d for d, _ in peer.got) == sorted(b"echo ping %d" % i for i in range(count))
    assert {addr for _, addr in peer.got} == {(ENGINE_IP, PORT)}
    assert f"lladdr {mac}" in peer_neighbour(hosts)  # the peer learned us from our ARP reply
    assert stats["arp_replies"] >= 1 and stats["rx_udp"] == count
    assert stats["tx_frames"] == count and stats["rx_ring_full"] == 0
    # XDP native on veth for the af_xdp engine and dpdk's default vdev, net_af_xdp
    if expect_xdp_mode is None:
        expect_xdp_mode = 0 if kind == "dpdk-af_packet" else 2
    assert stats["xdp_mode"] == expect_xdp_mode
    return stats


@pytest.mark.parametrize("kind", KINDS)
def test_udp_echo_through_the_engine_answers_arp(loop, hosts, kind):
    run(loop, echo_round(hosts, kind, Echo))


@pytest.mark.parametrize("kind", KINDS)
def test_batches_carry_receive_times(loop, hosts, kind):
    async def main():
        protocol = BatchEcho()
        before = time.time_ns()
        await echo_round(hosts, kind, lambda: protocol)
        assert protocol.stamps and all(before <= ns <= time.time_ns() for ns in protocol.stamps)

    run(loop, main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [dict(poll=True), dict(poll=True, threaded=False),
                                     dict(busy_poll=True, core=1)],
                         ids=["loop-polls-ring", "inline-engine", "busy-engine-pinned"])
def test_polling_modes(hosts, kind, options):
    lp = aiolowlat.new_event_loop(busy_poll=True)
    try:
        run(lp, echo_round(hosts, kind, Echo, **options))
    finally:
        lp.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_engine_resolves_a_destination_by_arp(loop, hosts, kind):
    async def main():
        ip("-n", hosts.b, "neigh", "flush", "dev", hosts.dev_b)
        tr, _ = await open_datagram_endpoint(asyncio.DatagramProtocol, transport=transport_of(kind),
                                             local_addr=(ENGINE_IP, PORT),
                                             engine=config(hosts, kind))
        peer_tr, peer = await open_peer(hosts, 3)
        try:
            for i in range(3):  # the first ones wait in the engine for the ARP reply
                tr.sendto(b"first contact %d" % i, peer_tr.get_extra_info("sockname"))
            await asyncio.wait_for(peer.done.wait(), 5)
            stats = tr.get_extra_info("engine").stats()
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert [d for d, _ in peer.got] == [b"first contact %d" % i for i in range(3)]
        assert stats["arp_requests"] >= 1 and stats["arp_learned"] >= 1
        assert stats["tx_unresolved"] == 0

    run(loop, main())


@pytest.mark.parametrize("kind", KINDS)
def test_static_arp_entries_are_used_without_asking(loop, hosts, kind):
    async def main():
        out = subprocess.run(["ip", "-n", hosts.b, "link", "show", hosts.dev_b],
                             capture_output=True, text=True, timeout=10).stdout
        peer_mac = out.split("link/ether ")[1].split()[0]
        tr, _ = await open_datagram_endpoint(
            asyncio.DatagramProtocol, transport=transport_of(kind),
            local_addr=(ENGINE_IP, PORT),
            engine=config(hosts, kind, static_arp={hosts.addr_b: peer_mac}))
        peer_tr, peer = await open_peer(hosts, 1)
        try:
            tr.sendto(b"known", peer_tr.get_extra_info("sockname"))
            await asyncio.wait_for(peer.done.wait(), 5)
            stats = tr.get_extra_info("engine").stats()
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert stats["arp_requests"] == 0 and peer.got[0][0] == b"known"

    run(loop, main())


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_and_foreign_frames_are_counted_and_dropped(loop, hosts, kind):
    async def main():
        received = []

        class Record(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.append(data)

        tr, _ = await open_datagram_endpoint(Record, transport=transport_of(kind),
                                             local_addr=(ENGINE_IP, PORT),
                                             engine=config(hosts, kind))
        mac = bytes.fromhex(tr.get_extra_info("mac").replace(":", ""))
        base = dict(dst_mac=mac, src=hosts.addr_b, dst=ENGINE_IP, dport=PORT)
        bad = {
            "ip_checksum": [udp_frame(b"bad", bad_ip_sum=True, **base)],
            "udp_checksum": [udp_frame(b"bad", bad_udp_sum=True, **base)],
            "fragment": [udp_frame(b"bad", frag=0x2000, **base),
                         udp_frame(b"bad", frag=0x0020, **base)],
            "port": [udp_frame(b"bad", **{**base, "dport": PORT + 1})],
            "protocol": [udp_frame(b"bad", proto=6, **base)],
            "ip_dst": [udp_frame(b"bad", **{**base, "dst": "192.0.2.99"})],
            "vlan": [udp_frame(b"bad", vlan=9, **base)],
            "short": [udp_frame(b"bad", **base)[:31]],
            "mac": [udp_frame(b"bad", **{**base, "dst_mac": bytes.fromhex("02dead00beef")})],
            "ip_header": [mac + bytes(6) + b"\x08\x00\x46" + bytes(40)],
        }
        before = tr.get_extra_info("engine").stats()["drops"]
        with in_netns(hosts.b, socket.socket, socket.AF_PACKET, socket.SOCK_RAW) as raw:
            in_netns(hosts.b, raw.bind, (hosts.dev_b, 0))
            for frames in bad.values():
                for frame in frames:
                    raw.send(frame)
            raw.send(udp_frame(b"marker", **base))
            for _ in range(300):  # bounded: until the marker is through
                if received:
                    break
                await asyncio.sleep(0.01)
        after = tr.get_extra_info("engine").stats()["drops"]
        tr.close()
        await asyncio.sleep(0.01)
        assert received == [b"marker"]
        for reason, frames in bad.items():
            grew = after[reason] - before[reason]
            if reason == "mac":  # the peer's kernel may send its own frames meanwhile
                assert grew >= 1
            elif reason == "fragment" and kind == "dpdk-af_packet":
                # net_af_packet's socket uses PACKET_FANOUT_FLAG_DEFRAG: the kernel holds
                # fragments for reassembly, and these never complete, so none reach us.
                assert grew == 0
            else:
                assert grew == len(frames), reason

    run(loop, main())


@pytest.mark.parametrize("kind", KINDS)
def test_endpoints_share_one_engine_routed_by_port(loop, hosts, kind):
    """Two endpoints on one engine and queue: each gets its own port's datagrams and
    answers from it; another port is a counted drop; the engine stops with the last."""
    async def main():
        cfg = config(hosts, kind)
        first, _ = await open_datagram_endpoint(Echo, transport=transport_of(kind),
                                                local_addr=(ENGINE_IP, PORT), engine=cfg)
        second, _ = await open_datagram_endpoint(BatchEcho, transport=transport_of(kind),
                                                 local_addr=(ENGINE_IP, PORT + 1), engine=cfg)
        engine = first.get_extra_info("engine")
        assert second.get_extra_info("engine") is engine
        with pytest.raises(OSError) as taken:
            await open_datagram_endpoint(Echo, transport=transport_of(kind),
                                         local_addr=(ENGINE_IP, PORT),
                                         engine=cfg)
        assert taken.value.errno == errno.EADDRINUSE
        with pytest.raises(ValueError, match="other options"):
            await open_datagram_endpoint(Echo, transport=transport_of(kind),
                                         local_addr=(ENGINE_IP, PORT + 2),
                                         engine=config(hosts, kind, ring_slots=1024))
        peer_tr, peer = await open_peer(hosts, 4)
        try:
            port_drops = engine.stats()["drops"]["port"]
            for i in range(2):
                peer_tr.sendto(b"one %d" % i, (ENGINE_IP, PORT))
                peer_tr.sendto(b"two %d" % i, (ENGINE_IP, PORT + 1))
                peer_tr.sendto(b"nobody", (ENGINE_IP, PORT + 2))
            await asyncio.wait_for(peer.done.wait(), 5)
            assert engine.stats()["drops"]["port"] - port_drops == 2
            assert first.stats()["endpoint"]["rx_udp"] == 2
            assert second.stats()["endpoint"]["rx_udp"] == 2
            first.close()
            await asyncio.sleep(0.01)
            assert engine.running and (kind == "dpdk-af_packet" or xdp_attached(hosts))
            peer.want, peer.done = 5, asyncio.Event()
            peer_tr.sendto(b"still", (ENGINE_IP, PORT + 1))
            await asyncio.wait_for(peer.done.wait(), 5)
        finally:
            peer_tr.close()
            first.close()
            second.close()
            await asyncio.sleep(0.01)
        assert not engine.running and not xdp_attached(hosts)
        assert sorted(peer.got) == sorted(
            [(b"echo one %d" % i, (ENGINE_IP, PORT)) for i in range(2)]
            + [(b"echo two %d" % i, (ENGINE_IP, PORT + 1)) for i in range(2)]
            + [(b"echo still", (ENGINE_IP, PORT + 1))])

    run(loop, main())


@pytest.mark.parametrize("kind", KINDS)
def test_an_engines_endpoint_and_group_limits_are_errors(hosts, kind):
    engine = Engine(transport_of(kind), config(hosts, kind), ENGINE_IP)
    try:
        with pytest.raises(ValueError, match="not an IPv4 multicast group"):
            engine.open(ENGINE_IP, PORT, ["192.0.2.99"])
        with pytest.raises(OSError, match="groups per endpoint"):
            engine.open(ENGINE_IP, PORT, [f"239.8.0.{i}" for i in range(9)])
        for i in range(16):
            engine.open(ENGINE_IP, PORT + i)
        with pytest.raises(OSError, match="at most 16 endpoints") as full:
            engine.open(ENGINE_IP, PORT + 16)
        assert full.value.errno == errno.ENOSPC
        engine.close_endpoint(3)
        assert engine.open(GROUP, PORT, [GROUP]) == 3  # a freed slot is reused
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_stopping_the_engine_closes_its_endpoints(loop, hosts, kind):
    async def main():
        lost = asyncio.Event()

        class Watch(asyncio.DatagramProtocol):
            def connection_lost(self, exc):
                lost.set()

        tr, _ = await open_datagram_endpoint(Watch, transport=transport_of(kind),
                                             local_addr=(ENGINE_IP, PORT),
                                             engine=config(hosts, kind))
        tr.get_extra_info("engine").stop()
        assert tr.is_closing()
        tr.sendto(b"after stop", (hosts.addr_b, 9))  # dropped, no crash
        await asyncio.wait_for(lost.wait(), 5)
        assert not xdp_attached(hosts)

    run(loop, main())


def _blast(hosts, count):
    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i in range(count):
                tx.sendto(b"burst %d" % i, (ENGINE_IP, PORT))
    in_netns(hosts.b, send)


@pytest.mark.parametrize("kind", KINDS)
def test_what_the_nic_queue_drops_before_the_engine_is_counted(loop, hosts, kind):
    """An inline engine nobody polls: its queue (the XSK's RX ring, net_af_packet's kernel
    ring) overflows; every datagram is then either delivered or counted as lost."""
    async def main():
        forget_engine(hosts)
        count = 6000
        got = []

        class Count(asyncio.DatagramProtocol):
            def datagrams_received(self, batch):
                got.extend(batch)

        tr, _ = await open_datagram_endpoint(
            Count, transport=transport_of(kind), local_addr=(ENGINE_IP, PORT),
            engine=config(hosts, kind, poll=True, threaded=False, ring_slots=8192))
        _blast(hosts, 1)  # ARP first, while the loop polls
        for _ in range(300):  # bounded
            if got:
                break
            await asyncio.sleep(0.01)
        _blast(hosts, count)  # the loop is not running meanwhile: nobody polls
        for _ in range(500):  # bounded: until every datagram is accounted for
            stats = tr.stats()
            if len(got) + stats["nic_rx_dropped"] >= count + 1:
                break
            await asyncio.sleep(0.01)
        tr.close()
        await asyncio.sleep(0.01)
        assert stats["nic_rx_dropped"] > 0
        assert len(got) + stats["nic_rx_dropped"] == count + 1
        assert stats["endpoint"]["rx_udp"] == len(got)

    run(loop, main())


def _rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@pytest.mark.parametrize("kind", KINDS)
def test_fifty_starts_and_stops_leak_nothing(hosts, kind):
    cfg = config(hosts, kind, ring_slots=1024)

    def cycle(n):
        for _ in range(n):
            engine = Engine(transport_of(kind), cfg, ENGINE_IP)
            assert (kind == "dpdk-af_packet") != xdp_attached(hosts)
            engine.close_endpoint(engine.open(ENGINE_IP, PORT))
            engine.open(GROUP, PORT + 1, [GROUP])  # stop frees what is still open
            engine.stop()
            assert not xdp_attached(hosts)

    cycle(3)  # first-use allocations (DPDK's EAL, libxdp) are not leaks
    gc.collect()
    fds, rss = len(os.listdir("/proc/self/fd")), _rss_kib()
    cycle(50)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert _rss_kib() - rss < 16 * 1024, "RSS grew by more than 16 MiB over 50 cycles"


@pytest.mark.parametrize("kind", ["af_xdp", "dpdk"])
def test_a_program_left_by_a_killed_process_is_cleared(hosts, kind):
    code = ("import sys, time; sys.path.insert(0, 'tests');"
            "from aiolowlat.transports._engine import Engine, EngineConfig;"
            f"e = Engine({kind!r}, EngineConfig(interface={hosts.dev_a!r}, netns={hosts.a!r}),"
            f" {ENGINE_IP!r}); print('up', flush=True); time.sleep(30)")
    with subprocess.Popen(["python", "-c", code], stdout=subprocess.PIPE, text=True,
                          executable=sys.executable) as child:
        try:
            assert child.stdout.readline().strip() == "up"
        finally:
            child.kill()
    assert xdp_attached(hosts)  # SIGKILL: nobody detached it
    engine = Engine(kind, config(hosts), ENGINE_IP)
    try:
        assert engine.stats()["stale_xdp_cleared"] == 1
        assert engine.stats()["xdp_mode"] == 2  # dpdk: on net_af_xdp, not its fallback
    finally:
        engine.stop()
    assert not xdp_attached(hosts)


_SYS_BPF, _BPF_PROG_LOAD, _BPF_LINK_CREATE, _BPF_PROG_TYPE_XDP, _BPF_XDP = 321, 5, 28, 6, 37


def _bpf(cmd, attr: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(_SYS_BPF, cmd, buf, 128)
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf({cmd})")
    return fd


def attach_foreign_xdp(ifname) -> int:
    """Someone else's XDP program on ifname (r0 = XDP_PASS; exit, named al_foreign),
    attached by a BPF link in this thread's namespace: the link's fd; closing detaches."""
    code = struct.pack("<BBhiBBhi", 0xB7, 0, 0, 2, 0x95, 0, 0, 0)  # mov r0, 2; exit
    insns, license_ = ctypes.create_string_buffer(code), ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16s", _BPF_PROG_TYPE_XDP, 2, ctypes.addressof(insns),
                       ctypes.addressof(license_), 0, 0, 0, 0, 0, b"al_foreign")
    prog = _bpf(_BPF_PROG_LOAD, attr)
    try:
        return _bpf(_BPF_LINK_CREATE, struct.pack("<IIII", prog, socket.if_nametoindex(ifname),
                                                  _BPF_XDP, 0))
    finally:
        os.close(prog)  # the link holds the program


def test_dpdk_falls_back_to_af_packet_where_xdp_is_taken(loop, hosts):
    """Another XDP program on the interface: the dpdk engine's default vdev, net_af_xdp,
    cannot attach, so it runs on net_af_packet (xdp_mode 0) and leaves that program be."""
    link = in_netns(hosts.a, attach_foreign_xdp, hosts.dev_a)
    try:
        stats = run(loop, echo_round(hosts, "dpdk-default", Echo, expect_xdp_mode=0))
        assert stats["stale_xdp_cleared"] == 0 and stats["start_retries"] == 0
        assert xdp_attached(hosts)  # still the foreign program
    finally:
        os.close(link)
    assert not xdp_attached(hosts)


def test_missing_pieces_are_named():
    async def main():
        with pytest.raises(TransportUnavailableError, match="no interface nosuchif0"):
            await open_datagram_endpoint(asyncio.DatagramProtocol, transport="af_xdp",
                                         local_addr=(ENGINE_IP, PORT),
                                         engine=EngineConfig(interface="nosuchif0"))
        with pytest.raises(ValueError, match="needs interface"):
            await open_datagram_endpoint(asyncio.DatagramProtocol, transport="dpdk",
                                         local_addr=(ENGINE_IP, PORT))
        with pytest.raises(ValueError, match="fixed port"):
            await open_datagram_endpoint(asyncio.DatagramProtocol, transport="af_xdp",
                                         local_addr=(ENGINE_IP, 0), interface="lo")
        with pytest.raises(ValueError, match="local_ip"):
            await open_datagram_endpoint(asyncio.DatagramProtocol, transport="af_xdp",
                                         local_addr=(GROUP, PORT), interface="lo")

    asyncio.run(asyncio.wait_for(main(), 10))


# -- the ITCH feed handler over each transport: the same books --

FEED_CASES = [("aiolowlat", "kernel"), ("aiolowlat", "af_xdp"), ("aiolowlat", "dpdk"),
              ("aiolowlat", "dpdk-af_packet"), ("asyncio", "af_xdp"), ("uvloop", "dpdk")]
LINES = {"A": ("239.7.7.1", 30011), "B": ("239.7.7.2", 30012)}
REQUEST_PORT = 30013  # the handler's request endpoint (on the engine: ENGINE_IP)


def _kernel_line(group, port, interface):
    return open_udp_socket((group, port), groups=[group], interface=interface, rcvbuf=4 << 20)[0]


def _connected_socket(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(server)
    sock.setblocking(False)
    return sock


async def open_feed_endpoints(hosts, transport, handler, request_addr):
    """Lines A and B and the request endpoint in namespace a, all on one engine for the
    bypass transports; returns the transports."""
    if transport == "kernel":
        opened = []
        for line, (group, port) in LINES.items():
            sock = in_netns(hosts.a, _kernel_line, group, port, hosts.dev_a)
            tr, _ = await open_datagram_endpoint(lambda line=line: handler.protocol(line),
                                                 transport="kernel", sock=sock)
            opened.append(tr)
        sock = in_netns(hosts.a, _connected_socket, request_addr)
        tr, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            handler.request_protocol, sock=sock)
        return [*opened, tr]
    cfg, kind = config(hosts, transport, local_ip=ENGINE_IP), transport_of(transport)
    opened = []
    for line, (group, port) in LINES.items():
        tr, _ = await open_datagram_endpoint(lambda line=line: handler.protocol(line),
                                             transport=kind, local_addr=(group, port),
                                             groups=[group], engine=cfg)
        opened.append(tr)
    tr, _ = await _engine.open_endpoint(kind, handler.request_protocol,
                                        local_addr=(ENGINE_IP, REQUEST_PORT),
                                        remote_addr=request_addr, engine=cfg)
    return [*opened, tr]


@pytest.mark.parametrize("loop, transport", FEED_CASES, indirect=["loop"])
def test_feed_handler_builds_the_same_books_over_each_transport(loop, hosts, transport):
    """Lines A and B from the publisher in namespace b, both lossy (seed 25 loses one
    packet on both, so the request server across the veth must fill it), reordering and
    duplicating: the handler ends with the lossless book on every transport."""
    feed = ItchFeed(seed=SEED, events=3000, heartbeat_every=20)
    handler = new_handler(feed)
    server_ready = concurrent.futures.Future()
    go, finished = threading.Event(), threading.Event()

    def publish_from_b():
        async def serve_and_publish():
            publisher = ItchPublisher(feed, LINES, rate=30_000, interface=hosts.dev_b,
                                      impairments={"A": ONE_PERCENT, "B": ONE_PERCENT},
                                      request_addr=(hosts.addr_b, 0))
            async with publisher:
                server_ready.set_result(publisher.request_address)
                if await asyncio.to_thread(go.wait, 20):
                    await publisher.publish()
                    await asyncio.to_thread(finished.wait, 20)  # keep serving requests
            return publisher
        return asyncio.run(serve_and_publish())

    async def main():
        published = asyncio.get_running_loop().run_in_executor(None, in_netns, hosts.b,
                                                               publish_from_b)
        try:
            request_addr = await asyncio.wait_for(asyncio.wrap_future(server_ready), 10)
            endpoints = await open_feed_endpoints(hosts, transport, handler, request_addr)
            go.set()
            await asyncio.wait_for(handler.wait_end(), 20)
            stats = [tr.get_extra_info("engine") and tr.stats() for tr in endpoints]
        finally:
            go.set()
            finished.set()
            publisher = await published
        handler.close()
        await asyncio.sleep(0.01)
        return endpoints, publisher, stats

    endpoints, publisher, stats = run(loop, main(), timeout=40)
    assert lost_on_both_lines(publisher)  # the seed does make the server necessary
    sequencer = handler.sequencer
    assert sequencer.delivered == len(feed.messages)
    assert not handler.gaps and sequencer.unrecoverable == 0
    assert handler.builder.snapshot() == reference_snapshot(feed.messages)
    assert sequencer.retransmitted > 0 and publisher.server.answered_packets > 0
    assert sequencer.duplicates > 0
    for line in "AB":
        assert sequencer.lines[line].losses >= publisher.reports[line].dropped_messages > 0
    if transport != "kernel":
        engines = {id(tr.get_extra_info("engine")) for tr in endpoints}
        assert len(engines) == 1  # A, B and the requests share one engine and queue
        line_a, line_b, requests = (s["endpoint"] for s in stats)
        assert line_a["rx_udp"] <= publisher.sent["A"] and line_b["rx_udp"] <= publisher.sent["B"]
        # each datagram was routed to its endpoint or counted as lost before the engine
        # (none, unless the host is so loaded that the NIC queue overflowed)
        routed = line_a["rx_udp"] + line_b["rx_udp"] + requests["rx_udp"]
        sent = publisher.sent["A"] + publisher.sent["B"] + publisher.server.answered_packets
        assert routed + stats[0]["nic_rx_dropped"] == sent
        assert stats[0]["rx_ring_full"] == 0 and stats[0]["tx_frames"] == handler.requests_sent


def test_dpdk_eal_arguments_cannot_change_after_the_first_engine(hosts):
    with pytest.raises(TransportUnavailableError, match="cannot be initialised again"):
        Engine("dpdk", config(hosts, eal_args="--no-huge --no-pci -m 128"), ENGINE_IP)


@pytest.mark.parametrize("kind", KINDS)
def test_an_oversized_datagram_is_an_error_not_a_crash(loop, hosts, kind):
    async def main():
        errors = []

        class Errors(asyncio.DatagramProtocol):
            def error_received(self, exc):
                errors.append(exc)

        tr, _ = await open_datagram_endpoint(Errors, transport=transport_of(kind),
                                             local_addr=(ENGINE_IP, PORT),
                                             engine=config(hosts, kind))
        tr.sendto(bytes(tr.get_extra_info("engine").max_payload + 1), (hosts.addr_b, 9))
        with pytest.raises(ValueError, match="no remote_addr"):
            tr.sendto(b"where to?")
        tr.close()
        await asyncio.sleep(0.01)
        assert [e.errno for e in errors] == [errno.EMSGSIZE]

    run(loop, main())


# -- the per-datagram path in C (csrc/evloop.c): what a callback may do in the middle --

# eventfd: the engine thread wakes the loop; inline: the loop runs the engine each iteration
MODES = {"eventfd": {}, "inline": dict(poll=True, threaded=False)}


class Scripted(asyncio.DatagramProtocol):
    """Records what arrives; on_first(transport) runs inside the first datagram_received."""

    def __init__(self, on_first=None):
        self.got, self.lost, self.on_first = [], [], on_first
        self.arrived = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.got.append(data)
        self.arrived.set()
        if len(self.got) == 1 and self.on_first:
            self.on_first(self.transport)

    def connection_lost(self, exc):
        self.lost.append(exc)


async def engine_and_peer(hosts, protocol, mode, want=1):
    tr, _ = await open_datagram_endpoint(lambda: protocol, transport="af_xdp",
                                         local_addr=(ENGINE_IP, PORT),
                                         engine=config(hosts, **MODES[mode]))
    peer_tr, peer = await open_peer(hosts, want)
    return tr, peer_tr, peer


async def burst(peer_tr, count, prefix=b"d"):
    """count datagrams to the engine, sent back to back so they wait in its ring together."""
    for i in range(count):
        peer_tr.sendto(b"%s%d" % (prefix, i), (ENGINE_IP, PORT))


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_in_datagram_received_is_reported_and_receiving_goes_on(loop, hosts, mode):
    async def main():
        reported = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))

        class Fragile(Echo):
            def datagram_received(self, data, addr):
                if data.startswith(b"bad"):
                    raise ZeroDivisionError(data)
                super().datagram_received(data, addr)

        tr, peer_tr, peer = await engine_and_peer(hosts, Fragile(), mode, want=3)
        try:
            for data in (b"bad 1", b"ok 1", b"bad 2", b"ok 2", b"ok 3"):
                peer_tr.sendto(data, (ENGINE_IP, PORT))
            await asyncio.wait_for(peer.done.wait(), 5)
            await until(lambda: len(reported) == 2)
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert [d for d, _ in peer.got] == [b"echo ok 1", b"echo ok 2", b"echo ok 3"]
        assert [ctx["exception"].args[0] for ctx in reported] == [b"bad 1", b"bad 2"]
        assert all(ctx["message"].startswith("Exception in ")
                   and ctx["message"].endswith(".Fragile.datagram_received")
                   and ctx["transport"] is tr for ctx in reported)

    run(loop, main())


def test_sendto_errors_are_those_of_the_python_path(loop, hosts):
    async def main():
        errors = []

        class Errors(Scripted):
            def error_received(self, exc):
                errors.append(exc)

        tr, peer_tr, peer = await engine_and_peer(hosts, Errors(), "eventfd", want=2)
        to_peer = peer_tr.get_extra_info("sockname")
        try:
            with pytest.raises(ValueError, match="no remote_addr"):
                tr.sendto(b"where to?")
            with pytest.raises(ValueError):
                tr.sendto(b"x", ("not an address", 9))
            with pytest.raises(OverflowError):
                tr.sendto(b"x", (hosts.addr_b, 70000))
            with pytest.raises(TypeError):
                tr.sendto("text", to_peer)
            with pytest.raises(TypeError):
                tr.sendto(b"x", [hosts.addr_b, 9])  # unhashable: no cached address
            tr.sendto(bytes(tr.get_extra_info("engine").max_payload + 1), to_peer)
            tr.sendto(b"first", to_peer)  # packed by Python, cached
            tr.sendto(bytearray(b"second"), to_peer)  # not bytes: the Python path
            await asyncio.wait_for(peer.done.wait(), 5)
        finally:
            peer_tr.close()
            tr.close()
        tr.sendto(b"after close", to_peer)  # dropped silently, as before
        await asyncio.sleep(0.01)
        assert sorted(d for d, _ in peer.got) == [b"first", b"second"]
        assert [e.errno for e in errors] == [errno.EMSGSIZE]

    run(loop, main())


def test_sendto_goes_to_remote_addr_by_default(loop, hosts):
    async def main():
        peer_tr, peer = await open_peer(hosts, 2)
        to_peer = peer_tr.get_extra_info("sockname")
        tr, _ = await open_datagram_endpoint(Scripted, transport="af_xdp",
                                             local_addr=(ENGINE_IP, PORT), remote_addr=to_peer,
                                             engine=config(hosts))
        try:
            tr.sendto(b"one")
            tr.sendto(b"two", None)
            await asyncio.wait_for(peer.done.wait(), 5)
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert [d for d, _ in peer.got] == [b"one", b"two"]

    run(loop, main())


@pytest.mark.parametrize("mode", MODES)
def test_set_protocol_to_a_batched_protocol_mid_stream(loop, hosts, mode):
    async def main():
        batches = []

        class Batched(asyncio.DatagramProtocol):
            def datagrams_received(self, batch):
                batches.append(batch)

        first = Scripted(on_first=lambda tr: tr.set_protocol(Batched()))
        tr, peer_tr, _ = await engine_and_peer(hosts, first, mode)
        try:
            await burst(peer_tr, 10)
            await until(lambda: sum(map(len, batches)) == 9)
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert first.got == [b"d0"]
        assert [d for batch in batches for d, _, _ in batch] == [b"d%d" % i for i in range(1, 10)]
        assert all(addr[0] == hosts.addr_b and ns > 0 for b in batches for _, addr, ns in b)

    run(loop, main())


@pytest.mark.parametrize("mode", MODES)
def test_pause_reading_inside_the_callback_holds_the_rest(loop, hosts, mode):
    async def main():
        protocol = Scripted(on_first=lambda tr: tr.pause_reading())
        tr, peer_tr, _ = await engine_and_peer(hosts, protocol, mode)
        try:
            await burst(peer_tr, 5)
            await asyncio.wait_for(protocol.arrived.wait(), 5)
            await until(lambda: tr.stats()["endpoint"]["rx_udp"] == 5)
            await asyncio.sleep(0.05)
            held = list(protocol.got)
            tr.resume_reading()
            await until(lambda: len(protocol.got) == 5)
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert held == [b"d0"]
        assert protocol.got == [b"d%d" % i for i in range(5)]

    run(loop, main())


@pytest.mark.parametrize("mode", MODES)
def test_close_inside_the_callback_delivers_nothing_more(loop, hosts, mode):
    async def main():
        protocol = Scripted(on_first=lambda tr: tr.close())
        tr, peer_tr, _ = await engine_and_peer(hosts, protocol, mode)
        engine = tr.get_extra_info("engine")
        try:
            await burst(peer_tr, 5)
            await asyncio.wait_for(protocol.arrived.wait(), 5)
            await until(lambda: protocol.lost)
            await asyncio.sleep(0.05)
        finally:
            peer_tr.close()
            tr.close()
            await asyncio.sleep(0.01)
        assert protocol.got == [b"d0"] and protocol.lost == [None]
        assert not engine.running  # its last endpoint closed

    run(loop, main())


@pytest.mark.parametrize("mode", MODES)
def test_system_exit_in_datagram_received_propagates_and_the_endpoint_stays(loop, hosts, mode):
    class Exiting(Scripted):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"exit":
                raise SystemExit(3)

    protocol = Exiting()
    tr, peer_tr, _ = run(loop, engine_and_peer(hosts, protocol, mode))
    try:
        peer_tr.sendto(b"exit", (ENGINE_IP, PORT))
        with pytest.raises(SystemExit):
            run(loop, asyncio.sleep(5))
        peer_tr.sendto(b"after", (ENGINE_IP, PORT))  # the loop runs again: so does the endpoint
        run(loop, until(lambda: protocol.got == [b"exit", b"after"]))
    finally:
        peer_tr.close()
        tr.close()
        run(loop, asyncio.sleep(0.01))
