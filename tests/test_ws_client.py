"""aiolowlat.ws against a real peer (the websockets library's server) on the three loops."""

import asyncio
import ssl
import struct

import pytest
from conftest import run
from websockets.asyncio.server import serve
from websockets.frames import CloseCode

import aiolowlat.ws as ws


async def echo(conn):
    async for msg in conn:
        await conn.send(msg)


async def drop(conn):
    """Drop the connection as a failing exchange does: no close frame, TCP reset."""
    conn.transport.abort()
    # Stay in the handler a moment: on the aiolowlat loop, returning at once after abort()
    # leaves the peer without EOF (a loop issue reported to its owner).
    await asyncio.sleep(0.05)


async def start(handler, **kwargs):
    server = await serve(handler, "127.0.0.1", 0, **kwargs).__aenter__()
    return server, server.sockets[0].getsockname()[1]


async def stop(server):
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_text_and_binary(loop, compression):
    async def main():
        server, port = await start(echo, compression=compression)
        try:
            async with ws.connect(f"ws://127.0.0.1:{port}/x", compression=compression) as conn:
                assert conn.transport.get_extra_info("peername")[1] == port
                for msg in ("héllo", b"\x00\xff" * 1000, "x" * 200_000, b""):
                    await conn.send(msg)
                    assert await conn.recv() == msg
                    assert conn.rx_ns > 0
            assert conn.close_code == 1000
        finally:
            await stop(server)

    run(loop, main())


def test_deflate_is_negotiated_and_used(loop):
    seen = {}

    async def handler(conn):
        seen["ext"] = conn.response.headers.get("Sec-WebSocket-Extensions")
        await conn.send("a" * 10_000)
        await conn.wait_closed()

    async def main():
        server, port = await start(handler, compression="deflate")
        try:
            conn = await ws.connect(f"ws://127.0.0.1:{port}/", compression="deflate")
            assert await conn.recv() == "a" * 10_000
            assert conn._proto.core.deflate is not None
            await conn.close()
        finally:
            await stop(server)
        assert seen["ext"].startswith("permessage-deflate")

    run(loop, main())


def test_wss_with_the_callers_context(loop, server_ssl, client_ssl):
    async def main():
        server, port = await start(echo, ssl=server_ssl)
        try:
            url = f"wss://localhost:{port}/"
            async with ws.connect(url, ssl=client_ssl, compression="deflate") as conn:
                assert conn.transport.get_extra_info("ssl_object").server_hostname == "localhost"
                await conn.send("secret")
                assert await conn.recv() == "secret"
        finally:
            await stop(server)

    run(loop, main())


def test_wss_verifies_by_default(loop, server_ssl):
    async def main():
        server, port = await start(echo, ssl=server_ssl)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await ws.connect(f"wss://localhost:{port}/")  # the test CA is not trusted
        finally:
            await stop(server)

    run(loop, main())


def test_wss_checks_the_host_name(loop, server_ssl, client_ssl):
    async def main():
        server, port = await start(echo, ssl=server_ssl)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await ws.connect(f"wss://127.0.0.1:{port}/", ssl=client_ssl,
                                 server_hostname="other.example")  # fmt: skip
        finally:
            await stop(server)

    run(loop, main())


def test_large_fragmented_message_from_the_server(loop):
    chunks = [bytes([i]) * 100_000 for i in range(20)]

    async def handler(conn):
        await conn.send(iter(chunks))  # one message in 20 frames
        await conn.send(iter(["ab", "cé", "d"]))
        await conn.wait_closed()

    async def main():
        server, port = await start(handler, max_size=None)
        try:
            async with ws.connect(f"ws://127.0.0.1:{port}/", max_size=4_000_000) as conn:
                assert await conn.recv() == b"".join(chunks)
                assert await conn.recv() == "abcéd"
        finally:
            await stop(server)

    run(loop, main())


def test_message_over_max_size_closes_with_1009(loop):
    seen = {}

    async def handler(conn):
        await conn.send(b"x" * 300_000)
        await conn.wait_closed()
        seen["code"] = conn.close_code

    async def main():
        server, port = await start(handler)
        try:
            conn = await ws.connect(f"ws://127.0.0.1:{port}/", max_size=100_000)
            with pytest.raises(ws.ConnectionClosedError) as info:
                await conn.recv()
            assert info.value.code == 1009
            await conn.wait_closed()
        finally:
            await stop(server)
        assert seen["code"] == 1009

    run(loop, main())


def test_ping_pong_both_ways(loop):
    async def handler(conn):
        latency = await (await conn.ping(b"srv"))  # our client answers
        await conn.send(f"{latency:.6f}")
        await conn.wait_closed()

    async def main():
        server, port = await start(handler)
        try:
            async with ws.connect(f"ws://127.0.0.1:{port}/") as conn:
                rtt = await asyncio.wait_for(await conn.ping(), 5)
                assert 0 < rtt < 5
                assert float(await conn.recv()) >= 0  # the server got its pong
        finally:
            await stop(server)

    run(loop, main())


@pytest.mark.parametrize("code, reason, ok", [(1000, "", True), (1001, "bye", True),
                                              (4001, "custom é", False)])  # fmt: skip
def test_close_codes_from_the_server(loop, code, reason, ok):
    async def handler(conn):
        await conn.send("last")
        await conn.close(code, reason)

    async def main():
        server, port = await start(handler)
        try:
            conn = await ws.connect(f"ws://127.0.0.1:{port}/")
            got = []
            if ok:
                async for msg in conn:  # ends on a normal close
                    got.append(msg)
            else:
                with pytest.raises(ws.ConnectionClosedError) as info:
                    async for msg in conn:
                        got.append(msg)
                assert (info.value.code, info.value.reason) == (code, reason)
            assert got == ["last"]
            assert (conn.close_code, conn.close_reason) == (code, reason)
            await conn.wait_closed()
        finally:
            await stop(server)

    run(loop, main())


def test_close_code_and_reason_reach_the_server(loop):
    seen = asyncio.Queue()

    async def handler(conn):
        await conn.wait_closed()
        await seen.put((conn.close_code, conn.close_reason))

    async def main():
        server, port = await start(handler)
        try:
            conn = await ws.connect(f"ws://127.0.0.1:{port}/")
            await conn.close(4002, "done here")
            assert await asyncio.wait_for(seen.get(), 5) == (4002, "done here")
            with pytest.raises(ws.ConnectionClosed):
                await conn.send("too late")
        finally:
            await stop(server)

    run(loop, main())


def test_server_drops_the_connection(loop):
    async def handler(conn):
        await conn.send("one")
        await conn.recv()  # delivered (abort() discards what is still queued)
        await drop(conn)

    async def main():
        server, port = await start(handler)
        try:
            conn = await ws.connect(f"ws://127.0.0.1:{port}/")
            assert await conn.recv() == "one"
            await conn.send("ack")
            with pytest.raises(ws.ConnectionClosedError) as info:
                await asyncio.wait_for(conn.recv(), 5)
            assert info.value.code == 1006
        finally:
            await stop(server)

    run(loop, main())


def test_subprotocol_and_extra_headers(loop):
    seen = {}

    async def handler(conn):
        seen["key"] = conn.request.headers["X-Api-Key"]
        await conn.send(conn.subprotocol)
        await conn.wait_closed()

    async def main():
        server, port = await start(handler, subprotocols=["v2"])
        try:
            async with ws.connect(f"ws://127.0.0.1:{port}/", subprotocols=["v1", "v2"],
                                  extra_headers={"X-Api-Key": "k1"}) as conn:  # fmt: skip
                assert conn.subprotocol == "v2"
                assert await conn.recv() == "v2"
        finally:
            await stop(server)
        assert seen["key"] == "k1"

    run(loop, main())


def test_rejected_upgrade_raises_invalid_handshake(loop):
    async def main():
        async def reject(conn, request):
            return conn.respond(403, "no\n")

        server = await serve(echo, "127.0.0.1", 0, process_request=reject).__aenter__()
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(ws.InvalidHandshake, match="403"):
                await ws.connect(f"ws://127.0.0.1:{port}/")
        finally:
            await stop(server)

    run(loop, main())


def test_reconnects_with_backoff_and_resubscribes(loop):
    connections = []

    async def handler(conn):
        connections.append(conn)
        sub = await conn.recv()
        await conn.send(f"{sub} #{len(connections)}")
        await conn.recv()  # the client's ack: the message is out before the drop
        if len(connections) < 3:
            await drop(conn)  # the exchange drops us, twice
        else:
            await conn.close(1000)

    async def main():
        server, port = await start(handler)
        got = []
        connector = ws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.01, backoff_max=0.05)
        try:
            async for conn in connector:
                await conn.send("subscribe")  # on every new connection
                async for msg in conn:  # ends when this connection closes
                    got.append(msg)
                    await conn.send("ack")
                if len(got) == 3:
                    break
        finally:
            await stop(server)
        assert got == ["subscribe #1", "subscribe #2", "subscribe #3"]
        assert connector.connections == 3

    run(loop, main())


def test_reconnect_retries_a_refused_port(loop):
    async def main():
        # a port with nothing listening, then a server on it
        probe, port = await start(echo)
        await stop(probe)
        connector = ws.connect(f"ws://127.0.0.1:{port}/", backoff_initial=0.01, backoff_max=0.02)
        server = None

        async def open_later():
            nonlocal server
            while connector.failures < 3:
                await asyncio.sleep(0.005)
            server = await serve(echo, "127.0.0.1", port).__aenter__()

        opener = asyncio.ensure_future(open_later())
        try:
            async for conn in connector:
                await conn.send("up")
                assert await conn.recv() == "up"
                break
            assert connector.failures >= 3 and connector.connections == 1
        finally:
            await opener
            await stop(server)

    run(loop, main())


async def silent_server(seen: asyncio.Queue):
    """A server that completes the handshake, then reads frames and never answers."""
    import base64
    import hashlib

    async def client(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(ln.split(b":")[1].strip() for ln in head.split(b"\r\n")
                   if ln.lower().startswith(b"sec-websocket-key"))  # fmt: skip
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                  .digest())  # fmt: skip
        writer.write(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")  # fmt: skip
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                mask = await reader.readexactly(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(
                    await reader.readexactly(b1 & 0x7F)))  # fmt: skip
                await seen.put((b0 & 15, data))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_pong_timeout_closes_with_1011(loop):
    async def main():
        seen = asyncio.Queue()
        server, port = await silent_server(seen)
        try:
            conn = await ws.connect(f"ws://127.0.0.1:{port}/", ping_interval=0.05,
                                    ping_timeout=0.1, close_timeout=0.2)  # fmt: skip
            opcode, _ = await asyncio.wait_for(seen.get(), 5)
            assert opcode == 9  # the heartbeat
            opcode, data = await asyncio.wait_for(seen.get(), 5)
            assert (opcode, struct.unpack("!H", data[:2])[0]) == (8, 1011)
            with pytest.raises(ws.ConnectionClosedError):
                await conn.recv()
        finally:
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_heartbeat_keeps_a_quiet_connection_open(loop):
    async def handler(conn):
        await asyncio.sleep(0.3)
        await conn.send("still here")
        await conn.wait_closed()

    async def main():
        server, port = await start(handler)
        try:
            async with ws.connect(f"ws://127.0.0.1:{port}/", ping_interval=0.05,
                                  ping_timeout=0.5) as conn:  # fmt: skip
                assert await conn.recv() == "still here"
        finally:
            await stop(server)

    run(loop, main())


def test_callback_style(loop):
    class Listener(ws.WSListener):
        def __init__(self):
            self.events = []
            self.gone = asyncio.get_running_loop().create_future()

        def on_ws_connected(self, transport):
            self.events.append("connected")
            transport.send(ws.Opcode.TEXT, b"ping me")

        def on_ws_frame(self, transport, frame):
            assert frame.fin and frame.rx_ns > 0
            if frame.opcode == ws.Opcode.TEXT:
                self.events.append(frame.get_payload_as_ascii_text())
                transport.send_close(1000, "thanks")
            elif frame.opcode == ws.Opcode.CLOSE:
                self.events.append(("close", frame.close_code))

        def on_ws_disconnected(self, transport):
            self.events.append("disconnected")
            self.gone.set_result(None)

    async def main():
        server, port = await start(echo)
        try:
            transport, listener = await ws.ws_connect(Listener, f"ws://127.0.0.1:{port}/")
            await asyncio.wait_for(listener.gone, 5)
            assert listener.events == ["connected", "ping me", ("close", 1000), "disconnected"]
            assert transport.close_code == 1000
        finally:
            await stop(server)

    run(loop, main())


def test_listener_exception_closes_with_1011(loop):
    seen = {}

    async def handler(conn):
        await conn.send("boom")
        await conn.wait_closed()
        seen["code"] = conn.close_code

    class Broken(ws.WSListener):
        def on_ws_frame(self, transport, frame):
            raise RuntimeError("strategy bug")

    async def main():
        server, port = await start(handler)
        try:
            transport, _ = await ws.ws_connect(Broken, f"ws://127.0.0.1:{port}/")
            await asyncio.wait_for(transport.wait_disconnected(), 5)
        finally:
            await stop(server)
        assert seen["code"] == CloseCode.INTERNAL_ERROR

    run(loop, main())


def test_bad_urls_and_options():
    async def main():
        with pytest.raises(ValueError):
            await ws.connect("http://127.0.0.1/")
        with pytest.raises(ValueError):
            await ws.connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())

    asyncio.run(asyncio.wait_for(main(), 5))


def test_callback_style_keeps_order_across_plain_and_other_frames(loop):
    """Plain messages go to on_ws_frame from C, pings and fragments from Python: one order."""
    sent = [f"m{i}" if i % 3 else f"b{i}".encode() for i in range(3000)]

    async def handler(conn):
        for i, msg in enumerate(sent):
            if i % 500 == 250:
                await conn.ping(b"p%d" % i)
            if i % 700 == 350:
                await conn.send(iter([msg[:1], msg[1:]]))  # two frames
            else:
                await conn.send(msg)
        await conn.wait_closed()

    class Listener(ws.WSListener):
        def __init__(self):
            self.got, self.pings = [], 0
            self.done = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, transport, frame):
            if frame.opcode == ws.Opcode.PING:
                self.pings += 1
            elif frame.opcode in (ws.Opcode.TEXT, ws.Opcode.BINARY):
                payload = frame.payload  # bytes: kept after the call
                self.got.append(payload.decode() if frame.opcode == 1 else payload)
                if len(self.got) == len(sent):
                    self.done.set_result(None)

    async def main():
        server, port = await start(handler)
        try:
            transport, listener = await ws.ws_connect(Listener, f"ws://127.0.0.1:{port}/")
            await asyncio.wait_for(listener.done, 10)
            transport.send_close()
            await asyncio.wait_for(transport.wait_disconnected(), 5)
        finally:
            await stop(server)
        assert listener.got == sent
        assert listener.pings == 6

    run(loop, main())


def test_recv_queue_pauses_and_resumes_reading(loop):
    """A burst past the queue's high mark pauses reading; recv() drains it, all in order."""
    count = 3 * ws._Queue.HIGH

    async def handler(conn):
        for i in range(count):
            await conn.send(f"{i}")
        await conn.wait_closed()

    async def main():
        server, port = await start(handler)
        try:
            async with ws.connect(f"ws://127.0.0.1:{port}/") as conn:
                await asyncio.sleep(0.2)  # let the burst arrive
                paused = conn._queue.paused
                got = [int(await conn.recv()) for _ in range(count)]
                assert got == list(range(count))
                assert not conn._queue.paused
        finally:
            await stop(server)
        assert paused

    run(loop, main())


@pytest.mark.parametrize("fastnet", [None, True, False])
@pytest.mark.parametrize("secure", [False, True])
def test_transport_choice(loop, secure, fastnet, server_ssl, client_ssl):
    """fastnet=None (default) takes the aiolowlat loop's own transports (io_uring, TLS records
    in C) and aiofastnet's on other loops; True takes aiofastnet's, False the loop's: the same
    client on each."""
    native = getattr(loop, "native_tls", False)
    on_fastnet = fastnet or (fastnet is None and not native)

    async def main():
        server, port = await start(echo, ssl=server_ssl if secure else None)
        try:
            url = f"wss://localhost:{port}/" if secure else f"ws://127.0.0.1:{port}/"
            kw = {"ssl": client_ssl} if secure else {}
            async with ws.connect(url, fastnet=fastnet, **kw) as conn:
                kind = type(conn.transport)
                # the aiolowlat loop's own TLS is aiofastnet's record layer over io_uring
                own_tls = kind.__name__ == "SSLTransport_Transport"
                assert (kind.__module__.startswith("aiofastnet") and not own_tls) == on_fastnet
                for msg in ("héllo", b"\x00" * 100_000):
                    await conn.send(msg)
                    assert await conn.recv() == msg
            assert conn.close_code == 1000
            if secure:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await ws.connect(url, fastnet=fastnet)  # the test CA is not trusted
        finally:
            await stop(server)

    run(loop, main())
