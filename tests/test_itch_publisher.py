"""The ITCH publisher and its retransmission server over real UDP on 127.0.0.1."""

import asyncio
import os
import signal
import socket
import subprocess
import sys

from conftest import run, sigint_at_default

from aiolowlat.protocols.moldudp64 import decode_packet, encode_request
from aiolowlat.sim import ItchFeed, LineImpairment
from aiolowlat.sim.itch_publisher import ItchPublisher, multicast_send_socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = "127.0.0.1"


class Collector(asyncio.DatagramProtocol):
    """Keeps every datagram it gets, on any transport."""

    def __init__(self):
        self.datagrams = []

    def datagram_received(self, data, addr):
        self.datagrams.append(bytes(data))

    def datagrams_received(self, batch):
        for data, addr, _ in batch:
            self.datagram_received(data, addr)


async def collector():
    """A receiving endpoint on an ephemeral port: (transport, collector, port)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Collector, local_addr=(LOCAL, 0))
    return transport, protocol, transport.get_extra_info("sockname")[1]


async def wait_for(predicate, tries=500):
    """Poll ``predicate`` every 10 ms, at most ``tries`` times."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)


async def publish_lines(feed, **options):
    """Publish ``feed`` to two collectors; returns (publisher, {line: datagrams})."""
    endpoints = {line: await collector() for line in "AB"}
    publisher = ItchPublisher(
        feed, {line: (LOCAL, port) for line, (_, _, port) in endpoints.items()}, **options
    )
    async with publisher:
        await publisher.publish()
    expected = {line: len(datagrams) for line, datagrams in publisher.lines.items()}
    await wait_for(lambda: all(len(endpoints[k][1].datagrams) >= n for k, n in expected.items()))
    for transport, _, _ in endpoints.values():
        transport.close()
    await asyncio.sleep(0)
    return publisher, {line: protocol.datagrams for line, (_, protocol, _) in endpoints.items()}


def test_lossless_lines_carry_every_packet_in_order(loop):
    feed = ItchFeed(seed=2, events=500)
    publisher, received = run(loop, publish_lines(feed, rate=100_000))
    assert received == {"A": feed.packets, "B": feed.packets}
    assert publisher.sent == {"A": len(feed.packets), "B": len(feed.packets)}


def test_impaired_lines_follow_the_seeded_schedule(loop):
    feed = ItchFeed(seed=7, events=1000)
    impairment = LineImpairment(loss=0.05, reorder=0.05, duplicate=0.05)
    impairments = {"A": impairment, "B": impairment}
    publisher, received = run(loop, publish_lines(feed, rate=200_000, impairments=impairments))
    for line in "AB":
        assert received[line] == [d.data for d in publisher.lines[line]]
        report = publisher.reports[line]
        assert report.dropped_packets and report.reordered and report.duplicated
    assert received["A"] != received["B"]
    again = ItchPublisher(ItchFeed(seed=7, events=1000), {"A": None}, impairments=impairments)
    assert again.lines["A"] == publisher.lines["A"]  # deterministic by seed


def test_request_server_answers_bounded_and_counts_bad_requests(loop):
    feed = ItchFeed(seed=3, events=300, max_messages=8)

    async def main():
        publisher = ItchPublisher(feed, {}, request_addr=(LOCAL, 0), max_answer_messages=16)
        transport, client, _ = await collector()
        async with publisher:
            server = publisher.request_address
            for data in (b"", b"junk", bytes(20), encode_request(feed.session, 1, 2) + b"x"):
                transport.sendto(data or b"\0", server)  # asyncio skips empty datagrams
            transport.sendto(encode_request(b"OTHER", 1, 5), server)
            transport.sendto(encode_request(feed.session, 10**6, 5), server)
            transport.sendto(encode_request(feed.session, 5, 100), server)
            await wait_for(lambda: publisher.server.requests >= 7 and len(client.datagrams) >= 2)
        transport.close()
        await asyncio.sleep(0)
        return publisher, client.datagrams

    publisher, answers = run(loop, main())
    packets = [decode_packet(a) for a in answers]
    assert [(p.sequence, len(p.messages)) for p in packets] == [(5, 8), (13, 8)]
    assert [bytes(m) for p in packets for m in p.messages] == feed.messages[4:20]
    counters = publisher.counters()
    assert counters["server_malformed"] == 4 and counters["server_truncated"] == 1
    assert counters["server_wrong_session"] == 1 and counters["server_out_of_range"] == 1
    assert counters["server_answered_packets"] == 2


def test_multicast_socket_options():
    with multicast_send_socket(LOCAL, ttl=3, loopback=False) as sock:
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 3
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
        interface = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
        assert socket.inet_ntoa(interface) == LOCAL
    with multicast_send_socket("lo") as sock:  # by name, through struct ip_mreqn
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1


def _cli(*extra):
    return [sys.executable, "-m", "aiolowlat.sim.itch_publisher", "--group-a", f"{LOCAL}:9",
            "--group-b", f"{LOCAL}:9", "--request-host", LOCAL, "--request-port", "0",
            "--rate", "50000", "--seed", "1", *extra]  # fmt: skip


def test_cli_stops_by_itself_after_seconds():
    result = subprocess.run(_cli("--seconds", "1"), capture_output=True, text=True, timeout=60,
                            cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "A_sent=" in result.stdout


def test_cli_shuts_down_cleanly_on_ctrl_c():
    with subprocess.Popen(_cli("--events", "2000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, preexec_fn=sigint_at_default) as process:  # fmt: skip
        try:
            assert process.stdout.readline().startswith("session")
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert "A_sent=" in out
