"""The ITCH feed handler over real UDP, on 127.0.0.1 and across a veth pair between two
network namespaces: publisher -> A/B lines -> books."""

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import run, sigint_at_default
from netns import VethPair, in_netns

from aiolowlat.protocols.book import BookBuilder
from aiolowlat.protocols.itch import ItchDecoder
from aiolowlat.protocols.itch_feed import ItchFeedHandler
from aiolowlat.protocols.moldudp64 import decode_packet, encode_packet, encode_request
from aiolowlat.protocols.sequencer import EndOfSession, FeedState, Sequencer, StateChanged
from aiolowlat.sim import ItchFeed, LineImpairment
from aiolowlat.sim.itch_feed import message_count
from aiolowlat.sim.itch_publisher import ItchPublisher
from aiolowlat.transports import open_datagram_endpoint, open_udp_socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "itch_multicast_vwap.py")
# Seed 25's 1 % schedules lose one packet on both lines, so recovery needs the server.
SEED = 25
ONE_PERCENT = LineImpairment(loss=0.01, reorder=0.01, duplicate=0.01)


# Every loop with the kernel transport, and the uring transport on the loop it runs on:
# only combinations that must work are generated (nothing is skipped).
over_loops_and_transports = pytest.mark.parametrize(
    "loop, transport",
    [("asyncio", "kernel"), ("uvloop", "kernel"), ("aiolowlat", "kernel"), ("aiolowlat", "uring")],
    indirect=["loop"])


async def open_line(protocol_factory, transport):
    """A line endpoint on an ephemeral 127.0.0.1 port; returns (transport, port).

    Sized as a feed handler must be: the publisher shares the loop and, late on a busy
    host, catches up in bursts that overflow a default-sized buffer, end of session
    included, and a lost tail cannot be requested.
    """
    endpoint, _ = await open_datagram_endpoint(
        protocol_factory, transport=transport, local_addr=("127.0.0.1", 0), timestamps=True,
        rcvbuf=4 << 20)
    return endpoint, endpoint.get_extra_info("sockname")[1]


def reference_snapshot(messages):
    builder, decoder = BookBuilder(), ItchDecoder()
    for message in messages:
        builder.apply(decoder.decode(message))
    return builder.snapshot()


def lost_on_both_lines(publisher):
    """Sequences of the packets that neither line's schedule delivers."""
    seen = [{d.data for d in datagrams} for datagrams in publisher.lines.values()]
    lost = set()
    for packet in publisher.feed.packets:
        if message_count(packet) and not any(packet in line for line in seen):
            first = decode_packet(packet).sequence
            lost.update(range(first, first + message_count(packet)))
    return lost


def new_handler(feed, **options):
    sequencer = Sequencer(session=feed.session, reorder_window=0.002,
                          retransmit_timeout=0.03, stale_after=5.0, **options)  # fmt: skip
    return ItchFeedHandler(sequencer, tick_interval=0.002)


async def publish_to(handler, feed, transport, *, impairment, serve_requests):
    """Open both lines, publish the whole session, wait for its end; returns the publisher."""
    ports = {}
    for line in "AB":
        _, ports[line] = await open_line(lambda line=line: handler.protocol(line), transport)
    publisher = ItchPublisher(
        feed,
        {line: ("127.0.0.1", port) for line, port in ports.items()},
        rate=200_000,
        impairments={"A": impairment, "B": impairment},
        request_addr=("127.0.0.1", 0) if serve_requests else None,
    )
    async with publisher:
        if serve_requests:
            await handler.connect_requests(publisher.request_address)
        else:  # a port nobody listens on: requests go nowhere
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", 0))
                nowhere = probe.getsockname()
            await handler.connect_requests(nowhere)
        await publisher.publish()
        await handler.wait_end()
    handler.close()
    await asyncio.sleep(0)
    return publisher


@over_loops_and_transports
def test_impaired_lines_with_retransmissions_rebuild_the_lossless_book(loop, transport):
    feed = ItchFeed(seed=SEED, events=3000, heartbeat_every=20)
    handler = new_handler(feed)
    events = []
    handler.on_event = events.append
    opened = publish_to(handler, feed, transport, impairment=ONE_PERCENT, serve_requests=True)
    publisher = run(loop, opened)
    assert lost_on_both_lines(publisher)  # the seed does make the server necessary
    sequencer = handler.sequencer
    assert sequencer.delivered == len(feed.messages)
    assert not handler.gaps and sequencer.unrecoverable == 0
    assert handler.end_of_session == len(feed.messages) + 1
    assert handler.builder.snapshot() == reference_snapshot(feed.messages)
    assert sequencer.retransmitted > 0 and publisher.server.answered_packets > 0
    assert handler.requests_sent > 0 and handler.requests_unsent == 0
    for line in "AB":  # the kernel may drop more than the schedule on a busy host, not less
        assert sequencer.lines[line].losses >= publisher.reports[line].dropped_messages > 0
    assert sequencer.duplicates > 0
    assert events[0] == StateChanged(FeedState.INITIAL, FeedState.LIVE)
    assert events[-1] == EndOfSession(len(feed.messages) + 1)
    assert handler.vwap("AAPL") is not None and handler.top("AAPL").bid_price is not None


@over_loops_and_transports
def test_without_a_request_server_gaps_are_reported_with_their_ranges(loop, transport):
    feed = ItchFeed(seed=3, events=1000, heartbeat_every=20)
    handler = new_handler(feed)
    heavy = LineImpairment(loss=0.2, reorder=0.05)
    opened = publish_to(handler, feed, transport, impairment=heavy, serve_requests=False)
    publisher = run(loop, opened)
    expected = lost_on_both_lines(publisher)
    assert expected
    reported = [s for first, last in handler.gaps for s in range(first, last + 1)]
    assert set(reported) >= expected  # a kernel drop on a busy host may add a range
    assert handler.sequencer.delivered + len(reported) == len(feed.messages)
    assert handler.sequencer.unrecoverable == len(reported)
    assert handler.end_of_session == len(feed.messages) + 1


@over_loops_and_transports
def test_malformed_datagrams_are_counted_drops(loop, transport):
    feed = ItchFeed(seed=1, events=100)
    errors = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    garbage = [b"", b"x", bytes(19), encode_packet(feed.session, 1, [b"S"])[:-1] + b"\xff\xff"]
    framed_junk = [encode_packet(b"OTHER", 1, [b"S"]), encode_packet(feed.session, 1, [b"A\0"])]
    bad_requests = [b"", b"short", bytes(20), encode_request(feed.session, 1, 5) + b"!"]

    async def main():
        handler = new_handler(feed)
        _, port = await open_line(lambda: handler.protocol("A"), transport)
        publisher = ItchPublisher(feed, {}, request_addr=("127.0.0.1", 0))
        async with publisher:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                for data in garbage + framed_junk:
                    raw.sendto(data, ("127.0.0.1", port))
                for data in bad_requests:
                    raw.sendto(data, publisher.request_address)
                raw.sendto(encode_request(feed.session, 1, 3), publisher.request_address)
                answer = decode_packet(await loop.sock_recv(_nonblocking(raw), 2048))
            for _ in range(500):  # bounded wait for the handler's datagrams
                if handler.sequencer.lines["A"].packets >= len(garbage + framed_junk):
                    break
                await asyncio.sleep(0.01)
        handler.close()
        await asyncio.sleep(0)
        return handler, publisher, answer

    handler, publisher, answer = run(loop, main())
    assert handler.sequencer.lines["A"].malformed == len(garbage) + 1  # the line counts both
    counters = handler.counters()
    assert counters["malformed"] == len(garbage) and counters["wrong_session"] == 1
    assert counters["delivered"] == 1 and counters["itch_malformed"] == 1  # a cut-off 'A'
    assert publisher.server.malformed == len(bad_requests)
    assert (answer.sequence, len(answer.messages)) == (1, 3)  # still serving after the junk
    assert not errors


def _nonblocking(sock):
    sock.setblocking(False)
    return sock


def test_example_runs_and_prints_books():
    result = subprocess.run(
        [sys.executable, EXAMPLE, "--seconds", "2"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "AAPL" in result.stdout and "vwap" in result.stdout
    assert "delivered=" in result.stdout


def test_example_shuts_down_cleanly_on_ctrl_c():
    with subprocess.Popen([sys.executable, EXAMPLE], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          preexec_fn=sigint_at_default) as process:  # fmt: skip
        try:
            for _ in range(100):  # bounded: wait for the first report
                if process.stdout.readline().startswith("["):
                    break
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert "done:" in out


@pytest.fixture(scope="module")
def hosts():
    with VethPair() as pair:
        yield pair


def _line_socket(group, port, interface):
    return open_udp_socket((group, port), groups=[group], interface=interface, rcvbuf=4 << 20)[0]


def _request_socket(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(server)
    sock.setblocking(False)
    return sock


@over_loops_and_transports
def test_feed_across_veth_from_the_publisher_in_another_namespace(loop, transport, hosts):
    """The CLI publisher multicasts from the exchange's namespace over a veth pair; the
    handler in the other joins both groups there, recovers through the request server and
    ends with the lossless book."""
    seed = 30  # the CLI's packets (no heartbeats) with this seed lose one on both lines
    feed = ItchFeed(seed=seed, events=3000)  # what the CLI generates for this seed
    groups = {"A": ("239.1.1.1", 30001), "B": ("239.1.1.2", 30002)}
    handler = new_handler(feed)

    async def main():
        for line, (group, port) in groups.items():
            sock = in_netns(hosts.b, _line_socket, group, port, hosts.dev_b)
            await open_datagram_endpoint(lambda line=line: handler.protocol(line),
                                         transport=transport, sock=sock)
        request = in_netns(hosts.b, _request_socket, (hosts.addr_a, 30003))
        await loop.create_datagram_endpoint(handler.request_protocol, sock=request)
        publisher = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", hosts.a, sys.executable, "-m", "aiolowlat.sim.itch_publisher",
            "--group-a", "239.1.1.1:30001", "--group-b", "239.1.1.2:30002",
            "--interface", hosts.dev_a, "--request-host", hosts.addr_a, "--request-port", "30003",
            "--seed", str(seed), "--events", "3000", "--rate", "100000",
            "--loss", "0.01", "--reorder", "0.01", "--duplicate", "0.01", "--seconds", "30",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await handler.wait_end()
        finally:
            publisher.terminate()
            await publisher.wait()
        handler.close()
        await asyncio.sleep(0)

    run(loop, main(), timeout=40)
    sequencer = handler.sequencer
    assert handler.end_of_session == len(feed.messages) + 1
    assert not handler.gaps and sequencer.unrecoverable == 0
    assert sequencer.delivered == len(feed.messages)
    assert handler.builder.snapshot() == reference_snapshot(feed.messages)
    assert sequencer.retransmitted > 0 and sequencer.duplicates > 0  # both impairments crossed
    for line in "AB":
        assert sequencer.lines[line].losses > 0
