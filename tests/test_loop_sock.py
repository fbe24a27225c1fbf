"""loop.sock_* operations on non-blocking sockets, including cancellation."""

import asyncio
import hashlib
import random
import socket
import struct

import pytest
from conftest import run

UVLOOP_NO_DGRAM_SOCK_OPS = "uvloop does not implement sock_sendto/sock_recvfrom(_into)"


def nonblocking(*socks):
    for s in socks:
        s.setblocking(False)
    return socks


def test_sock_connect_accept_send_recv(loop):
    listener, client = nonblocking(socket.create_server(("127.0.0.1", 0)), socket.socket())

    async def main():
        accept = loop.create_task(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        conn, peer = await accept
        assert peer == client.getsockname()
        assert conn.gettimeout() == 0  # accepted sockets come back non-blocking
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 100) == b"ping"
        await loop.sock_sendall(conn, b"pong!")
        buf = bytearray(16)
        assert await loop.sock_recv_into(client, buf) == 5
        assert buf[:5] == b"pong!"
        client.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(conn, 100) == b""  # EOF
        conn.close()

    try:
        run(loop, main())
    finally:
        listener.close()
        client.close()


def test_sock_connect_refused(loop):
    with socket.socket() as closed, socket.socket() as client:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        client.setblocking(False)

        async def main():
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(client, closed.getsockname())

        run(loop, main())


def test_sock_sendall_large_while_peer_reads(loop):
    payload = random.Random(6).randbytes(8 << 20)
    a, b = nonblocking(*socket.socketpair())

    async def receive():
        h, n = hashlib.sha256(), 0
        while n < len(payload):
            data = await loop.sock_recv(b, 1 << 16)
            assert data, "unexpected EOF"
            h.update(data)
            n += len(data)
        return h.digest()

    async def main():
        # sendall must return only after every byte was handed to the kernel.
        _, digest = await asyncio.gather(loop.sock_sendall(a, payload), receive())
        return digest

    try:
        assert run(loop, main(), timeout=30) == hashlib.sha256(payload).digest()
    finally:
        a.close()
        b.close()


def test_cancelled_sock_recv_loses_no_data(loop):
    a, b = nonblocking(*socket.socketpair())

    async def main():
        for i in range(20):
            task = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)  # let the recv be submitted
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            msg = b"message %d" % i
            b.send(msg)
            # The cancelled recv must not have eaten the data.
            assert await loop.sock_recv(a, 100) == msg

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_recv_cancelled_after_data_arrived_hands_it_to_the_next_call(loop):
    # The bytes reach the socket while a recv is pending; the recv is cancelled and a new
    # one made before the loop looks again. Whichever of the two the bytes end up with
    # (under SQPOLL, io_uring may complete the cancelled one: the SQ thread takes its
    # cancel late), the new call must get them.
    a, b = nonblocking(*socket.socketpair())

    async def main():
        for i in range(20):
            first = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0.002)  # the recv is in the kernel, waiting
            msg = b"message %d" % i
            b.send(msg)
            first.cancel()
            second = loop.create_task(loop.sock_recv(a, 100))
            with pytest.raises(asyncio.CancelledError):
                await first
            assert await asyncio.wait_for(second, 2) == msg

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_sock_recv_timeout_then_reuse(loop):
    a, b = nonblocking(*socket.socketpair())

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 100), 0.05)
        b.send(b"late")
        assert await loop.sock_recv(a, 100) == b"late"

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_cancelled_sock_accept_then_accept(loop):
    (listener,) = nonblocking(socket.create_server(("127.0.0.1", 0)))

    async def main():
        task = loop.create_task(loop.sock_accept(listener))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The connection arriving after the cancel is not swallowed.
        with socket.create_connection(listener.getsockname()) as client:
            conn, peer = await loop.sock_accept(listener)
            assert peer == client.getsockname()
            conn.close()

    try:
        run(loop, main())
    finally:
        listener.close()


def test_pending_sock_recv_when_peer_closes(loop):
    a, b = nonblocking(*socket.socketpair())

    async def main():
        task = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        b.close()  # a pending recv completes with EOF when the peer goes away
        assert await task == b""

    try:
        run(loop, main())
    finally:
        a.close()


def test_pending_sock_recv_when_peer_resets(loop):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
    nonblocking(client, conn)

    async def main():
        task = loop.create_task(loop.sock_recv(client, 100))
        await asyncio.sleep(0)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # with zero linger: RST
        with pytest.raises(ConnectionResetError):
            await task

    try:
        run(loop, main())
    finally:
        client.close()


@pytest.mark.xfail_uvloop(UVLOOP_NO_DGRAM_SOCK_OPS)
def test_sock_sendto_recvfrom(loop):
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    nonblocking(a, b)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))

    async def main():
        assert await loop.sock_sendto(a, b"one", b.getsockname()) == 3
        assert await loop.sock_recvfrom(b, 100) == (b"one", a.getsockname())
        recv = loop.create_task(loop.sock_recvfrom_into(b, buf := bytearray(100)))
        await asyncio.sleep(0)
        await loop.sock_sendto(a, b"two!", b.getsockname())
        assert await recv == (4, a.getsockname())
        assert buf[:4] == b"two!"

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


@pytest.mark.xfail_uvloop("uvloop does not implement loop.sock_sendfile (NotImplementedError)")
def test_sock_sendfile(loop, tmp_path):
    data = random.Random(7).randbytes(2 << 20)
    (tmp_path / "blob").write_bytes(data)
    a, b = nonblocking(*socket.socketpair())

    async def receive(n):
        got = bytearray()
        while len(got) < n:
            got += await loop.sock_recv(b, 1 << 16)
        return bytes(got)

    async def main():
        with open(tmp_path / "blob", "rb") as f:
            sent, got = await asyncio.gather(loop.sock_sendfile(a, f), receive(len(data)))
            assert (sent, got) == (len(data), data)
            sent, got = await asyncio.gather(
                loop.sock_sendfile(a, f, offset=5, count=1000), receive(1000)
            )
            assert (sent, got) == (1000, data[5:1005])

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_cancelled_sock_recv_loses_no_bytes(loop):
    # The recv and its cancellation can reach the kernel together; whatever the
    # loop, the bytes must still be there for the next call.
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        with a, b:
            b.send(b"first")
            task = loop.create_task(loop.sock_recv(a, 100))
            await asyncio.sleep(0)  # the recv is issued
            task.cancel()
            await asyncio.sleep(0.02)
            got = b"" if task.cancelled() else task.result()
            for _ in range(5):  # bounded: at most one byte per call is ever needed
                if len(got) >= 5:
                    break
                got += await asyncio.wait_for(loop.sock_recv(a, 2), 5)
            assert got == b"first"

    run(loop, main())
