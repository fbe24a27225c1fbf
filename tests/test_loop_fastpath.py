"""Behaviour at the edges of the loop's C fast paths, the same on the three loops.

aiolowlat runs the loop iteration, the completion dispatch and a stream's write() in C
(csrc/evloop.c) and falls back to Python for anything unusual; these cases check that
the fallbacks and the state the C side keeps agree with asyncio's loop.
"""

import asyncio

import pytest
from conftest import Echo, Recorder, run


async def echo_pair(loop, client):
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    tr, _ = await loop.create_connection(lambda: client, *server.sockets[0].getsockname())
    return server, tr


async def received(proto, n, timeout=5):
    async with asyncio.timeout(timeout):
        while len(proto.data) < n:
            await asyncio.sleep(0.001)


def test_callback_error_is_reported_like_asyncio_and_the_rest_runs(loop):
    contexts, order = [], []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad(x):
        raise ValueError(x)

    async def main():
        loop.call_soon(bad, 1)
        loop.call_soon(order.append, "after")
        loop.call_later(0.001, bad, 2)
        await asyncio.sleep(0.02)

    run(loop, main())
    assert order == ["after"]
    assert [type(c["exception"]) for c in contexts] == [ValueError, ValueError]
    assert [c["exception"].args for c in contexts] == [(1,), (2,)]
    for ctx in contexts:
        assert ctx["message"].startswith("Exception in callback")
        assert "bad" in ctx["message"]
        assert "handle" in ctx


def test_keyboard_interrupt_in_callback_stops_the_run_and_keeps_later_callbacks(loop):
    order = []

    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_soon(order.append, "kept")
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(asyncio.sleep(0.01))
    run(loop, asyncio.sleep(0.01))
    assert order == ["kept"]


def test_write_takes_every_bytes_like_and_rejects_the_rest(loop):
    client = Recorder(loop)

    async def main():
        server, tr = await echo_pair(loop, client)
        await client.made
        tr.write(b"a")
        tr.write(bytearray(b"bc"))
        tr.write(memoryview(b"xdefx")[1:4])
        tr.write(memoryview(bytearray(b"g")))
        tr.write(b"")
        with pytest.raises(TypeError):
            tr.write("str")
        with pytest.raises(TypeError):
            tr.write()
        tr.writelines([b"h", bytearray(b"i")])
        await received(client, 9)
        tr.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert bytes(client.data) == b"abcdefghi"


def test_write_after_write_eof_raises(loop):
    client = Recorder(loop, keep_open_on_eof=True)

    async def main():
        server, tr = await echo_pair(loop, client)
        await client.made
        tr.write(b"x")
        tr.write_eof()
        with pytest.raises(RuntimeError):
            tr.write(b"y")
        await received(client, 1)
        tr.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert bytes(client.data) == b"x"


def test_set_protocol_mid_stream_switches_to_buffered(loop):
    class Switching(asyncio.Protocol):
        def __init__(self, then):
            self.first, self.then = None, then

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.first = data
            self.transport.set_protocol(self.then)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf, self.data = bytearray(4), bytearray()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.data += self.buf[:nbytes]

    buffered = Buffered()
    proto = Switching(buffered)

    async def main():
        server, tr = await echo_pair(loop, proto)
        tr.write(b"1")
        async with asyncio.timeout(5):
            while proto.first is None:
                await asyncio.sleep(0.001)
        tr.write(b"0123456789")
        await received(buffered, 10)
        tr.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)

    run(loop, main())
    assert proto.first == b"1"
    assert bytes(buffered.data) == b"0123456789"


def test_lowered_write_buffer_limits_pause_and_resume_the_protocol(loop):
    class Slow(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()  # the peer's buffers fill, so ours grow

    class Writer(Recorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.events = []

        def pause_writing(self):
            self.events.append("pause")

        def resume_writing(self):
            self.events.append("resume")

    client = Writer(loop)
    peers = []

    async def main():
        server = await loop.create_server(lambda: peers.append(Slow()) or peers[-1],
                                          "127.0.0.1", 0)
        tr, _ = await loop.create_connection(lambda: client, *server.sockets[0].getsockname())
        tr.set_write_buffer_limits(high=1024)
        chunk = b"z" * 65536
        for _ in range(512):  # 32 MiB: more than the kernel's socket buffers hold
            tr.write(chunk)
        assert client.events == ["pause"]
        peers[0].transport.resume_reading()
        async with asyncio.timeout(5):
            while "resume" not in client.events:
                await asyncio.sleep(0.001)
        tr.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert client.events == ["pause", "resume"]


@pytest.mark.parametrize("loop", ["aiolowlat"], indirect=True)
def test_quiet_writes_go_out_by_send_and_the_rest_by_the_ring_in_order(loop):
    """A quiet loop's write() offers its bytes to send(2) first; what the socket does not
    take (a write larger than its buffer) follows by io_uring, and order holds."""
    import socket

    chunks = [bytes([i]) * size for i, size in enumerate((64, 8 << 20, 64, 1000, 3 << 20))]

    async def main():
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
        got = Recorder(loop)
        tr, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        await loop.create_connection(lambda: got, sock=b)
        before = loop.ring_stats()
        tr.write(chunks[0])
        await received(got, len(chunks[0]))
        quiet = loop.ring_stats()
        for chunk in chunks[1:]:
            tr.write(chunk)  # the 8 MiB one fills the socket: the rest queue behind it
        await received(got, sum(map(len, chunks)), timeout=10)
        assert got.data == b"".join(chunks)
        tr.close()
        got.transport.close()
        return before, quiet, loop.ring_stats()

    before, quiet, after = run(loop, main(), timeout=20)
    assert quiet["direct_sends"] == before["direct_sends"] + 1
    assert quiet["sends"] == before["sends"]  # no io_uring send for it
    assert after["sends"] > quiet["sends"]  # the 8 MiB write's remainder went by the ring


@pytest.mark.parametrize("loop", ["aiolowlat"], indirect=True)
def test_quiet_sendto_goes_out_by_sendto_and_errors_reach_error_received(loop):
    """A quiet loop's sendto() calls sendto(2) at once; its error goes to error_received
    as asyncio's does (here: a refused port, reported by the next send)."""
    class Peer(asyncio.DatagramProtocol):
        def __init__(self):
            self.got, self.errors = loop.create_future(), []

        def datagram_received(self, data, addr):
            if not self.got.done():
                self.got.set_result(data)

        def error_received(self, exc):
            self.errors.append(exc)

    async def main():
        rx, rx_proto = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
        tx, tx_proto = await loop.create_datagram_endpoint(
            Peer, remote_addr=rx.get_extra_info("sockname"))
        before = loop.ring_stats()
        tx.sendto(b"hello")
        assert await asyncio.wait_for(rx_proto.got, 5) == b"hello"
        quiet = loop.ring_stats()
        rx.close()  # the port is gone: ICMP refuses the next datagram, the one after reports it
        for _ in range(50):
            tx.sendto(b"again")
            await asyncio.sleep(0.01)
            if tx_proto.errors:
                break
        tx.close()
        return before, quiet, tx_proto.errors

    before, quiet, errors = run(loop, main())
    assert quiet["direct_sends"] == before["direct_sends"] + 1
    assert quiet["sends"] == before["sends"]
    assert errors and isinstance(errors[0], ConnectionRefusedError)


@pytest.mark.parametrize("loop", ["aiolowlat"], indirect=True)
def test_batched_datagrams_are_collected_in_c_with_sender_and_receive_time(loop):
    """A datagrams_received protocol gets each wait's datagrams as one list of
    (data, addr, rx_ns), collected in C: the transport's Python _on_dgram is not called
    (the feed transports' timestamps are tested in test_transports.py)."""
    batches = []

    class Batched(asyncio.DatagramProtocol):
        def datagrams_received(self, batch):
            batches.append(batch)

    async def main():
        rx, _ = await loop.create_datagram_endpoint(Batched, local_addr=("127.0.0.1", 0))
        python_path = []
        rx._on_dgram = lambda *args: python_path.append(args)
        tx, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.get_extra_info("sockname"))
        for i in range(20):
            tx.sendto(b"%d" % i)
        async with asyncio.timeout(5):
            while sum(map(len, batches)) < 20:
                await asyncio.sleep(0.001)
        sender = tx.get_extra_info("sockname")
        tx.close()
        rx.close()
        return python_path, sender

    python_path, sender = run(loop, main())
    items = [item for batch in batches for item in batch]
    assert not python_path
    assert [data for data, _, _ in items] == [b"%d" % i for i in range(20)]
    assert all(addr == sender and ns == 0 for _, addr, ns in items)  # 0: no timestamps asked
