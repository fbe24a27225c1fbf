"""FIX over TLS against QuickFIX 1.16's SSLSocketAcceptor and SSLSocketInitiator (a quickfix
built with HAVE_SSL, as dev.sh builds it), with trustme certificates and client certificates
required on both sides: logon, an order and its reports, logout. Both ends read the same
QuickFIX SSL settings keys."""

import ssl

import pytest
import trustme
from conftest import run
from test_fix_quickfix import (
    QuickFixPeer,
    assert_clean_logout,
    cl_ord_ids,
    free_port,
    order,
    reports_for,
)

from aiolowlat.protocols.fix.engine import FixAcceptor, FixInitiator
from aiolowlat.protocols.fix.messages import ExecutionReport, NewOrderSingle
from aiolowlat.protocols.fix.settings import parse_settings

CLIENT_NAME = "alw.client.test"


def write_pki(directory, ca, prefix=""):
    """CA, server and client certificate files for a CA, as a venue hands them out."""
    paths = {"ca": directory / f"{prefix}ca.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for who, names in (("server", ("localhost", "127.0.0.1")), ("client", (CLIENT_NAME,))):
        cert = ca.issue_cert(*names)
        paths[who] = directory / f"{prefix}{who}.pem"
        paths[f"{who}_key"] = directory / f"{prefix}{who}.key"
        cert.cert_chain_pems[0].write_to_path(str(paths[who]))  # the leaf comes first
        cert.private_key_pem.write_to_path(str(paths[f"{who}_key"]))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def pki(tls_ca, tmp_path):
    return write_pki(tmp_path, tls_ca)


def tls_args(pki, who, verify_level=None):
    args = ["--tls", "--ca", pki["ca"], "--cert", pki[who], "--key", pki[f"{who}_key"]]
    return args + (["--verify-level", str(verify_level)] if verify_level is not None else [])


def initiator_settings(pki, port, client_cert=True):
    """aiolowlat's initiator from QuickFIX's own keys: checks the server against the CA."""
    cert = (f"ClientCertificateFile={pki['client']}\n"
            f"ClientCertificateKeyFile={pki['client_key']}\n") if client_cert else ""
    (settings,) = parse_settings(f"""
[DEFAULT]
ConnectionType=initiator
SocketConnectHost=127.0.0.1
SocketConnectPort={port}
ReconnectInterval=0.1
MaxReconnectInterval=0.2
ResetOnLogon=Y
CertificationAuthoritiesFile={pki['ca']}
{cert}
[SESSION]
BeginString=FIX.4.4
SenderCompID=ALW
TargetCompID=QFX
""")
    return settings


def acceptor_settings(pki):
    """aiolowlat's acceptor from QuickFIX's keys, requiring a client certificate."""
    return parse_settings(f"""
[DEFAULT]
ConnectionType=acceptor
SocketAcceptPort=0
ServerCertificateFile={pki['server']}
ServerCertificateKeyFile={pki['server_key']}
CertificationAuthoritiesFile={pki['ca']}
CertificateVerifyLevel=1
[SESSION]
BeginString=FIX.4.4
SenderCompID=ALW
TargetCompID=QFX
""")


def assert_refused(exc):
    """Refused for want of a certificate: a TLS alert naming it, or (TLS 1.3: the server
    decides after the client's side of the handshake) the connection closed before Logon."""
    assert (isinstance(exc, ssl.SSLError) and "certificate" in str(exc).lower()) or (
        isinstance(exc, ConnectionError) and "before the Logon was answered" in str(exc)
    ), repr(exc)


def certificate_checks(peer):
    """What QuickFIX's SSL verify callback printed: a line per certificate in the chain,
    ``depth: 0`` the other side's own, or ``Error (n): reason``."""
    return [e["text"].removeprefix("Certificate Verification: ")
            for e in peer.seen(event="text") if e["text"].startswith("Certificate Verification")]


def assert_verified_leaf(peer):
    checks = certificate_checks(peer)
    assert any(c.startswith("depth: 0") for c in checks), peer.events
    assert not any(c.startswith("Error") for c in checks), checks


def test_aiolowlat_initiator_with_quickfix_tls_acceptor(loop, pki, tmp_path):
    port = free_port()
    peer = QuickFixPeer("acceptor", port, tmp_path, "FIX.4.4",
                        extra=tls_args(pki, "server", verify_level=1))

    async def main():
        await peer.wait_for(event="started")
        # No client certificate: QuickFIX (CertificateVerifyLevel=1) ends the handshake.
        bare = FixInitiator(initiator_settings(pki, port, client_cert=False))
        await bare.start()
        try:
            with pytest.raises(OSError) as raised:
                await bare.wait_logged_on(5)
            assert_refused(raised.value)
            assert bare.session.logons == 0
        finally:
            await bare.stop()
        assert not peer.seen(event="logon")
        # With the CA's client certificate: logged on over TLS, QuickFIX's name checked.
        initiator = FixInitiator(initiator_settings(pki, port))
        session = await initiator.start()
        try:
            await session.wait_logged_on(10)
            await peer.wait_for(event="logon")
            tls = session._transport.get_extra_info("ssl_object")
            assert tls is not None and tls.version() in ("TLSv1.2", "TLSv1.3")
            assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]
            await session.send(order("O1"))
            new, fill = await reports_for(session, 2)
            assert (new.exec_type, new.ord_status) == ("0", "0")
            assert (fill.exec_type, fill.ord_status, fill.cum_qty, fill.last_px) == (
                "F", "2", 10, 101.5)
            assert session.orders.get("O1").state.value == "filled"
            assert cl_ord_ids(peer.seen(event="in"), "D") == ["O1"]
            await initiator.stop()
            await peer.wait_for(event="logout")
            assert_clean_logout(peer)
            assert session.rejects == [] and not session.connected
        finally:
            await initiator.stop()

    loop.set_exception_handler(lambda lp, ctx: None)  # the refused handshake is logged
    try:
        run(loop, main(), timeout=40)
    finally:
        code = peer.finish()
    assert code == 0
    assert_verified_leaf(peer)  # QuickFIX checked the client certificate we presented


def answer_new_and_fill(session, msg):
    if not isinstance(msg, NewOrderSingle):
        return
    common = dict(order_id="A" + msg.cl_ord_id, cl_ord_id=msg.cl_ord_id, symbol=msg.symbol,
                  side=msg.side)
    session.send_nowait(ExecutionReport(exec_id="N" + msg.cl_ord_id, exec_type="0",
                                        ord_status="0", leaves_qty=msg.order_qty, cum_qty=0,
                                        avg_px=0, **common))
    session.send_nowait(ExecutionReport(exec_id="F" + msg.cl_ord_id, exec_type="F",
                                        ord_status="2", leaves_qty=0, cum_qty=msg.order_qty,
                                        avg_px=msg.price, last_qty=msg.order_qty,
                                        last_px=msg.price, **common))


def test_quickfix_tls_initiator_with_aiolowlat_acceptor(loop, pki, tmp_path):
    async def main():
        client_certs = []

        def answer(session, msg):
            client_certs.append(session._transport.get_extra_info("peercert"))
            answer_new_and_fill(session, msg)

        acceptor = FixAcceptor(acceptor_settings(pki), on_message=answer)
        await acceptor.start("127.0.0.1", 0)
        (session,) = acceptor.sessions.values()
        # QuickFIX checks our certificate against the CA and presents its own.
        peer = QuickFixPeer("initiator", acceptor.address[1], tmp_path, "FIX.4.4", expect=4,
                            extra=tls_args(pki, "client"))
        try:
            await peer.wait_for(event="logon")
            await peer.wait_for(event="logout", timeout=20)
            await session.wait_disconnected(10)
            assert sorted(cl_ord_ids(peer.seen(event="in", type="8"), "8")) == [
                "GAP2", "GAP2", "O1", "O1"]
            # Its forced gap over TLS: we asked, it filled the gap.
            assert peer.seen(event="in", type="2") and session.core.counters.resend_requests_sent
            assert client_certs and all(
                ("DNS", CLIENT_NAME) in c["subjectAltName"] for c in client_certs)
            assert_clean_logout(peer)
            assert session.rejects == [] and session.rejects_sent == []
        finally:
            code = peer.finish()
            await acceptor.stop()
        assert code == 0
        assert_verified_leaf(peer)  # QuickFIX checked our server certificate

    run(loop, main(), timeout=40)


def test_quickfix_tls_initiator_refuses_untrusted_acceptor(loop, pki, tmp_path):
    """Our acceptor shows a certificate from a CA QuickFIX does not trust: no logon."""
    stranger = write_pki(tmp_path, trustme.CA(), prefix="stranger-")

    async def main():
        acceptor = FixAcceptor(acceptor_settings(stranger), on_message=answer_new_and_fill)
        await acceptor.start("127.0.0.1", 0)
        (session,) = acceptor.sessions.values()
        peer = QuickFixPeer("initiator", acceptor.address[1], tmp_path, "FIX.4.4",
                            seconds=3, extra=tls_args(pki, "client"))
        try:
            await peer.wait_for(event="error", text="no logon", timeout=10)
        finally:
            code = peer.finish()
            await acceptor.stop()
        assert code == 1 and not peer.seen(event="logon")
        # OpenSSL sends the stranger's root along (built from the acceptor's CA file), so
        # QuickFIX finds a root it does not trust rather than no issuer at all.
        refusals = {"self-signed certificate in certificate chain",
                    "unable to get local issuer certificate"}
        assert any(c.startswith("Error") and c.split(": ", 1)[1] in refusals
                   for c in certificate_checks(peer)), peer.events
        assert session.logons == 0 and not peer.seen(event="out", type="D")

    loop.set_exception_handler(lambda lp, ctx: None)  # each refused handshake is logged
    run(loop, main(), timeout=30)
