"""Unix sockets, pipes and fd watchers (add_reader/add_writer)."""

import asyncio
import os
import random
import socket

import pytest
from conftest import Echo, Recorder, run


def test_unix_server_and_connection(loop, sock_dir):
    path = os.path.join(sock_dir, "echo.sock")

    async def main():
        server = await loop.create_unix_server(Echo, path)
        assert server.sockets[0].getsockname() == path
        proto = Recorder(loop)
        tr, _ = await loop.create_unix_connection(lambda: proto, path)
        assert tr.get_extra_info("peername") == path
        assert tr.get_extra_info("socket").family == socket.AF_UNIX
        tr.write(b"over unix")
        assert await proto.wait_for_bytes(9) == b"over unix"
        assert tr.can_write_eof()
        tr.write_eof()  # Echo does not keep its half open: the server closes
        await proto.eof
        assert await proto.lost is None
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_streams_echo(loop, sock_dir):
    path = os.path.join(sock_dir, "streams.sock")

    async def handle(reader, writer):
        writer.write(await reader.read())
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"a" * 100_000)
        writer.write_eof()
        assert await reader.read() == b"a" * 100_000
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_connection_errors(loop, sock_dir):
    missing = os.path.join(sock_dir, "missing.sock")
    stale = os.path.join(sock_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # the file exists, nobody listens

    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, missing)
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, stale)

    run(loop, main())


def test_read_pipe(loop):
    r, w = os.pipe()

    async def main():
        proto = Recorder(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", 0))
        assert tr.get_extra_info("pipe").fileno() == r
        os.write(w, b"through ")
        os.write(w, b"the pipe")
        assert await proto.wait_for_bytes(16) == b"through the pipe"
        os.close(w)
        await proto.eof
        assert await proto.lost is None

    run(loop, main())


def test_write_pipe_large_then_close(loop):
    # 1 MiB does not fit a pipe buffer (64 KiB): the transport must buffer it
    # and still deliver all of it, then EOF, when closed early.
    payload = random.Random(8).randbytes(1 << 20)
    r, w = os.pipe()

    async def main():
        reader = Recorder(loop)
        await loop.connect_read_pipe(lambda: reader, os.fdopen(r, "rb", 0))
        writer = Recorder(loop)
        wtr, _ = await loop.connect_write_pipe(lambda: writer, os.fdopen(w, "wb", 0))
        wtr.write(payload)
        assert wtr.get_write_buffer_size() > 0
        wtr.close()
        await reader.eof
        assert reader.data == payload
        assert await writer.lost is None

    run(loop, main())


def test_write_pipe_reader_goes_away(loop):
    r, w = os.pipe()

    async def main():
        writer = Recorder(loop)
        wtr, _ = await loop.connect_write_pipe(lambda: writer, os.fdopen(w, "wb", 0))
        os.close(r)
        # The loop notices the closed read end without any write being made.
        await writer.lost
        assert wtr.is_closing()

    run(loop, main())


def test_add_reader_is_level_triggered(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = []

    async def main():
        done = loop.create_future()

        def on_readable():
            calls.append(a.recv(1))  # read only part of what is there
            if len(calls) == 10:
                loop.remove_reader(a)
                done.set_result(None)

        b.send(b"0123456789")  # one send: no new readiness edge after this
        loop.add_reader(a, on_readable)
        await done

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
    assert b"".join(calls) == b"0123456789"


def test_add_reader_fd_replaces_callback_and_passes_args(loop):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: pytest.fail("replaced callback was called"))
        loop.add_reader(
            a.fileno(), lambda *args: got.set_result(args) or loop.remove_reader(a), 1, 2
        )
        b.send(b"x")
        assert await got == (1, 2)

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_add_writer_and_remove_writer(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = []

    async def main():
        writable = loop.create_future()

        def on_writable():
            calls.append(a.send(b"written"))
            loop.remove_writer(a)
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(a, on_writable)
        await writable
        await asyncio.sleep(0.05)  # a removed writer must not fire again
        return await loop.sock_recv(b, 100)

    try:
        assert run(loop, main()) == b"written"
    finally:
        a.close()
        b.close()
    assert calls == [7]


def test_remove_reader_stops_callbacks(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = []

    async def main():
        loop.add_reader(a, calls.append, "called")
        loop.remove_reader(a)
        b.send(b"data nobody reads")
        await asyncio.sleep(0.05)

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
    assert calls == []


@pytest.mark.xfail_uvloop("uvloop's remove_reader/remove_writer return None instead of a bool")
def test_remove_reader_writer_report_registration(loop):
    a, b = socket.socketpair()

    async def main():
        loop.add_reader(a, lambda: None)
        loop.add_writer(a, lambda: None)
        assert loop.remove_reader(a) is True
        assert loop.remove_writer(a) is True
        assert loop.remove_reader(a) is False  # nothing registered any more
        assert loop.remove_writer(a) is False

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()
