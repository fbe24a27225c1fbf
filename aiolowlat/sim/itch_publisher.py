"""An asyncio MoldUDP64/ITCH publisher: an ItchFeed's session on lines A and B, plus a
retransmission request server.

Each line sends the feed's packets in the order its LineImpairment schedule gives
(loss, reordering, duplication, seeded by the feed's seed), paced by the loop's clock at
a message rate. Works on any loop; destinations may be unicast or multicast.

    python -m aiolowlat.sim.itch_publisher --seconds 10   # 127.0.0.1:30001/30002, requests :30003
    python -m aiolowlat.sim.itch_publisher --group-a 239.1.1.1:30001 \
        --group-b 239.1.1.2:30002 --interface eth1 --request-host 0.0.0.0 --seconds 10

Its defaults stay on loopback: multicast leaves on ``--interface`` only when asked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import time
from bisect import bisect_right
from collections.abc import Mapping
from itertools import accumulate

from ..protocols.moldudp64 import MoldError, decode_request, encode_request
from .itch_feed import PERFECT_LINE, ItchFeed, LineImpairment, message_count

__all__ = ["ItchPublisher", "RetransmissionServer", "multicast_send_socket"]

_PACE = 0.001  # shortest sleep between bursts: pacing costs ~1,000 wake-ups/s, not one per packet
_MAX_BURST = 1024  # datagrams per wake-up, so a late loop catches up without starving others


def multicast_send_socket(
    interface: str | None = None, *, ttl: int = 1, loopback: bool = True
) -> socket.socket:
    """A non-blocking UDP socket set up to send multicast on ``interface`` (name or IPv4);
    the options only apply to multicast destinations, so it sends unicast as well."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loopback))
        if interface:
            try:
                address = socket.inet_aton(interface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, address)
            except OSError:  # a name: struct ip_mreqn picks the interface by index
                index = socket.if_nametoindex(interface)
                mreqn = struct.pack("4s4si", bytes(4), bytes(4), index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        sock.bind(("0.0.0.0", 0))
    except BaseException:
        sock.close()
        raise
    return sock


class RetransmissionServer(asyncio.DatagramProtocol):
    """Answers MoldUDP64 requests from a RetransmissionStore; bad requests are counted."""

    def __init__(self, store, *, max_messages: int = 1024) -> None:
        """``max_messages`` bounds one answer; a larger request gets its first part."""
        self.store = store
        self.max_messages = max_messages
        self.transport = None
        self.requests = 0
        self.malformed = 0
        self.truncated = 0
        self.answered_packets = 0
        self.errors = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.requests += 1
        try:
            request = decode_request(data)
        except MoldError:
            self.malformed += 1
            return
        if request.count > self.max_messages:
            self.truncated += 1
            data = encode_request(request.session, request.sequence, self.max_messages)
        for packet in self.store.answer(data):  # the store counts wrong sessions and ranges
            self.transport.sendto(packet, addr)
            self.answered_packets += 1

    def datagrams_received(self, batch) -> None:
        for data, addr, _ in batch:
            self.datagram_received(data, addr)

    def error_received(self, exc) -> None:
        self.errors += 1  # e.g. ICMP unreachable for an answer to a vanished client

    def counters(self) -> dict[str, int]:
        store = self.store
        return {"requests": self.requests, "malformed": self.malformed,
                "truncated": self.truncated, "answered_packets": self.answered_packets,
                "wrong_session": store.wrong_session, "out_of_range": store.out_of_range,
                "errors": self.errors}  # fmt: skip


class ItchPublisher:
    """Publishes an ItchFeed on impaired lines at a message rate and serves retransmissions."""

    def __init__(
        self,
        feed: ItchFeed,
        destinations: Mapping[str, tuple[str, int]],
        *,
        rate: float = 50_000,
        impairments: Mapping[str, LineImpairment] | None = None,
        request_addr: tuple[str, int] | None = None,
        interface: str | None = None,
        ttl: int = 1,
        max_answer_messages: int = 1024,
    ) -> None:
        """``destinations``: line name -> (host, port); ``request_addr``: where to serve
        retransmission requests (None: no server; port 0 picks one, see request_address)."""
        self.feed = feed
        self.destinations = dict(destinations)
        self.rate = rate
        self.request_addr = request_addr
        self.interface = interface
        self.ttl = ttl
        self.server = RetransmissionServer(feed.store, max_messages=max_answer_messages)
        impairments = impairments or {}
        # Schedules in packet slots (interval 1, no latency): the same seeded draws as
        # feed.line(), so a test can compute exactly what each line drops.
        self.lines = {}
        self.reports = {}
        for name in self.destinations:
            datagrams, report = feed.line(
                name, impairments.get(name, PERFECT_LINE), interval=1.0, latency=0.0, jitter=0.0
            )
            self.lines[name], self.reports[name] = datagrams, report
        self.sent = dict.fromkeys(self.destinations, 0)
        self.send_errors = 0
        self._sock = None
        self._transport = None
        self._server_transport = None

    @property
    def request_address(self) -> tuple[str, int] | None:
        """The bound address of the request server, once started."""
        if self._server_transport is None:
            return None
        return self._server_transport.get_extra_info("sockname")[:2]

    async def start(self) -> None:
        """Open the sending socket and the request server."""
        loop = asyncio.get_running_loop()
        self._sock = multicast_send_socket(self.interface, ttl=self.ttl)
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _SendErrors(self), sock=self._sock
        )
        if self.request_addr is not None:
            self._server_transport, _ = await loop.create_datagram_endpoint(
                lambda: self.server, local_addr=self.request_addr
            )

    async def publish(self) -> None:
        """Send every scheduled datagram of every line, paced at ``rate`` messages/s."""
        loop = asyncio.get_running_loop()
        # Packet slot i goes out once the messages of slots before it are due.
        before = [0, *accumulate(message_count(p) for p in self.feed.packets)]
        last = len(before) - 1
        schedule = sorted(
            (before[min(int(d.time), last)] / self.rate, d.time, name, d.data)
            for name, datagrams in self.lines.items()
            for d in datagrams
        )
        due_times = [entry[0] for entry in schedule]
        transport = self._transport
        start = loop.time()
        index = 0
        # Bounded: each pass sends at least one datagram or sleeps at least _PACE.
        while index < len(schedule):
            elapsed = loop.time() - start
            stop = min(bisect_right(due_times, elapsed), index + _MAX_BURST)
            for _, _, name, data in schedule[index:stop]:
                transport.sendto(data, self.destinations[name])
                self.sent[name] += 1
            if stop > index:
                index = stop
                await asyncio.sleep(0)  # let receivers and the request server run
            else:
                await asyncio.sleep(max(due_times[index] - elapsed, _PACE))

    def counters(self) -> dict[str, int]:
        out = {f"{name}_sent": count for name, count in self.sent.items()}
        out["send_errors"] = self.send_errors
        out.update({f"server_{k}": v for k, v in self.server.counters().items()})
        return out

    def close(self) -> None:
        for transport in (self._transport, self._server_transport):
            if transport is not None:
                transport.close()
        self._transport = self._server_transport = None

    async def __aenter__(self) -> ItchPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        await asyncio.sleep(0)  # let the transports' connection_lost run


class _SendErrors(asyncio.DatagramProtocol):
    """Counts send errors (a unicast receiver not listening yet) instead of logging each."""

    def __init__(self, publisher: ItchPublisher) -> None:
        self.publisher = publisher

    def error_received(self, exc) -> None:
        self.publisher.send_errors += 1


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _main(args) -> None:
    seconds = args.seconds
    events = args.events or int(min(args.rate * (seconds or 60), 200_000))
    began = time.monotonic()
    feed = ItchFeed(seed=args.seed, events=events)
    print(f"session {feed.session.decode().strip()}: {len(feed.messages):,} messages, "
          f"{len(feed.packets):,} packets (generated in {time.monotonic() - began:.1f} s)",
          flush=True)  # fmt: skip
    impairment = LineImpairment(args.loss, args.reorder, args.duplicate)
    publisher = ItchPublisher(
        feed,
        {"A": _address(args.group_a), "B": _address(args.group_b)},
        rate=args.rate,
        impairments={"A": impairment, "B": impairment},
        request_addr=(args.request_host, args.request_port) if args.request_port else None,
        interface=args.interface,
        ttl=args.ttl,
    )
    deadline = None if seconds is None else began + seconds
    task = None
    try:
        await publisher.start()
        task = asyncio.ensure_future(publisher.publish())
        await asyncio.wait_for(asyncio.shield(task), _left(deadline))
        print("session published; serving retransmissions", flush=True)
        if deadline is None:
            await asyncio.Event().wait()  # until Ctrl-C
        else:
            await asyncio.sleep(_left(deadline))
    except TimeoutError:
        pass
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        publisher.close()
        print(" ".join(f"{k}={v}" for k, v in publisher.counters().items()), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-a", default="127.0.0.1:30001",
                        help="line A HOST:PORT (a multicast group, or unicast)")
    parser.add_argument("--group-b", default="127.0.0.1:30002", help="line B HOST:PORT")
    parser.add_argument("--request-host", default="127.0.0.1")
    parser.add_argument("--request-port", type=int, default=30003, help="0: no server")
    parser.add_argument("--interface", default=None, help="multicast interface (name or IPv4)")
    parser.add_argument("--ttl", type=int, default=1)
    parser.add_argument("--rate", type=float, default=50_000, help="messages per second")
    parser.add_argument(
        "--events",
        type=int,
        default=0,
        help="order-flow events (default: rate x seconds, at most 200,000)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loss", type=float, default=0.0, help="per-line packet loss")
    parser.add_argument("--reorder", type=float, default=0.0)
    parser.add_argument("--duplicate", type=float, default=0.0)
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after N seconds (default: run until Ctrl-C)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
