"""UDP datagram endpoints."""

import asyncio
import socket

import pytest
from conftest import run


class Datagrams(asyncio.DatagramProtocol):
    """Records datagrams and errors; echoes back when ``echo`` is set."""

    def __init__(self, loop, echo=False):
        self.echo = echo
        self.received = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.echo:
            self.transport.sendto(data, addr)
        self.received.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.put_nowait(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_datagram_echo(loop, host):
    async def main():
        server_tr, server = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop, echo=True), local_addr=(host, 0)
        )
        server_addr = server_tr.get_extra_info("sockname")
        client_tr, client = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=server_addr[:2]
        )
        client_addr = client_tr.get_extra_info("sockname")
        assert client_tr.get_extra_info("peername")[:2] == server_addr[:2]
        for msg in (b"first", b"second", b"x" * 1200):
            client_tr.sendto(msg)
        # Datagram boundaries and order (on loopback) are preserved.
        got = [await client.received.get() for _ in range(3)]
        assert [d for d, _ in got] == [b"first", b"second", b"x" * 1200]
        assert got[0][1][:2] == server_addr[:2]
        data, addr = await server.received.get()
        assert (data, addr[:2]) == (b"first", client_addr[:2])
        client_tr.close()
        server_tr.close()
        assert await client.lost is None
        assert await server.lost is None

    run(loop, main())


def test_datagram_sendto_explicit_address(loop):
    async def main():
        a_tr, a = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=("127.0.0.1", 0)
        )
        b_tr, b = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop, echo=True), local_addr=("127.0.0.1", 0)
        )
        a_tr.sendto(b"hi", b_tr.get_extra_info("sockname"))
        assert await a.received.get() == (b"hi", b_tr.get_extra_info("sockname"))
        a_tr.close()
        b_tr.close()
        await asyncio.gather(a.lost, b.lost)

    run(loop, main())


def test_datagram_reuse_port(loop):
    async def main():
        t1, p1 = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=("127.0.0.1", 0), reuse_port=True
        )
        port = t1.get_extra_info("sockname")[1]
        t2, p2 = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=("127.0.0.1", port), reuse_port=True
        )
        for t in (t1, t2):
            sock = t.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            t.close()
        await asyncio.gather(p1.lost, p2.lost)

    run(loop, main())


def test_datagram_allow_broadcast_sets_option(loop):
    # Only the socket option is checked: no broadcast traffic is sent.
    async def main():
        tr, proto = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=("127.0.0.1", 0), allow_broadcast=True
        )
        sock = tr.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
        tr.close()
        await proto.lost

    run(loop, main())


def test_datagram_endpoint_from_sock(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)

    async def main():
        tr, proto = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop, echo=True), sock=sock
        )
        assert tr.get_extra_info("sockname") == sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.sendto(b"via sock", sock.getsockname())
            assert await proto.received.get() == (b"via sock", peer.getsockname())
        tr.close()
        await proto.lost

    run(loop, main())


def test_datagram_error_received_on_refused(loop):
    # A port bound by a socket that never reads would swallow datagrams; a
    # freshly closed one answers with ICMP port unreachable instead.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()

    async def main():
        tr, proto = await loop.create_datagram_endpoint(lambda: Datagrams(loop), remote_addr=dead)
        tr.sendto(b"anyone?")
        exc = await proto.errors.get()
        assert isinstance(exc, ConnectionRefusedError)
        assert not tr.is_closing()  # a datagram error does not close the endpoint
        tr.close()
        await proto.lost

    run(loop, main())


def test_datagram_many_peers_get_their_own_addresses(loop):
    async def main():
        server = Datagrams(loop)
        stransport, _ = await loop.create_datagram_endpoint(
            lambda: server, local_addr=("127.0.0.1", 0))
        target = stransport.get_extra_info("sockname")
        peers = []
        for _ in range(3):
            tr, _ = await loop.create_datagram_endpoint(
                lambda: Datagrams(loop), local_addr=("127.0.0.1", 0))
            peers.append(tr)
        got = []
        for i in range(100):  # in lock step: a burst could overflow the receive buffer
            for n, tr in enumerate(peers):
                tr.sendto(b"%d:%d" % (n, i), target)
            got += [await server.received.get() for _ in peers]
        for n, tr in enumerate(peers):
            mine = [data for data, addr in got if addr == tr.get_extra_info("sockname")]
            assert mine == [b"%d:%d" % (n, i) for i in range(100)]
        for tr in peers + [stransport]:
            tr.close()

    run(loop, main())


@pytest.mark.xfail_uvloop("uvloop's UDPTransport has no pause_reading/resume_reading")
def test_datagram_pause_reading_holds_datagrams(loop):
    async def main():
        server = Datagrams(loop)
        stransport, _ = await loop.create_datagram_endpoint(
            lambda: server, local_addr=("127.0.0.1", 0))
        client, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=stransport.get_extra_info("sockname"))
        stransport.pause_reading()
        client.sendto(b"held")
        await asyncio.sleep(0.05)
        assert server.received.empty()
        stransport.resume_reading()
        assert (await server.received.get())[0] == b"held"
        client.close()
        stransport.close()

    run(loop, main())


@pytest.mark.xfail_uvloop("uvloop's create_datagram_endpoint takes no AF_UNIX path local_addr")
def test_unix_datagram_endpoint(loop, sock_dir):
    async def main():
        server = Datagrams(loop, echo=True)
        spath, cpath = f"{sock_dir}/srv", f"{sock_dir}/cli"
        stransport, _ = await loop.create_datagram_endpoint(
            lambda: server, local_addr=spath, family=socket.AF_UNIX)
        client = Datagrams(loop)
        ctransport, _ = await loop.create_datagram_endpoint(
            lambda: client, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX)
        ctransport.sendto(b"over unix")
        assert await server.received.get() == (b"over unix", cpath)
        assert (await client.received.get())[0] == b"over unix"
        ctransport.close()
        stransport.close()

    run(loop, main())


def test_datagram_callback_exception_keeps_endpoint_open(loop):
    class Flaky(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"bad":
                raise ValueError("protocol bug")

    async def main():
        reported = []
        loop.set_exception_handler(lambda _, ctx: reported.append(ctx.get("exception")))
        server = Flaky(loop)
        stransport, _ = await loop.create_datagram_endpoint(
            lambda: server, local_addr=("127.0.0.1", 0))
        client, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), remote_addr=stransport.get_extra_info("sockname"))
        client.sendto(b"bad")
        assert (await server.received.get())[0] == b"bad"
        client.sendto(b"good")
        assert (await server.received.get())[0] == b"good"
        assert not stransport.is_closing()
        assert [type(e) for e in reported] == [ValueError]
        client.close()
        stransport.close()
        loop.set_exception_handler(None)

    run(loop, main())


async def endpoint_pair(loop, server, client):
    """A server bound to loopback and a client connected to it; returns both transports."""
    stransport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0))
    ctransport, _ = await loop.create_datagram_endpoint(
        lambda: client, remote_addr=stransport.get_extra_info("sockname"))
    return stransport, ctransport


def test_datagram_exceptions_reach_the_handler_and_the_loop_goes_on(loop):
    # Every datagram of a burst raises: each exception is reported, none stops the
    # endpoint or the loop, and the datagrams after them still arrive.
    class Raising(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data.startswith(b"bad"):
                raise ValueError(data)

    async def main():
        reported = []
        loop.set_exception_handler(lambda _, ctx: reported.append(ctx["exception"]))
        server = Raising(loop)
        stransport, client = await endpoint_pair(loop, server, Datagrams(loop))
        for i in range(3):
            client.sendto(b"bad%d" % i)
        client.sendto(b"good")
        got = [(await server.received.get())[0] for _ in range(4)]
        assert got == [b"bad0", b"bad1", b"bad2", b"good"]
        assert [(type(e), e.args) for e in reported] == [(ValueError, (b"bad%d" % i,))
                                                         for i in range(3)]
        assert not stransport.is_closing()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: 7), 5) == 7
        client.close()
        stransport.close()
        await server.lost
        loop.set_exception_handler(None)

    run(loop, main())


def test_datagram_sendto_rejects_what_asyncio_rejects(loop):
    async def main():
        server = Datagrams(loop)
        stransport, client = await endpoint_pair(loop, server, Datagrams(loop))
        peer = stransport.get_extra_info("sockname")
        for bad in ("text", 1, 2.5, [b"x"]):
            with pytest.raises(TypeError, match="bytes-like object"):
                client.sendto(bad)
        with pytest.raises(TypeError, match="bytes-like object"):
            client.sendto("text", peer)
        other = ("127.0.0.1", peer[1] + 1 if peer[1] < 65535 else 1)
        for addr in (other, ("127.0.0.2", peer[1]), peer[:1]):
            with pytest.raises(ValueError, match="Invalid address: must be None or"):
                client.sendto(b"x", addr)
        with pytest.raises(ValueError, match="Invalid address"):
            client.sendto(b"x", addr=other)
        client.sendto(b"", other)  # empty: nothing sent, no address check, as asyncio
        # What is accepted: bytes-likes, the connected address itself, as keyword too.
        client.sendto(b"1")
        client.sendto(bytearray(b"2"), peer)
        client.sendto(memoryview(b"x3x")[1:2], None)
        client.sendto(data=b"4", addr=tuple(peer))
        got = [(await server.received.get())[0] for _ in range(4)]
        assert got == [b"1", b"2", b"3", b"4"]
        client.close()
        stransport.close()
        await server.lost

    run(loop, main())


def test_datagram_sendto_after_close_is_dropped_quietly(loop):
    async def main():
        server, client = Datagrams(loop), Datagrams(loop)
        stransport, ctransport = await endpoint_pair(loop, server, client)
        ctransport.close()
        for _ in range(10):  # past asyncio's warning threshold: still no exception
            ctransport.sendto(b"late")
        assert await client.lost is None
        ctransport.sendto(b"later")
        await asyncio.sleep(0.05)
        assert server.received.empty()
        stransport.close()
        await server.lost

    run(loop, main())


def test_datagram_sendto_many_addresses_from_one_endpoint(loop):
    # An unconnected endpoint alternating between peers: each gets its own datagrams,
    # also when addresses are equal tuples rather than the same object.
    async def main():
        sender, _ = await loop.create_datagram_endpoint(
            lambda: Datagrams(loop), local_addr=("127.0.0.1", 0))
        peers = []
        for _ in range(3):
            proto = Datagrams(loop)
            tr, _ = await loop.create_datagram_endpoint(
                lambda proto=proto: proto, local_addr=("127.0.0.1", 0))
            peers.append((tr, proto))
        for i in range(20):
            for n, (tr, _) in enumerate(peers):
                host, port = tr.get_extra_info("sockname")
                sender.sendto(b"%d:%d" % (n, i), (str(host), int(port)))
            for n, (_, proto) in enumerate(peers):
                assert (await proto.received.get())[0] == b"%d:%d" % (n, i)
        sender.close()
        for tr, proto in peers:
            tr.close()
            await proto.lost

    run(loop, main())


class Batched(asyncio.DatagramProtocol):
    """Takes batches where the loop gives them (aiolowlat), single datagrams elsewhere."""

    def __init__(self):
        self.data = []
        self.batches = 0

    def datagram_received(self, data, addr):
        self.data.append(data)

    def datagrams_received(self, batch):
        self.batches += 1
        self.data += [data for data, _, _ in batch]


def test_datagram_set_protocol_mid_burst(loop):
    # The first protocol hands over to a batching one on b"switch"; datagrams after
    # it, also those of the same burst, reach only the new protocol, in order; then back.
    batched = Batched()

    class Switching(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"switch":
                self.transport.set_protocol(batched)

    async def main():
        first = Switching(loop)
        stransport, client = await endpoint_pair(loop, first, Datagrams(loop))
        for msg in (b"1", b"switch", b"2", b"3", b"4"):
            client.sendto(msg)
        async with asyncio.timeout(5):
            while len(batched.data) < 3:
                await asyncio.sleep(0.001)
        assert [first.received.get_nowait()[0] for _ in range(2)] == [b"1", b"switch"]
        assert first.received.empty()
        assert batched.data == [b"2", b"3", b"4"]
        assert stransport.get_protocol() is batched
        if loop.__class__.__module__.startswith("aiolowlat"):
            assert batched.batches >= 1  # it took the batch path
        stransport.set_protocol(first)
        client.sendto(b"5")
        assert (await first.received.get())[0] == b"5"
        assert batched.data == [b"2", b"3", b"4"]
        client.close()
        stransport.close()
        await first.lost

    run(loop, main())


@pytest.mark.xfail_uvloop("uvloop's UDPTransport has no pause_reading/resume_reading")
def test_datagram_pause_reading_inside_the_callback_holds_the_rest(loop):
    # pause_reading() from datagram_received: datagrams already received (the rest of
    # a burst) are held, not delivered, until resume_reading(), then come in order.
    class Pausing(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"pause":
                self.transport.pause_reading()

    async def main():
        server = Pausing(loop)
        stransport, client = await endpoint_pair(loop, server, Datagrams(loop))
        for msg in (b"pause", b"a", b"b", b"c"):
            client.sendto(msg)
        assert (await server.received.get())[0] == b"pause"
        await asyncio.sleep(0.05)
        assert server.received.empty()
        assert not stransport.is_reading()
        stransport.resume_reading()
        client.sendto(b"d")
        got = [(await server.received.get())[0] for _ in range(4)]
        assert got == [b"a", b"b", b"c", b"d"]
        client.close()
        stransport.close()
        await server.lost

    run(loop, main())


def test_datagram_keyboard_interrupt_stops_the_run_and_the_endpoint_goes_on(loop):
    class Interrupting(Datagrams):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"stop":
                raise KeyboardInterrupt

    server = Interrupting(loop)
    endpoints = run(loop, endpoint_pair(loop, server, Datagrams(loop)))
    stransport, client = endpoints

    async def wait_forever():
        client.sendto(b"stop")
        await asyncio.sleep(5)

    with pytest.raises(KeyboardInterrupt):
        run(loop, wait_forever())

    async def main():
        client.sendto(b"next")
        got = [(await server.received.get())[0] for _ in range(2)]
        assert got == [b"stop", b"next"]
        client.close()
        stransport.close()
        await server.lost

    run(loop, main())
