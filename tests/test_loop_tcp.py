"""TCP transports and servers: connect/serve variants, options, volume, flow control, faults."""

import asyncio
import hashlib
import random
import socket
import struct

import pytest
from conftest import Echo, Recorder, echo_server, run


def test_create_connection_echo_and_extra_info(loop):
    async def main():
        server, addr = await echo_server(loop)
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: proto, *addr)
        tr.write(b"hello ")
        tr.writelines([b"world", b"!"])
        assert await proto.wait_for_bytes(12) == b"hello world!"
        assert tr.get_extra_info("peername") == addr
        sockname = tr.get_extra_info("sockname")
        assert sockname[0] == "127.0.0.1" and sockname[1] != 0
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.getsockname() == sockname
        assert tr.get_extra_info("no-such-key", "dflt") == "dflt"
        assert not tr.is_closing()
        tr.close()
        assert tr.is_closing()
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_ipv6(loop):
    async def main():
        server, addr = await echo_server(loop, host="::1")
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: proto, *addr)
        assert tr.get_extra_info("socket").family == socket.AF_INET6
        tr.write(b"v6")
        assert await proto.wait_for_bytes(2) == b"v6"
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tcp_nodelay_on_connected_and_accepted(loop):
    accepted = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.append(transport)

    async def main():
        server = await loop.create_server(Server, "127.0.0.1", 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        await asyncio.sleep(0.01)
        for t in (tr, accepted[0]):
            sock = t.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            t.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_sock_and_local_addr(loop):
    peers = []

    class Server(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            peers.append(transport.get_extra_info("peername"))

    async def main():
        server = await loop.create_server(Server, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        # sock=: an already connected socket is adopted as is.
        sock = socket.create_connection(addr)
        sock.setblocking(False)
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: proto, sock=sock)
        tr.write(b"adopted")
        assert await proto.wait_for_bytes(7) == b"adopted"
        assert tr.get_extra_info("sockname") == sock.getsockname()
        tr.close()
        # local_addr=: 127.0.0.2 is loopback too, so the server sees it as the peer.
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: proto, *addr, local_addr=("127.0.0.2", 0))
        tr.write(b"x")
        await proto.wait_for_bytes(1)
        assert peers[-1] == tr.get_extra_info("sockname")
        assert peers[-1][0] == "127.0.0.2"
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_refused(loop):
    # A bound but not listening socket reserves a port that refuses connections.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))

        async def main():
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, *closed.getsockname())

        run(loop, main())


def test_create_server_reuse_port(loop):
    async def main():
        s1 = await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        s2 = await loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        for s in (s1, s2):
            assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            assert s.sockets[0].getsockname()[1] == port
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: proto, "127.0.0.1", port)
        tr.write(b"ping")
        assert await proto.wait_for_bytes(4) == b"ping"
        tr.close()
        for s in (s1, s2):
            s.close()
            await s.wait_closed()

    run(loop, main())


def test_create_server_start_serving_later(loop):
    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        addr = server.sockets[0].getsockname()
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"late")
        assert await reader.readexactly(4) == b"late"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()

    run(loop, main())


def test_serve_forever_cancelled(loop):
    async def main():
        server, addr = await echo_server(loop, start_serving=False)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"up")
        assert await reader.readexactly(2) == b"up"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        # Cancelling serve_forever closes the listening socket: at once, except under SQPOLL,
        # where the socket lives until the SQ thread has taken the cancel of its accept.
        for _ in range(20 if getattr(getattr(loop, "_ring", None), "sqpoll", False) else 1):
            try:
                _, late_writer = await asyncio.open_connection(*addr)
            except ConnectionRefusedError:
                break
            late_writer.close()
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the closed server still accepted connections")
        writer.close()
        await writer.wait_closed()

    run(loop, main())


def test_connect_accepted_socket(loop):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
    client.setblocking(False)
    conn.setblocking(False)

    async def main():
        server_tr, _ = await loop.connect_accepted_socket(Echo, conn)
        proto = Recorder(loop)
        client_tr, _ = await loop.create_connection(lambda: proto, sock=client)
        client_tr.write(b"accepted")
        assert await proto.wait_for_bytes(8) == b"accepted"
        client_tr.close()
        server_tr.close()
        await proto.lost

    run(loop, main())


def test_streams_echo(loop):
    async def handle(reader, writer):
        async for line in reader:
            writer.write(line.upper())
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        for word in (b"alpha\n", b"beta\n"):
            writer.write(word)
            assert await reader.readline() == word.upper()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_buffered_protocol_receives_everything(loop):
    payload = random.Random(1).randbytes(1 << 20)

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(4096)  # much smaller than the payload
            self.got = bytearray()
            self.done = loop.create_future()

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.got += self.buf[:nbytes]

        def eof_received(self):
            self.done.set_result(bytes(self.got))

    async def main():
        proto = Buffered()
        server = await loop.create_server(lambda: proto, "127.0.0.1", 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        tr.write(payload)
        tr.write_eof()
        assert await proto.done == payload
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_thousand_concurrent_connections(loop):
    n = 1000
    live = set()
    peak = []

    class Server(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            live.add(self)
            peak.append(len(live))

        def connection_lost(self, exc):
            live.discard(self)

    async def main():
        server = await loop.create_server(Server, "127.0.0.1", 0, backlog=n)
        addr = server.sockets[0].getsockname()
        protos = [Recorder(loop) for _ in range(n)]
        conns = await asyncio.gather(
            *(loop.create_connection(lambda p=p: p, *addr) for p in protos)
        )
        for i, (tr, _) in enumerate(conns):
            tr.write(struct.pack("!I", i))
        replies = await asyncio.gather(*(p.wait_for_bytes(4) for p in protos))
        assert [struct.unpack("!I", r)[0] for r in replies] == list(range(n))
        for tr, _ in conns:
            tr.close()
        await asyncio.gather(*(p.lost for p in protos))
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=60)
    assert max(peak) == n  # all 1,000 were open at the same time


def test_64mib_transfer_sha256(loop):
    size = 64 << 20
    chunk = random.Random(2).randbytes(1 << 20)
    sent = hashlib.sha256(chunk * (size // len(chunk))).hexdigest()
    server_seen = hashlib.sha256()

    async def handle(reader, writer):
        while data := await reader.read(1 << 18):
            server_seen.update(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())

        async def send():
            for _ in range(size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        async def receive():
            echoed, total = hashlib.sha256(), 0
            while data := await reader.read(1 << 18):
                echoed.update(data)
                total += len(data)
            return total, echoed.hexdigest()

        _, (total, echoed) = await asyncio.gather(send(), receive())
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return total, echoed

    total, echoed = run(loop, main(), timeout=60)
    assert total == size
    assert server_seen.hexdigest() == sent
    assert echoed == sent


async def paused_pair(loop, client):
    """Connect ``client`` to a server-side Recorder that does not read until resumed."""
    server_proto = Recorder(loop)
    server = await loop.create_server(lambda: server_proto, "127.0.0.1", 0)
    tr, _ = await loop.create_connection(lambda: client, *server.sockets[0].getsockname())
    # Paused here, not in connection_made: uvloop starts reading only after
    # connection_made returns, undoing a pause made there. The client has not
    # written anything yet, so nothing can be delivered in between.
    (await server_proto.made).pause_reading()
    return server, server_proto, tr


def test_pause_and_resume_reading(loop):
    async def main():
        server, peer, tr = await paused_pair(loop, Recorder(loop))
        assert not peer.transport.is_reading()
        tr.write(b"held back")
        await asyncio.sleep(0.05)
        assert peer.data == b""  # paused: data_received must not be called
        peer.transport.resume_reading()
        assert peer.transport.is_reading()
        assert await peer.wait_for_bytes(9) == b"held back"
        # Pausing again stops delivery again, resuming restarts it.
        peer.transport.pause_reading()
        tr.write(b"more")
        await asyncio.sleep(0.05)
        assert peer.data == b"held back"
        peer.transport.resume_reading()
        assert await peer.wait_for_bytes(13) == b"held backmore"
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_write_flow_control(loop):
    class Writer(Recorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.paused = loop.create_future()
            self.resumed = loop.create_future()

        def pause_writing(self):
            self.paused.set_result(self.transport.get_write_buffer_size())

        def resume_writing(self):
            self.resumed.set_result(self.transport.get_write_buffer_size())

    async def main():
        client = Writer(loop)
        server, peer, tr = await paused_pair(loop, client)
        tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        chunk = b"x" * (256 * 1024)
        sent = 0
        # The peer does not read, so kernel buffers fill and the transport
        # must report pause_writing; bounded at 256 MiB.
        for _ in range(1024):
            tr.write(chunk)
            sent += len(chunk)
            if client.paused.done():
                break
            await asyncio.sleep(0)
        assert client.paused.done(), "pause_writing never called"
        assert client.paused.result() > 64 * 1024
        assert not client.resumed.done()
        peer.transport.resume_reading()
        assert await client.resumed <= 16 * 1024
        await peer.wait_for_bytes(sent)
        assert len(peer.data) == sent
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


def test_half_close_write_eof(loop):
    async def main():
        server_proto = Recorder(loop, keep_open_on_eof=True)
        server = await loop.create_server(lambda: server_proto, "127.0.0.1", 0)
        client = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: client, *server.sockets[0].getsockname())
        assert tr.can_write_eof()
        tr.write(b"request")
        tr.write_eof()
        await server_proto.eof
        assert server_proto.data == b"request"
        # eof_received returned True: the server can still answer.
        server_proto.transport.write(b"response")
        server_proto.transport.write_eof()
        await client.eof
        assert client.data == b"response"
        assert await client.lost is None  # client's eof_received returned False
        assert not server_proto.lost.done()  # half-closed both ways, but still open
        server_proto.transport.close()
        assert await server_proto.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_peer_reset(loop):
    async def main():
        server_proto = Recorder(loop)
        server = await loop.create_server(lambda: server_proto, "127.0.0.1", 0)
        sock = socket.create_connection(server.sockets[0].getsockname())
        await server_proto.made
        # SO_LINGER with zero timeout makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        exc = await server_proto.lost
        assert isinstance(exc, ConnectionResetError)
        assert not server_proto.eof.done()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_stream_read_after_peer_reset_raises(loop):
    async def main():
        accepted = loop.create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result(w), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        peer = await accepted
        linger = struct.pack("ii", 1, 0)  # close() sends RST
        peer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        peer.transport.abort()
        with pytest.raises(ConnectionResetError):
            await reader.read()
        writer.close()  # not wait_closed(): it re-raises the reset
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_flushes_pending_writes(loop):
    payload = random.Random(3).randbytes(16 << 20)

    async def main():
        client = Recorder(loop)
        server, peer, tr = await paused_pair(loop, client)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 0  # the kernel could not take it all
        tr.close()
        peer.transport.resume_reading()
        await peer.eof
        assert hashlib.sha256(peer.data).digest() == hashlib.sha256(payload).digest()
        assert await client.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


def test_abort_drops_pending_writes(loop):
    payload = random.Random(4).randbytes(16 << 20)

    async def main():
        client = Recorder(loop)
        server, peer, tr = await paused_pair(loop, client)
        tr.write(payload)
        assert tr.get_write_buffer_size() > 0
        tr.abort()
        assert await client.lost is None
        peer.transport.resume_reading()
        await peer.lost
        assert len(peer.data) < len(payload)
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


@pytest.mark.parametrize("ending", ["abort", "close"])
def test_writes_after_close_still_end_in_connection_lost_and_eof(loop, ending):
    """websockets writes a close frame after abort(): the write is dropped, and the
    connection must still be lost and the peer see the end (it once hung here)."""

    async def main():
        lost = loop.create_future()

        class Closer(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b"hello")
                getattr(transport, ending)()
                for _ in range(3):
                    transport.write(b"late")  # dropped, as asyncio drops them

            def connection_lost(self, exc):
                lost.set_result(exc)

        server = await loop.create_server(Closer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            rest = await reader.read()  # to EOF (close) or a reset (abort)
            assert rest in (b"", b"hello")
        except ConnectionResetError:
            assert ending == "abort"
        assert await lost is None
        writer.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_closing_on_data_that_arrived_with_the_eof(loop):
    """Data and the peer's FIN in one batch, the transport closed on the data: the EOF
    that follows belongs to a closed transport and is not an error."""
    errors = []
    loop.set_exception_handler(lambda _, context: errors.append(context))

    async def main():
        lost = loop.create_future()

        class CloseOnData(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                self.transport.close()

            def connection_lost(self, exc):
                lost.set_result(exc)

        async def send_and_close(reader, writer):
            writer.write(b"bye")
            writer.close()

        server = await asyncio.start_server(send_and_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = socket.create_connection(("127.0.0.1", port))
        await asyncio.sleep(0.1)  # the data and the FIN are both waiting before we look
        await loop.create_connection(CloseOnData, sock=sock)
        assert await lost is None
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert not errors


def test_exception_in_protocol_callback_reaches_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    class Faulty(asyncio.Protocol):
        def data_received(self, data):
            raise KeyError("protocol bug")

    async def main():
        server = await loop.create_server(Faulty, "127.0.0.1", 0)
        client = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: client, *server.sockets[0].getsockname())
        tr.write(b"trigger")
        # The loop reports the error and closes the faulty connection.
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert [type(c.get("exception")) for c in contexts] == [KeyError]


@pytest.mark.xfail_uvloop("uvloop does not implement loop.sendfile (NotImplementedError)")
def test_sendfile_over_transport(loop, tmp_path):
    data = random.Random(5).randbytes(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)

    async def main():
        peer = Recorder(loop)
        server = await loop.create_server(lambda: peer, "127.0.0.1", 0)
        tr, _ = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f) == len(data)
            assert f.tell() == len(data)
            f.seek(0)
            assert await loop.sendfile(tr, f, offset=10, count=100) == 100
        tr.close()
        await peer.eof
        assert peer.data == data + data[10:110]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_cancelled_stream_read_keeps_connection_usable(loop):
    async def main():
        server, addr = await echo_server(loop)
        reader, writer = await asyncio.open_connection(*addr)
        for _ in range(5):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(100), 0.01)
        writer.write(b"still works")
        assert await reader.readexactly(11) == b"still works"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_loop_with_transfers_in_flight(loop):
    async def main():
        client = Recorder(loop)
        server, peer, tr = await paused_pair(loop, client)
        tr.write(b"x" * (16 << 20))  # the peer does not read: stays pending
        reading = loop.create_task(client.wait_for_bytes(1))
        await asyncio.sleep(0.01)
        return tr, reading

    tr, reading = run(loop, main())
    assert tr.get_write_buffer_size() > 0 and not reading.done()
    reading._log_destroy_pending = False  # abandoned on purpose
    # Closing must neither raise nor hang; the fixture then checks that the
    # abandoned transports' fds are released once nothing references them.
    loop.close()
    assert loop.is_closed()
