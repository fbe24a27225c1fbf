"""Order tracking, the simulator's matching engine, settings files, the CLI and the example."""

import os
import subprocess
import sys
import time

import pytest

from aiolowlat.protocols.fix.codec import decode, encode
from aiolowlat.protocols.fix.messages import (
    ExecutionReport,
    NewOrderSingle,
    OrderCancelReject,
    OrderCancelReplaceRequest,
    OrderCancelRequest,
    from_fix,
)
from aiolowlat.protocols.fix.orders import OrderState, OrderTracker
from aiolowlat.protocols.fix.settings import SettingsError, parse_settings
from aiolowlat.protocols.fix.store import FileStore, MemoryStore
from aiolowlat.sim.fix_exchange import BookOrder, MatchingEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def er(exec_id, exec_type, status, cum, leaves, avg, cl="A", **kw):
    return ExecutionReport(order_id="X1", cl_ord_id=cl, exec_id=exec_id, exec_type=exec_type,
                           ord_status=status, side="1", cum_qty=cum, leaves_qty=leaves,
                           avg_px=avg, **kw)


def test_typed_messages_round_trip_through_the_wire():
    msg = NewOrderSingle(cl_ord_id="A", symbol="AAPL", side="1", order_qty=100, price=9.75,
                         transact_time=1_700_000_000.5)
    back = from_fix(decode(encode(b"FIX.4.4", b"D", msg.to_fields())))
    assert back == msg


def test_order_life_cycle_with_fills_replace_and_cancel():
    t = OrderTracker()
    t.sent(NewOrderSingle(cl_ord_id="A", symbol="S", side="1", order_qty=100, price=10.0))
    assert t.get("A").state is OrderState.PENDING_NEW
    t.received(er("e1", "0", "0", 0, 100, 0))
    assert t.get("A").state is OrderState.NEW
    t.received(er("e2", "F", "1", 40, 60, 10.0, last_qty=40, last_px=10.0))
    t.received(er("e2", "F", "1", 40, 60, 10.0, last_qty=40, last_px=10.0))  # PossDup again
    order = t.get("A")
    assert order.state is OrderState.PARTIALLY_FILLED and order.fills == [(40, 10.0)]
    t.sent(OrderCancelReplaceRequest(orig_cl_ord_id="A", cl_ord_id="B", symbol="S", side="1",
                                     order_qty=150, price=10.5))
    assert t.get("B") is order and order.state is OrderState.PENDING_REPLACE
    t.received(er("e3", "5", "1", 40, 110, 10.0, cl="B", orig_cl_ord_id="A", order_qty=150,
                  price=10.5))
    assert order.cl_ord_id == "B" and order.order_qty == 150 and order.price == 10.5
    assert order.state is OrderState.PARTIALLY_FILLED
    t.received(er("e4", "F", "1", 100, 50, 10.3, cl="B", last_qty=60, last_px=10.5))
    assert (order.cum_qty, order.leaves_qty, order.avg_px) == (100, 50, 10.3)
    assert order.filled_notional == pytest.approx(40 * 10.0 + 60 * 10.5)
    t.sent(OrderCancelRequest(orig_cl_ord_id="B", cl_ord_id="C", symbol="S", side="1"))
    assert order.state is OrderState.PENDING_CANCEL
    t.received(OrderCancelReject(order_id="X1", cl_ord_id="C", orig_cl_ord_id="B",
                                 ord_status="1", cxl_rej_response_to="1", text="too late"))
    assert order.state is OrderState.PARTIALLY_FILLED and order.text == "too late"
    t.sent(OrderCancelRequest(orig_cl_ord_id="B", cl_ord_id="D", symbol="S", side="1"))
    t.received(er("e5", "4", "4", 100, 0, 10.3, cl="D", orig_cl_ord_id="B"))
    assert order.state is OrderState.CANCELED and order.state.is_final
    assert order.cl_ord_ids == ["A", "B", "D"] and t.open_orders() == []


def test_rejected_and_unknown_orders():
    t = OrderTracker()
    t.sent(NewOrderSingle(cl_ord_id="A", symbol="S", side="2", order_qty=5, price=1.0))
    t.received(er("e1", "8", "8", 0, 0, 0, text="no"))
    assert t.get("A").state is OrderState.REJECTED
    assert t.received(er("e9", "0", "0", 0, 1, 0, cl="ghost")) is None
    assert t.unknown_reports == 1
    assert t.sent(OrderCancelRequest(orig_cl_ord_id="ghost", cl_ord_id="g2", symbol="S",
                                     side="1")) is None
    assert t.unknown_requests == 1


def test_matching_engine_price_time_priority():
    m = MatchingEngine()
    m.submit(BookOrder("s1", "S", "2", 10, 101.0, order_qty=10))
    m.submit(BookOrder("s2", "S", "2", 10, 100.0, order_qty=10))
    m.submit(BookOrder("s3", "S", "2", 10, 100.0, order_qty=10))  # same price, later
    buy = BookOrder("b1", "S", "1", 25, 101.0, order_qty=25)
    fills = m.submit(buy)
    assert [(f.resting.order_id, f.qty, f.price) for f in fills] == [
        ("s2", 10, 100.0), ("s3", 10, 100.0), ("s1", 5, 101.0)]
    assert buy.qty == 0 and buy.avg_px == pytest.approx((2000 + 505) / 25)
    assert fills[0].aggressor_after == (10, 1000.0, 15)
    assert m.depth("S") == ([], [(101.0, 5)])
    # A replace that raises the size loses priority; a size-down keeps it.
    m.submit(BookOrder("s4", "S", "2", 5, 101.0, order_qty=5))
    m.replace("s1", 30, 101.0)
    assert [q for _, q in m.depth("S")[1]] == [5, 25]
    m.replace("s4", 3, 101.0)
    assert m.depth("S")[1] == [(101.0, 3), (101.0, 25)]  # s4 still first
    assert m.cancel("s1").order_id == "s1" and m.cancel("nope") is None


SETTINGS = """
# a comment
[DEFAULT]
ConnectionType=initiator
HeartBtInt=15
SocketConnectHost=127.0.0.1
SocketConnectPort=7001
FileStorePath={store}
FileStoreSync=0.5
ResetOnLogon=Y

[SESSION]
BeginString=FIX.4.4
SenderCompID=A
TargetCompID=X

[SESSION]
BeginString=FIX.4.2
SenderCompID=B
TargetCompID=X
HeartBtInt=5
ResetOnLogon=N
"""


def test_settings_file(tmp_path):
    a, b = parse_settings(SETTINGS.format(store=tmp_path))
    assert a.config.key == ("FIX.4.4", "A", "X") and a.config.heartbeat_interval == 15
    assert a.config.reset_on_logon and not b.config.reset_on_logon
    assert b.config.heartbeat_interval == 5 and b.port == 7001 and a.store_sync == 0.5
    store = a.open_store()
    assert isinstance(store, FileStore)
    assert store.path.endswith("FIX.4.4-A-X.store")
    store.close()
    b.store_path = None
    assert isinstance(b.open_store(), MemoryStore)


@pytest.mark.parametrize(("text", "error"), [
    ("[SESSION]\nBeginString=FIX.4.4\nSenderCompID=A\n", "needs TargetCompID"),
    ("[SESSION]\nBeginStrin=FIX.4.4\n", "unknown key 'BeginStrin'"),
    ("[DEFAULT]\nHeartBtInt=30\n", "no \\[SESSION\\]"),
    ("[SESSION]\nBeginString=FIX.5.0\nSenderCompID=A\nTargetCompID=B\n"
     "SocketConnectPort=1\n", "supported FIX.4.2, FIX.4.4"),
    ("[SESSION]\nBeginString=FIX.4.4\nSenderCompID=A\nTargetCompID=B\n", "needs SocketConnect"),
    ("[SESSION]\nBeginString=FIX.4.4\nSenderCompID=A\nTargetCompID=B\nSocketConnectPort=x\n",
     "expected a number"),
    ("[SESSION]\nResetOnLogon=maybe\nBeginString=FIX.4.4\nSenderCompID=A\nTargetCompID=B\n"
     "SocketConnectPort=1\n", "expected Y or N"),
    ("HeartBtInt=1\n", "inside a section"),
    ("[DEFAULT]\nStartTime=00:00:00\n", "StartTime is not supported"),
])
def test_settings_errors_name_the_problem(text, error):
    with pytest.raises(SettingsError, match=error):
        parse_settings(text)


def test_cli_acceptor_and_initiator_with_seconds(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "fix.cfg"
    cfg.write_text(f"""
[DEFAULT]
HeartBtInt=30
ReconnectInterval=0.2
FileStorePath={tmp_path / 'store'}
[SESSION]
ConnectionType=acceptor
BeginString=FIX.4.4
SenderCompID=EX
TargetCompID=CL
SocketAcceptPort={port}
[SESSION]
ConnectionType=initiator
BeginString=FIX.4.4
SenderCompID=CL
TargetCompID=EX
SocketConnectPort={port}
""")
    base = [sys.executable, "-m", "aiolowlat.fix"]
    acceptor = subprocess.Popen(base + ["acceptor", "--config", str(cfg), "--seconds", "6"],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for _ in range(300):  # the acceptor listens once its imports are done
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        initiator = subprocess.run(
            base + ["initiator", "--config", str(cfg), "--seconds", "3", "--loop", "aiolowlat",
                    "--orders-per-second", "20"], capture_output=True, text=True, timeout=30,
            cwd=ROOT)
        assert initiator.returncode == 0, initiator.stderr
        out, _ = acceptor.communicate(timeout=30)
    finally:
        if acceptor.poll() is None:
            acceptor.kill()
            acceptor.wait()
    assert acceptor.returncode == 0
    lines = [ln for ln in out.splitlines() if '"NewOrderSingle"' in ln]
    assert len(lines) >= 10  # ~20/s for ~3 s, once logged on
    # Both sides stored their sequence numbers.
    assert sorted(os.listdir(tmp_path / "store")) == ["FIX.4.4-CL-EX.store",
                                                      "FIX.4.4-EX-CL.store"]
    bad = subprocess.run(base + ["initiator", "--config", str(tmp_path / "missing.cfg")],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert bad.returncode == 2 and "missing.cfg" in bad.stderr


def test_example_order_bot_runs_and_exits_zero():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "fix_order_bot.py"),
                           "--seconds", "1.5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "logged on as BOT" in proc.stdout
    for kind in ("ER new", "ER replaced", "ER trade"):
        assert kind in proc.stdout
    assert "rounds in" in proc.stdout
