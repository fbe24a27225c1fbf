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
