"""TLS over TCP with certificates generated per session by trustme."""

import asyncio
import hashlib
import random
import socket
import ssl

import pytest
from conftest import Echo, Recorder, echo_server, run


def test_tls_echo(loop, server_ssl, client_ssl):
    payload = random.Random(9).randbytes(2 << 20)  # many TLS records

    async def main():
        server, addr = await echo_server(loop, ssl=server_ssl)
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(
            lambda: proto, *addr, ssl=client_ssl, server_hostname="localhost"
        )
        sslobj = tr.get_extra_info("ssl_object")
        assert sslobj is not None and sslobj.version().startswith("TLS")
        assert ("DNS", "localhost") in tr.get_extra_info("peercert")["subjectAltName"]
        tr.write(payload)
        got = await proto.wait_for_bytes(len(payload))
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        tr.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


def test_tls_streams_by_ip_address(loop, server_ssl, client_ssl):
    # The certificate also names 127.0.0.1, so the address itself verifies.
    async def handle(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl)
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname(), ssl=client_ssl
        )
        writer.write(b"secret\n")
        assert await reader.readline() == b"secret\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tls_untrusted_certificate_fails(loop, server_ssl):
    untrusting = ssl.create_default_context()  # system CAs only, not our test CA

    async def main():
        loop.set_exception_handler(lambda lp, ctx: None)  # the server logs the failure
        server, addr = await echo_server(loop, ssl=server_ssl)
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, *addr, ssl=untrusting, server_hostname="localhost"
            )
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tls_hostname_mismatch_fails(loop, server_ssl, client_ssl):
    async def main():
        loop.set_exception_handler(lambda lp, ctx: None)
        server, addr = await echo_server(loop, ssl=server_ssl)
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol, *addr, ssl=client_ssl, server_hostname="other.test"
            )
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tls_handshake_timeout_against_silent_server(loop, client_ssl):
    # The kernel completes the TCP handshake from the backlog; nobody ever
    # answers the ClientHello, so only ssl_handshake_timeout can end this.
    with socket.create_server(("127.0.0.1", 0)) as silent:

        async def main():
            with pytest.raises(ConnectionAbortedError):
                await loop.create_connection(
                    asyncio.Protocol,
                    *silent.getsockname(),
                    ssl=client_ssl,
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.2,
                )

        run(loop, main(), timeout=5)


def test_start_tls_upgrade(loop, server_ssl, client_ssl):
    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        await writer.start_tls(server_ssl)
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ssl, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        writer.write(b"now encrypted\n")
        assert await reader.readline() == b"NOW ENCRYPTED\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_loop_start_tls_with_protocols(loop, server_ssl, client_ssl):
    async def main():
        server_proto = Echo()
        server = await loop.create_server(lambda: server_proto, "127.0.0.1", 0)
        client = Recorder(loop)
        tr, _ = await loop.create_connection(lambda: client, *server.sockets[0].getsockname())
        await asyncio.sleep(0)  # let the server side's connection_made run
        # Both sides upgrade the same plain connection concurrently.
        server_tls, client_tls = await asyncio.gather(
            loop.start_tls(server_proto.transport, server_proto, server_ssl, server_side=True),
            loop.start_tls(tr, client, client_ssl, server_hostname="localhost"),
        )
        server_proto.transport = server_tls  # Echo must now write through TLS
        client_tls.write(b"upgraded")
        assert await client.wait_for_bytes(8) == b"upgraded"
        client_tls.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_cancelled_tls_handshake(loop, client_ssl):
    # Cancelled mid-handshake, create_connection must close its socket (the
    # fixture's fd check catches a leak).
    with socket.create_server(("127.0.0.1", 0)) as silent:

        async def main():
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    loop.create_connection(
                        asyncio.Protocol,
                        *silent.getsockname(),
                        ssl=client_ssl,
                        server_hostname="localhost",
                    ),
                    0.1,
                )

        run(loop, main())
