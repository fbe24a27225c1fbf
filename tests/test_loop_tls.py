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


def test_tls_alpn_and_connection_details(loop, tls_ca):
    """What asyncio's TLS transport reports, every loop alike: ALPN, cipher, peer certs."""
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost").configure_cert(server_ssl)
    server_ssl.set_alpn_protocols(["h2", "http/1.1"])
    client_ssl = ssl.create_default_context()  # its own: ALPN would stick to the shared one
    tls_ca.configure_trust(client_ssl)
    client_ssl.set_alpn_protocols(["http/1.1"])
    seen = {}

    async def handle(reader, writer):
        seen["alpn"] = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl)
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname(), ssl=client_ssl, server_hostname="localhost"
        )
        sslobj = writer.get_extra_info("ssl_object")
        name, version, bits = writer.get_extra_info("cipher")
        assert version.startswith("TLS") and bits >= 128 and name
        assert sslobj.selected_alpn_protocol() == "http/1.1"
        assert sslobj.getpeercert()["subject"] == writer.get_extra_info("peercert")["subject"]
        assert isinstance(sslobj.getpeercert(binary_form=True), bytes)
        assert writer.get_extra_info("sslcontext") is client_ssl
        writer.write(b"x\n")
        assert await reader.readline() == b"x\n"
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert seen["alpn"] == "http/1.1"


@pytest.mark.parametrize("loop", ["aiolowlat"], indirect=True)
def test_tls_runs_on_the_uring_transport_with_a_c_record_layer(loop, server_ssl, client_ssl):
    """aiolowlat's TLS: records in C (aiofastnet's layer), bytes through io_uring."""
    from aiolowlat._stream import UringStreamTransport

    made = []
    make = loop._make_socket_transport

    def recording(*args, **kw):
        made.append(make(*args, **kw))
        return made[-1]

    loop._make_socket_transport = recording

    async def main():
        server, addr = await echo_server(loop, ssl=server_ssl)
        proto = Recorder(loop)
        tr, _ = await loop.create_connection(
            lambda: proto, *addr, ssl=client_ssl, server_hostname="localhost"
        )
        assert type(tr).__module__.startswith("aiofastnet")
        assert made and all(type(t) is UringStreamTransport for t in made)  # both ends
        tr.write(b"ping")
        assert await proto.wait_for_bytes(4) == b"ping"
        tr.close()
        await proto.lost
        server.close()
        await server.wait_closed()

    run(loop, main())
