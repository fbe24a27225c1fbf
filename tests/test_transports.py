"""Market-data datagram endpoints: every transport, every loop, real sockets."""

import asyncio
import socket
import struct
import subprocess
import time
import warnings

import pytest
from conftest import run
from netns import VethPair, in_netns

import aiolowlat
from aiolowlat.transports import (
    SocketBufferWarning,
    TransportUnavailableError,
    enable_nic_timestamps,
    nic_timestamping,
    open_datagram_endpoint,
    open_udp_socket,
)

GROUP = "239.7.7.7"


class Batches(asyncio.DatagramProtocol):
    """Collects datagrams_received batches until ``want`` datagrams arrived."""

    def __init__(self, want):
        self.want, self.batches, self.done = want, [], asyncio.Event()

    def datagrams_received(self, batch):
        self.batches.append(batch)
        if sum(map(len, self.batches)) >= self.want:
            self.done.set()

    def flat(self):
        return [item for batch in self.batches for item in batch]


class PerDatagram(asyncio.DatagramProtocol):
    def __init__(self, want):
        self.want, self.got, self.done = want, [], asyncio.Event()

    def datagram_received(self, data, addr):
        self.got.append((data, addr))
        if len(self.got) >= self.want:
            self.done.set()


def _each_transport(loop):
    """The kernel transport runs on every loop; the uring one on aiolowlat's."""
    return ["kernel", "uring"] if isinstance(loop, aiolowlat.Loop) else ["kernel"]


def test_batches_carry_kernel_receive_times(loop):
    async def main():
        for kind in _each_transport(loop):
            sent_at = time.time_ns()
            tr, proto = await open_datagram_endpoint(
                lambda: Batches(200), transport=kind, local_addr=("127.0.0.1", 0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.bind(("127.0.0.1", 0))
                for i in range(200):  # queued before the loop runs: batches of many
                    tx.sendto(b"m%d" % i, tr.get_extra_info("sockname"))
                await asyncio.wait_for(proto.done.wait(), 5)
                got = proto.flat()
                assert [data for data, _, _ in got] == [b"m%d" % i for i in range(200)]
                assert {addr for _, addr, _ in got} == {tx.getsockname()}
                assert all(sent_at <= rx <= time.time_ns() for _, _, rx in got), kind
                assert max(map(len, proto.batches)) > 1, kind
            tr.close()

    run(loop, main())


def test_kernel_batches_keep_empty_datagrams_and_drop_oversized_ones(loop):
    sizes = [10, 0, 3000, 2048, 1, 2049, 20]  # the kernel transport's slots hold 2048 bytes

    async def main():
        tr, proto = await open_datagram_endpoint(lambda: Batches(5), transport="kernel",
                                                 local_addr=("127.0.0.1", 0), rcvbuf=1 << 20)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for i, size in enumerate(sizes):  # queued before the loop reads: one batch
                tx.sendto(bytes([i]) * size, tr.get_extra_info("sockname"))
            await asyncio.wait_for(proto.done.wait(), 5)
            await asyncio.sleep(0.05)
        tr.close()
        return [data for data, _, _ in proto.flat()], tr.truncated

    got, truncated = run(loop, main())
    assert got == [bytes([i]) * size for i, size in enumerate(sizes) if size <= 2048]
    assert truncated == 2


def test_remote_addr_connects_the_endpoint_to_one_peer(loop):
    async def main():
        for kind in _each_transport(loop):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                server.bind(("127.0.0.1", 0))
                server.settimeout(5)
                tr, proto = await open_datagram_endpoint(
                    lambda: PerDatagram(1), transport=kind, local_addr=("127.0.0.1", 0),
                    remote_addr=server.getsockname())
                assert tr.get_extra_info("peername") == server.getsockname()
                tr.sendto(b"request")  # no address: the connected peer
                data, client = await asyncio.get_running_loop().run_in_executor(
                    None, server.recvfrom, 64)
                assert data == b"request"
                stranger.sendto(b"not heard", client)  # a connected socket filters it
                server.sendto(b"answer", client)
                await asyncio.wait_for(proto.done.wait(), 5)
                assert [d for d, _ in proto.got] == [b"answer"]
                with pytest.raises(ValueError, match="Invalid address"):
                    tr.sendto(b"x", ("127.0.0.1", 9))
                tr.close()

    run(loop, main())


def test_plain_datagram_protocol_and_sendto(loop):
    async def main():
        for kind in _each_transport(loop):
            tr, proto = await open_datagram_endpoint(
                lambda: PerDatagram(3), transport=kind, local_addr=("127.0.0.1", 0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.bind(("127.0.0.1", 0))
                peer.setblocking(False)
                for data in (b"a", b"b", b"c"):
                    peer.sendto(data, tr.get_extra_info("sockname"))
                await asyncio.wait_for(proto.done.wait(), 5)
                assert [d for d, _ in proto.got] == [b"a", b"b", b"c"]
                tr.sendto(b"request", peer.getsockname())  # e.g. a retransmission request
                assert await asyncio.wait_for(loop.sock_recv(peer, 100), 5) == b"request"
            tr.close()

    run(loop, main())


def test_capped_receive_buffer_warns_with_the_sysctl(loop):
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tr, _ = await open_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), rcvbuf=rmem_max * 4)
        assert any(issubclass(w.category, SocketBufferWarning)
                   and "net.core.rmem_max" in str(w.message) for w in caught)
        assert tr.get_extra_info("rcvbuf") < rmem_max * 4
        tr.close()

    run(loop, main())


def test_unknown_unavailable_and_misconfigured_transports(loop):
    async def main():
        with pytest.raises(ValueError, match="unknown transport"):
            await open_datagram_endpoint(asyncio.DatagramProtocol, transport="carrier-pigeon",
                                         local_addr=("127.0.0.1", 0))
        for kind in ("af_xdp", "dpdk"):  # no kernel stack: no ephemeral port, a NIC to own
            with pytest.raises(ValueError, match="needs local_addr with a fixed port"):
                await open_datagram_endpoint(asyncio.DatagramProtocol, transport=kind,
                                             local_addr=("127.0.0.1", 0))
            with pytest.raises(ValueError, match="needs interface="):
                await open_datagram_endpoint(asyncio.DatagramProtocol, transport=kind,
                                             local_addr=("127.0.0.1", 5000))
        if not isinstance(loop, aiolowlat.Loop):
            with pytest.raises(TransportUnavailableError, match="needs the aiolowlat loop"):
                await open_datagram_endpoint(asyncio.DatagramProtocol, transport="uring",
                                             local_addr=("127.0.0.1", 0))

    run(loop, main())


# -- multicast, on test hosts in network namespaces --

def _sender(ns_iface, source=None):
    """A socket sending to GROUP out of ``ns_iface`` (made inside its namespace)."""
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                  struct.pack("=4s4si", bytes(4), bytes(4), socket.if_nametoindex(ns_iface)))
    if source:
        tx.bind((source, 0))
    return tx


@pytest.fixture(scope="module")
def hosts():
    with VethPair() as pair:
        yield pair


def test_multicast_across_veth(loop, hosts):
    async def main():
        for kind in _each_transport(loop):
            rx, extra = in_netns(hosts.b, lambda: open_udp_socket(
                (GROUP, 0), groups=[GROUP], interface=hosts.dev_b, rcvbuf=1 << 20))
            # veth stamps in software only: said so, and every datagram still has a time
            assert extra["hardware_timestamps"] is False
            assert "offers no hardware receive timestamps" in extra["hardware_timestamps_detail"]
            port = rx.getsockname()[1]
            tr, proto = await open_datagram_endpoint(lambda: Batches(50), transport=kind, sock=rx)
            tx = in_netns(hosts.a, _sender, hosts.dev_a)
            with tx:
                for i in range(50):
                    tx.sendto(b"tick %d" % i, (GROUP, port))
                await asyncio.wait_for(proto.done.wait(), 5)
            got = proto.flat()
            assert [d for d, _, _ in got] == [b"tick %d" % i for i in range(50)]
            assert all(rx_ns > 0 for _, _, rx_ns in got)
            assert {addr[0] for _, addr, _ in got} == {hosts.addr_a}
            tr.close()

    run(loop, main())


def test_source_specific_join_filters_other_senders(loop, hosts):
    async def main():
        for kind in _each_transport(loop):
            rx = in_netns(hosts.b, lambda: open_udp_socket(
                (GROUP, 0), groups=[GROUP], interface=hosts.dev_b, source=hosts.addr_a)[0])
            port = rx.getsockname()[1]
            tr, proto = await open_datagram_endpoint(lambda: Batches(3), transport=kind, sock=rx)
            wanted = in_netns(hosts.a, _sender, hosts.dev_a, hosts.addr_a)
            other = in_netns(hosts.a, _sender, hosts.dev_a, hosts.addr_a2)
            with wanted, other:
                for i in range(3):
                    other.sendto(b"not for us", (GROUP, port))
                    wanted.sendto(b"ours %d" % i, (GROUP, port))
                await asyncio.wait_for(proto.done.wait(), 5)
                await asyncio.sleep(0.05)  # a stray datagram would have arrived by now
            assert [d for d, _, _ in proto.flat()] == [b"ours %d" % i for i in range(3)]
            tr.close()

    run(loop, main())


def test_multicast_on_namespace_loopback(loop, hosts):
    async def main():
        for kind in _each_transport(loop):
            rx = in_netns(hosts.b, lambda: open_udp_socket(
                (GROUP, 0), groups=[GROUP], interface="lo")[0])
            port = rx.getsockname()[1]
            tr, proto = await open_datagram_endpoint(lambda: Batches(5), transport=kind, sock=rx)
            with in_netns(hosts.b, _sender, "lo") as tx:
                for i in range(5):
                    tx.sendto(b"lo %d" % i, (GROUP, port))
                await asyncio.wait_for(proto.done.wait(), 5)
            assert [d for d, _, _ in proto.flat()] == [b"lo %d" % i for i in range(5)]
            tr.close()

    run(loop, main())


def test_a_raising_callback_loses_no_other_datagram(loop):
    class Flaky(PerDatagram):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"bad":
                raise ValueError("strategy bug")

    async def main():
        for kind in _each_transport(loop):
            reported = []
            loop.set_exception_handler(lambda _, ctx, r=reported: r.append(ctx["exception"]))
            tr, proto = await open_datagram_endpoint(
                lambda: Flaky(3), transport=kind, local_addr=("127.0.0.1", 0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for data in (b"one", b"bad", b"three"):  # queued together: one batch
                    tx.sendto(data, tr.get_extra_info("sockname"))
                await asyncio.wait_for(proto.done.wait(), 5)
            assert [d for d, _ in proto.got] == [b"one", b"bad", b"three"], kind
            assert [type(e) for e in reported] == [ValueError], kind
            assert not tr.is_closing()  # as asyncio's datagram transport: the feed goes on
            proto.want, proto.done = 4, asyncio.Event()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.sendto(b"four", tr.get_extra_info("sockname"))
                await asyncio.wait_for(proto.done.wait(), 5)
            tr.close()
            loop.set_exception_handler(None)

    run(loop, main())


# ethtool -T's capability lines and the SOF_TIMESTAMPING_* bit each one shows.
ETHTOOL_CAPABILITIES = {"hardware-transmit": 1 << 0, "software-transmit": 1 << 1,
                        "hardware-receive": 1 << 2, "software-receive": 1 << 3,
                        "software-system-clock": 1 << 4, "hardware-raw-clock": 1 << 6}


@pytest.mark.parametrize("where", ["lo", "veth"])
def test_nic_timestamping_reads_what_ethtool_shows(where, hosts):
    namespace, interface = (None, "lo") if where == "lo" else (hosts.b, hosts.dev_b)
    command = ["ethtool", "-T", interface]
    if namespace:
        command = ["ip", "netns", "exec", namespace, *command]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout
    caps, phc_index, rx_filters = (in_netns(namespace, nic_timestamping, interface) if namespace
                                   else nic_timestamping(interface))
    for name, bit in ETHTOOL_CAPABILITIES.items():
        assert bool(caps & bit) == (f"\t{name}" in shown), name
    assert caps & (1 << 3)  # every Linux device stamps received packets in software
    assert (phc_index == -1) == ("PTP Hardware Clock: none" in shown)
    assert rx_filters == 0 and "Hardware Receive Filter Modes: none" in shown
    enabled = (in_netns(namespace, enable_nic_timestamps, interface) if namespace
               else enable_nic_timestamps(interface))
    assert enabled == (False, f"{interface} offers no hardware receive timestamps (ethtool -T "
                              f"{interface}); software ones are used")
    with pytest.raises(OSError):
        nic_timestamping("nosuch0")
