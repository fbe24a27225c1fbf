"""FIX over TLS on three loops, with certificates made by trustme: the simulator exchange over
TLS, refused server certificates, required client certificates, QuickFIX's SSL settings keys
and the command line."""

import asyncio
import os
import socket
import ssl
import subprocess
import sys

import pytest
import trustme
from conftest import run

from aiolowlat.protocols.fix.engine import FixAcceptor, FixInitiator
from aiolowlat.protocols.fix.messages import ExecutionReport, NewOrderSingle
from aiolowlat.protocols.fix.orders import OrderState
from aiolowlat.protocols.fix.session import SessionConfig
from aiolowlat.protocols.fix.settings import SessionSettings, SettingsError, parse_settings
from aiolowlat.sim.fix_exchange import FixExchange

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def client(port, sender="CLIENT", **kw):
    return SessionSettings(SessionConfig(sender, "EXCH", **kw), host="127.0.0.1", port=port,
                           reconnect_interval=0.05, max_reconnect_interval=0.2)


def server_context(ca, *names):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("localhost", "127.0.0.1"))).configure_cert(ctx)
    return ctx


def client_context(ca):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def buy_and_fill(session, cl_ord_id="B1"):
    """One order crossing the simulator's ask: its New and Fill reports, in order."""
    await session.send(NewOrderSingle(cl_ord_id=cl_ord_id, symbol="AAPL", side="1",
                                      order_qty=50, price=100.05))
    reports = [await asyncio.wait_for(session.receive(), 5) for _ in range(2)]
    assert all(isinstance(r, ExecutionReport) for r in reports), reports
    return reports


def test_tls_session_logon_order_fill_logout(loop, tls_ca, server_ssl, client_ssl):
    async def main():
        async with FixExchange(seed={"AAPL": 100.0}, levels=1, level_qty=100,
                               ssl=server_ssl) as exchange:
            initiator = FixInitiator(client(exchange.address[1]), ssl=client_ssl)
            session = await initiator.start()
            try:
                await initiator.wait_logged_on(5)
                # Both ends are on TLS, and the server proved the name we connected to.
                tls = session._transport.get_extra_info("ssl_object")
                assert tls is not None and tls.version() in ("TLSv1.2", "TLSv1.3")
                names = [v for k, v in tls.getpeercert()["subjectAltName"]]
                assert "127.0.0.1" in names
                (ex_session,) = exchange.sessions
                assert ex_session._transport.get_extra_info("ssl_object") is not None
                new, fill = await buy_and_fill(session)
                assert (new.exec_type, fill.ord_status, fill.cum_qty) == ("0", "2", 50)
                assert (fill.last_px, fill.avg_px) == (100.01, 100.01)
                assert session.orders.get("B1").state is OrderState.FILLED
            finally:
                await initiator.stop()
            assert not session.connected and session.last_logout_text == ""
            assert ex_session.rejects_sent == [] and session.rejects == []
            assert initiator.connects == 1 and initiator.connect_failures == 0

    run(loop, main(), timeout=20)


@pytest.mark.parametrize("why", ["untrusted CA", "wrong name"])
def test_refused_server_certificate_fails_logon_and_retries(loop, tls_ca, client_ssl, why):
    if why == "untrusted CA":
        server_ssl = server_context(trustme.CA())
    else:
        server_ssl = server_context(tls_ca, "exchange.example")

    async def main():
        async with FixExchange(ssl=server_ssl) as exchange:
            initiator = FixInitiator(client(exchange.address[1]), ssl=client_ssl)
            session = await initiator.start()
            try:
                with pytest.raises(ssl.SSLCertVerificationError) as raised:
                    await initiator.wait_logged_on(1.0)
                expected = "unable to get local issuer" if why == "untrusted CA" else "mismatch"
                assert expected in str(raised.value)
                # Still trying, each attempt refused the same way, never logged on.
                for _ in range(100):
                    if initiator.connect_failures >= 3:
                        break
                    await asyncio.sleep(0.05)
                assert initiator.connect_failures >= 3 and initiator.connects == 0
                assert isinstance(initiator.last_error, ssl.SSLCertVerificationError)
                assert session.logons == 0 and exchange.sessions == []
            finally:
                await initiator.stop()

    loop.set_exception_handler(lambda lp, ctx: None)  # the server logs each failed handshake
    run(loop, main(), timeout=15)


def assert_refused(exc):
    """A client without a certificate learns it was refused: under TLS 1.3 the acceptor's
    loop hangs up after the client's side of the handshake, with no alert sent."""
    assert (isinstance(exc, ssl.SSLError) and "certificate" in str(exc)) or (
        isinstance(exc, ConnectionResetError) and "before the Logon was answered" in str(exc)
    ), repr(exc)


def test_acceptor_requiring_client_certificates(loop, tls_ca, client_ssl):
    server_ssl = server_context(tls_ca)
    server_ssl.verify_mode = ssl.CERT_REQUIRED
    tls_ca.configure_trust(server_ssl)
    with_cert = client_context(tls_ca)
    tls_ca.issue_cert("client").configure_cert(with_cert)

    async def main():
        acceptor = FixAcceptor([SessionSettings(SessionConfig("EXCH", "CLIENT", initiator=False),
                                                connection_type="acceptor")], ssl=server_ssl)
        await acceptor.start("127.0.0.1", 0)
        (served,) = acceptor.sessions.values()
        port = acceptor.address[1]
        try:
            # No certificate: the acceptor ends the handshake, the session never logs on.
            bare = FixInitiator(client(port), ssl=client_ssl)
            await bare.start()
            with pytest.raises(OSError) as raised:
                await bare.wait_logged_on(1.0)
            assert_refused(raised.value)
            assert bare.connects + bare.connect_failures >= 2  # and it keeps trying
            assert bare.session.logons == 0 and served.logons == 0 and not served.connected
            await bare.stop()
            # With one the CA issued: logged on, and the acceptor knows who it is.
            good = FixInitiator(client(port), ssl=with_cert)
            session = await good.start()
            await good.wait_logged_on(5)
            peer = served._transport.get_extra_info("peercert")
            assert [v for k, v in peer["subjectAltName"]] == ["client"]
            assert session.is_logged_on and served.logons == 1
            await good.stop()
        finally:
            await acceptor.stop()

    loop.set_exception_handler(lambda lp, ctx: None)
    run(loop, main(), timeout=15)


@pytest.fixture
def pki(tls_ca, tmp_path):
    """Certificate files as a venue hands them out: CA, server and client cert+key."""
    paths = {"ca": tmp_path / "ca.pem", "server": tmp_path / "server.pem",
             "server_key": tmp_path / "server.key", "client": tmp_path / "client.pem",
             "client_key": tmp_path / "client.key"}
    tls_ca.cert_pem.write_to_path(str(paths["ca"]))
    for who, names in (("server", ("localhost", "127.0.0.1")), ("client", ("client",))):
        cert = tls_ca.issue_cert(*names)
        cert.private_key_pem.write_to_path(str(paths[f"{who}_key"]))
        with open(paths[who], "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
    return {k: str(v) for k, v in paths.items()}


def acceptor_cfg(pki, port=0, verify=1):
    return f"""
[DEFAULT]
ConnectionType=acceptor
SocketAcceptHost=127.0.0.1
SocketAcceptPort={port}
SocketUseSSL=Y
ServerCertificateFile={pki['server']}
ServerCertificateKeyFile={pki['server_key']}
CertificationAuthoritiesFile={pki['ca']}
CertificateVerifyLevel={verify}
SSLProtocol=+TLSv1_2 +TLSv1_3
[SESSION]
BeginString=FIX.4.4
SenderCompID=EXCH
TargetCompID=CLIENT
[SESSION]
BeginString=FIX.4.2
SenderCompID=EXCH
TargetCompID=CLIENT
"""


def initiator_cfg(pki, port, *, client_cert=True, host="127.0.0.1", extra=""):
    cert = (f"ClientCertificateFile={pki['client']}\n"
            f"ClientCertificateKeyFile={pki['client_key']}\n") if client_cert else ""
    return f"""
[DEFAULT]
ConnectionType=initiator
SocketConnectHost={host}
SocketConnectPort={port}
ReconnectInterval=0.05
MaxReconnectInterval=0.2
SocketUseSSL=Y
CertificationAuthoritiesFile={pki['ca']}
{cert}{extra}
[SESSION]
BeginString=FIX.4.4
SenderCompID=CLIENT
TargetCompID=EXCH
"""


def test_settings_file_tls_keys(loop, pki):
    acceptor_settings = parse_settings(acceptor_cfg(pki))
    assert acceptor_settings[0].ssl is acceptor_settings[1].ssl  # one port, one context
    ctx = acceptor_settings[0].ssl
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert (ctx.minimum_version, ctx.maximum_version) == (ssl.TLSVersion.TLSv1_2,
                                                          ssl.TLSVersion.TLSv1_3)

    async def main():
        def answer(session, msg):
            session.send_nowait(ExecutionReport(
                order_id="X1", cl_ord_id=msg.cl_ord_id, exec_id="E1", exec_type="F",
                ord_status="2", symbol=msg.symbol, side=msg.side, leaves_qty=0,
                cum_qty=msg.order_qty, avg_px=msg.price, last_qty=msg.order_qty,
                last_px=msg.price))

        acceptor = await FixAcceptor(acceptor_settings, on_message=answer).start()
        port = acceptor.address[1]
        served = acceptor.sessions[("FIX.4.4", "EXCH", "CLIENT")]
        try:
            (settings,) = parse_settings(initiator_cfg(pki, port))
            assert settings.ssl.verify_mode is ssl.CERT_REQUIRED and settings.ssl.check_hostname
            initiator = FixInitiator(settings)
            session = await initiator.start()
            try:
                await initiator.wait_logged_on(5)
                await session.send(NewOrderSingle(cl_ord_id="F1", symbol="AAPL", side="1",
                                                  order_qty=5, price=10.0))
                fill = await asyncio.wait_for(session.receive(), 5)
                assert isinstance(fill, ExecutionReport) and fill.cum_qty == 5
                assert [v for k, v in served._transport.get_extra_info("peercert")
                        ["subjectAltName"]] == ["client"]
            finally:
                await initiator.stop()
            # The same file without the client certificate is refused by this acceptor.
            (bare,) = parse_settings(initiator_cfg(pki, port, client_cert=False))
            refused = FixInitiator(bare)
            await refused.start()
            try:
                with pytest.raises(OSError) as raised:
                    await refused.wait_logged_on(1.0)
                assert_refused(raised.value)
            finally:
                await refused.stop()
            # Connecting by a name the certificate lacks fails, unless SSLServerName says
            # which name to check.
            (wrong,) = parse_settings(initiator_cfg(pki, port, extra="SSLServerName=venue.test"))
            mismatch = FixInitiator(wrong)
            await mismatch.start()
            try:
                with pytest.raises(ssl.SSLCertVerificationError):
                    await mismatch.wait_logged_on(1.0)
            finally:
                await mismatch.stop()
            (named,) = parse_settings(initiator_cfg(pki, port, extra="SSLServerName=localhost"))
            async with FixInitiator(named) as s:
                await s.wait_logged_on(5)
            assert served.logons == 2
        finally:
            await acceptor.stop()

    loop.set_exception_handler(lambda lp, ctx: None)
    run(loop, main(), timeout=20)


@pytest.mark.parametrize("key", ["CertificationAuthoritiesFile", "ClientCertificateFile",
                                 "ClientCertificateKeyFile"])
def test_missing_file_names_key_and_path(pki, tmp_path, key):
    missing = str(tmp_path / "nope" / "gone.pem")
    text = initiator_cfg(pki, 9876)
    text = "\n".join(f"{key}={missing}" if line.startswith(key + "=") else line
                     for line in text.splitlines())
    with pytest.raises(SettingsError) as raised:
        parse_settings(text)
    assert key in str(raised.value) and missing in str(raised.value)


def test_bad_tls_settings_are_named(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cfg = acceptor_cfg(pki)
    cases = {
        cfg.replace(pki["server"], str(garbage)): "ServerCertificateFile=" + str(garbage),
        cfg.replace("ServerCertificateFile", "#"): "needs ServerCertificateFile",
        cfg.replace("CertificateVerifyLevel=1", "CertificateVerifyLevel=7"):
            "CertificateVerifyLevel=7",
        cfg.replace("SSLProtocol=+TLSv1_2 +TLSv1_3", "SSLProtocol=TLSv9"): "unknown protocol",
        cfg.replace("SSLProtocol=+TLSv1_2 +TLSv1_3", "SSLProtocol=+TLSv1 +TLSv1_3"):
            "contiguous",
        cfg + "SSLCipherSuite=NO-SUCH-CIPHER\n": "SSLCipherSuite",
        cfg.replace("CertificationAuthoritiesFile", "CertificateAuthoritiesFile"):
            "CertificationAuthoritiesFile",
        cfg + "TLSCipherSuites=TLS_AES_128_GCM_SHA256\n": "TLSCipherSuites is not supported",
    }
    for text, named in cases.items():
        with pytest.raises(SettingsError) as raised:
            parse_settings(text)
        assert named in str(raised.value), (named, raised.value)
    # A missing server certificate on the acceptor names its key and path too.
    with pytest.raises(SettingsError, match="ServerCertificateFile=/nonexistent.pem"):
        parse_settings(cfg.replace(pki["server"], "/nonexistent.pem"))
    # TLS keys with SocketUseSSL=N: plain TCP, as asked.
    assert parse_settings(cfg.replace("SocketUseSSL=Y", "SocketUseSSL=N"))[0].ssl is None


def run_client_against(server_cmd, client_cmd):
    """Start the server process, run the client to its end, then collect the server (which
    stops on its own --seconds): (client result, server exit code, server stdout, stderr)."""
    server = subprocess.Popen(server_cmd, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run(client_cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return client, server.returncode, out, err


def test_cli_runs_tls_sessions_from_files(pki, tmp_path):
    port = free_port()
    server_cfg, client_cfg = tmp_path / "server.cfg", tmp_path / "client.cfg"
    server_cfg.write_text(acceptor_cfg(pki, port))
    client_cfg.write_text(initiator_cfg(pki, port))
    cmd = [sys.executable, "-m", "aiolowlat.fix"]
    initiator, acceptor_rc, out, err = run_client_against(
        [*cmd, "acceptor", "--config", str(server_cfg), "--seconds", "6", "--loop", "aiolowlat"],
        [*cmd, "initiator", "--config", str(client_cfg), "--seconds", "3",
         "--orders-per-second", "5", "-v"])
    assert initiator.returncode == 0, initiator.stderr
    assert acceptor_rc == 0, err
    assert "fix logon ('FIX.4.4', 'CLIENT', 'EXCH')" in initiator.stderr
    orders = [line for line in out.splitlines() if '"type":"NewOrderSingle"' in line]
    assert len(orders) >= 5, out
    assert all('"session":"FIX.4.4-EXCH-CLIENT"' in line for line in orders)


def test_acceptor_port_needs_one_tls_setup(pki, server_ssl):
    tls = parse_settings(acceptor_cfg(pki))[0]
    plain = SessionSettings(SessionConfig("EXCH", "OTHER", initiator=False),
                            connection_type="acceptor")
    with pytest.raises(ValueError, match="same TLS settings"):
        FixAcceptor([tls, plain])
    assert FixAcceptor([tls, plain], ssl=server_ssl).ssl is server_ssl  # said outright
    assert FixAcceptor([plain]).ssl is None


def test_cli_initiator_against_simulator_over_tls(pki, tmp_path):
    port = free_port()
    client_cfg = tmp_path / "client.cfg"
    client_cfg.write_text(initiator_cfg(pki, port, client_cert=False))
    initiator, sim_rc, out, err = run_client_against(
        [sys.executable, "-m", "aiolowlat.sim.fix_exchange", "--port", str(port), "--symbols",
         "AAPL", "--mid", "1.0", "--seconds", "6", "--certfile", pki["server"], "--keyfile",
         pki["server_key"]],
        [sys.executable, "-m", "aiolowlat.fix", "initiator", "--config", str(client_cfg),
         "--seconds", "3", "--orders-per-second", "5"])
    assert initiator.returncode == 0 and sim_rc == 0, (initiator.stderr, err)
    assert f"on 127.0.0.1:{port} (TLS)" in out
    # The demo orders buy 1 at 1.0 below the seeded asks: each is acknowledged New.
    reports = [line for line in initiator.stdout.splitlines()
               if '"type":"ExecutionReport"' in line]
    assert len(reports) >= 5 and all('"exec_type":"0"' in line for line in reports), reports
    orders = int(out.split("orders=")[1].split()[0])
    assert orders == len(reports)
