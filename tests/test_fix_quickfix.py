"""Interoperability with QuickFIX (C++ engine, Python binding) in a subprocess: logon, orders
and execution reports, a forced sequence gap each way answered by resend, logout."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import run

from aiolowlat.protocols.fix.engine import FixAcceptor, FixInitiator
from aiolowlat.protocols.fix.messages import ExecutionReport, NewOrderSingle
from aiolowlat.protocols.fix.session import SessionConfig
from aiolowlat.protocols.fix.settings import SessionSettings

PEER = os.path.join(os.path.dirname(__file__), "fix_quickfix_peer.py")
BEGINS = ["FIX.4.4", "FIX.4.2"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuickFixPeer:
    """The QuickFIX subprocess; its JSON lines are collected by a reader thread."""

    def __init__(self, role, port, directory, begin, expect=4, seconds=25, extra=()):
        self.proc = subprocess.Popen(
            [sys.executable, PEER, role, "--port", str(port), "--dir", str(directory),
             "--begin", begin, "--expect", str(expect), "--seconds", str(seconds), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.events = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:  # QuickFIX's own prints (OpenSSL errors), kept for messages
                event = {"event": "text", "text": line.rstrip("\n")}
            with self._lock:
                self.events.append(event)

    def seen(self, **match):
        with self._lock:
            return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]

    async def wait_for(self, timeout=15, **match):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.seen(**match)
            if found:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"QuickFIX never saw {match}; events: {self.events}")

    def finish(self, timeout=20):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
            self.proc.stdout.close()


def cl_ord_ids(events, type_, **fields):
    return [e["fields"].get("11") for e in events if e["type"] == type_
            and all(e["fields"].get(k) == v for k, v in fields.items())]


async def reports_for(session, count, timeout=10):
    got = []
    while len(got) < count:
        msg = await asyncio.wait_for(session.receive(), timeout)
        assert isinstance(msg, ExecutionReport), msg
        got.append(msg)
    return got


def assert_clean_logout(peer):
    """Logout both ways, and QuickFIX rejected nothing."""
    assert peer.seen(event="in", type="5") and peer.seen(event="out", type="5")
    assert not peer.seen(event="out", type="3")


def order(cl_ord_id):
    return NewOrderSingle(cl_ord_id=cl_ord_id, symbol="AAPL", side="1", order_qty=10,
                          price=101.5)


@pytest.mark.parametrize("begin", BEGINS)
def test_aiolowlat_initiator_with_quickfix_acceptor(loop, begin, tmp_path):
    port = free_port()
    peer = QuickFixPeer("acceptor", port, tmp_path, begin)

    async def main():
        await peer.wait_for(event="started")
        settings = SessionSettings(
            SessionConfig("ALW", "QFX", begin_string=begin, reset_on_logon=True),
            host="127.0.0.1", port=port, reconnect_interval=0.1)
        initiator = FixInitiator(settings)
        session = await initiator.start()
        try:
            await session.wait_logged_on(10)
            await peer.wait_for(event="logon")
            # Orders and execution reports.
            await session.send(order("O1"))
            new, fill = await reports_for(session, 2)
            assert (new.exec_type, fill.ord_status, fill.cum_qty) == ("0", "2", 10)
            assert session.orders.get("O1").state.value == "filled"
            # QuickFIX skips 3 numbers: we ask for them and get a GapFill, then the reports.
            await session.send(order("GAP2"))
            new, fill = await reports_for(session, 2)
            assert new.cl_ord_id == fill.cl_ord_id == "GAP2"
            assert session.core.counters.resend_requests_sent == 1
            (rr,) = await peer.wait_for(event="in", type="2")
            fills = await peer.wait_for(event="out", type="4")
            assert fills[0]["fields"]["123"] == "Y" and fills[0]["possdup"]
            assert int(fills[0]["fields"]["36"]) == int(rr["fields"]["7"]) + 3
            # We lose one order on the way out: QuickFIX asks, we replay it with PossDup.
            session.core.send(b"D", order("LOST3").to_fields(), time.time())
            session.core.data_to_send()  # dropped, as a lost write would be
            await session.send(order("O4"))
            reports = await reports_for(session, 4)
            assert sorted({r.cl_ord_id for r in reports}) == ["LOST3", "O4"]
            await peer.wait_for(event="out", type="2")
            replayed = await peer.wait_for(event="in", type="D", possdup=True)
            assert cl_ord_ids(replayed, "D") == ["LOST3"]
            assert cl_ord_ids(peer.seen(event="in"), "D") == ["O1", "GAP2", "LOST3", "O4"]
            # EndSeqNo=0 asks for everything since LOST3: O4 comes again too, QuickFIX drops it.
            assert session.core.counters.resent == 2
            # Logout handshake.
            await initiator.stop()
            await peer.wait_for(event="logout")
            assert_clean_logout(peer)
            assert session.rejects == [] and not session.connected
        finally:
            await initiator.stop()

    try:
        run(loop, main(), timeout=40)
    finally:
        assert peer.finish() == 0


@pytest.mark.parametrize("begin", BEGINS)
def test_aiolowlat_acceptor_with_quickfix_initiator(loop, begin, tmp_path):
    async def main():
        lose_next = {"GAP2"}

        def answer(session, msg):
            if not isinstance(msg, NewOrderSingle):
                return
            fix42 = begin == "FIX.4.2"
            common = dict(order_id="A" + msg.cl_ord_id, cl_ord_id=msg.cl_ord_id,
                          symbol=msg.symbol, side=msg.side,
                          exec_trans_type="0" if fix42 else None)
            new = ExecutionReport(exec_id="N" + msg.cl_ord_id, exec_type="0", ord_status="0",
                                  leaves_qty=msg.order_qty, cum_qty=0, avg_px=0, **common)
            fill = ExecutionReport(exec_id="F" + msg.cl_ord_id, exec_type="2" if fix42 else "F",
                                   ord_status="2", leaves_qty=0, cum_qty=msg.order_qty,
                                   avg_px=msg.price, last_qty=msg.order_qty, last_px=msg.price,
                                   **common)
            if msg.cl_ord_id in lose_next:
                # The New report is stored but lost on the way: QuickFIX must ask for it.
                session.core.send(b"8", new.to_fields(), time.time())
                session.core.data_to_send()
            else:
                session.send_nowait(new)
            session.send_nowait(fill)

        settings = SessionSettings(SessionConfig("ALW", "QFX", begin_string=begin,
                                                 initiator=False), connection_type="acceptor")
        acceptor = FixAcceptor([settings], on_message=answer)
        await acceptor.start("127.0.0.1", 0)
        (session,) = acceptor.sessions.values()
        peer = QuickFixPeer("initiator", acceptor.address[1], tmp_path, begin, expect=4)
        try:
            await peer.wait_for(event="logon")
            await peer.wait_for(event="logout", timeout=20)
            await session.wait_disconnected(10)
            received = peer.seen(event="in", type="8")
            assert sorted(cl_ord_ids(received, "8")) == ["GAP2", "GAP2", "O1", "O1"]
            (replayed,) = [e for e in received if e["possdup"]]
            assert replayed["fields"]["11"] == "GAP2" and replayed["fields"]["150"] == "0"
            assert peer.seen(event="out", type="2")  # QuickFIX asked for our lost report
            assert peer.seen(event="in", type="2")  # we asked for QuickFIX's skipped numbers
            assert session.core.counters.resend_requests_sent == 1
            assert session.core.counters.resent == 2  # the lost New, and the Fill after it
            assert_clean_logout(peer)
            assert session.rejects == [] and session.rejects_sent == []
        finally:
            code = peer.finish()
            await acceptor.stop()
        assert code == 0

    run(loop, main(), timeout=40)
