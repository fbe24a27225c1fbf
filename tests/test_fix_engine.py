"""FIX initiator and acceptor over loopback against the simulator exchange, on three loops."""

import asyncio
import socket

import pytest
from conftest import run

from aiolowlat.protocols.fix.engine import FixAcceptor, FixInitiator
from aiolowlat.protocols.fix.messages import (
    BusinessMessageReject,
    ExecutionReport,
    NewOrderSingle,
    OrderCancelReject,
    OrderCancelReplaceRequest,
    OrderCancelRequest,
)
from aiolowlat.protocols.fix.orders import OrderState
from aiolowlat.protocols.fix.session import SessionConfig
from aiolowlat.protocols.fix.settings import SessionSettings
from aiolowlat.sim.fix_exchange import FixExchange


def client(port, begin="FIX.4.4", sender="CLIENT", **kw):
    return SessionSettings(
        config=SessionConfig(sender, "EXCH", begin_string=begin, **kw),
        host="127.0.0.1", port=port, reconnect_interval=0.05, max_reconnect_interval=0.2,
    )


async def next_report(session, timeout=5):
    msg = await asyncio.wait_for(session.receive(), timeout)
    assert isinstance(msg, (ExecutionReport, OrderCancelReject, BusinessMessageReject)), msg
    return msg


@pytest.mark.parametrize("begin", ["FIX.4.4", "FIX.4.2"])
def test_orders_against_simulator(loop, begin):
    async def main():
        async with FixExchange(seed={"AAPL": 100.0}, levels=2, level_qty=100) as exchange:
            port = exchange.address[1]
            async with FixInitiator(client(port, begin)) as session:
                await session.wait_logged_on(5)
                # Rests below the best ask: acknowledged, no fill.
                await session.send(NewOrderSingle(cl_ord_id="B1", symbol="AAPL", side="1",
                                                  order_qty=50, price=99.5))
                ack = await next_report(session)
                assert (ack.exec_type, ack.ord_status, ack.leaves_qty) == ("0", "0", 50)
                order = session.orders.get("B1")
                assert order.state is OrderState.NEW and order.order_id == ack.order_id
                # Amend up through the asks: replaced, then fills at 100.01 and 100.02.
                await session.send(OrderCancelReplaceRequest(
                    orig_cl_ord_id="B1", cl_ord_id="B2", symbol="AAPL", side="1",
                    order_qty=150, price=100.02))
                assert session.orders.get("B2").state is OrderState.PENDING_REPLACE
                replaced = await next_report(session)
                assert replaced.exec_type == "5" and replaced.cl_ord_id == "B2"
                first = await next_report(session)
                second = await next_report(session)
                assert (first.last_qty, first.last_px) == (100, 100.01)
                assert (second.last_qty, second.last_px, second.ord_status) == (50, 100.02, "2")
                assert session.orders.get("B1") is session.orders.get("B2") is order
                assert order.state is OrderState.FILLED and order.cum_qty == 150
                assert order.leaves_qty == 0
                assert order.avg_px == pytest.approx((100 * 100.01 + 50 * 100.02) / 150)
                # Cancel a resting order; cancel an unknown one.
                await session.send(NewOrderSingle(cl_ord_id="S1", symbol="AAPL", side="2",
                                                  order_qty=10, price=105))
                await next_report(session)
                await session.send(OrderCancelRequest(orig_cl_ord_id="S1", cl_ord_id="S1c",
                                                      symbol="AAPL", side="2", order_qty=10))
                canceled = await next_report(session)
                assert canceled.exec_type == "4" and canceled.leaves_qty == 0
                assert session.orders.get("S1").state is OrderState.CANCELED
                await session.send(OrderCancelRequest(orig_cl_ord_id="nope", cl_ord_id="n2",
                                                      symbol="AAPL", side="2"))
                rej = await next_report(session)
                assert isinstance(rej, OrderCancelReject) and rej.cxl_rej_response_to == "1"
                # An invalid order is rejected by the exchange, not by the session.
                await session.send(NewOrderSingle(cl_ord_id="Z", symbol="AAPL", side="1",
                                                  order_qty=0, price=1))
                assert (await next_report(session)).ord_status == "8"
                assert session.orders.get("Z").state is OrderState.REJECTED
                assert session.rejects == [] and session.dropped == 0
                seq_before = session.core.next_sender_seq
            assert not session.connected and session.last_logout_text == ""
            assert seq_before == 8
            (ex_session,) = exchange.sessions
            assert ex_session.key == (begin, "EXCH", "CLIENT")
            assert ex_session.rejects_sent == []

    run(loop, main(), timeout=20)


def test_unsupported_message_gets_business_reject(loop):
    async def main():
        async with FixExchange() as exchange:
            async with FixInitiator(client(exchange.address[1])) as session:
                await session.wait_logged_on(5)
                # OrderStatusRequest (H) is valid FIX the simulator does not handle.
                await session.send((b"H", [(11, "Q1"), (55, "AAPL"), (54, "1")]))
                rej = await next_report(session)
                assert isinstance(rej, BusinessMessageReject)
                assert (rej.ref_msg_type, rej.business_reject_reason) == ("H", 3)

    run(loop, main())


def test_acceptor_routes_sessions_by_comp_ids_and_refuses_unknown(loop):
    async def main():
        def acceptor_settings(target):
            return SessionSettings(SessionConfig("EXCH", target, initiator=False),
                                   connection_type="acceptor", port=0)

        got = []
        acceptor = FixAcceptor([acceptor_settings("A"), acceptor_settings("B")],
                               on_message=lambda s, m: got.append((s.key[2], m)))
        await acceptor.start("127.0.0.1", 0)
        port = acceptor.address[1]
        try:
            a, b = FixInitiator(client(port, sender="A")), FixInitiator(client(port, sender="B"))
            sa, sb = await a.start(), await b.start()
            await sa.wait_logged_on(5)
            await sb.wait_logged_on(5)
            await sa.send(NewOrderSingle(cl_ord_id="a1", symbol="X", side="1", order_qty=1,
                                         price=1))
            await sb.send(NewOrderSingle(cl_ord_id="b1", symbol="X", side="2", order_qty=2,
                                         price=2))
            for _ in range(100):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.02)
            assert sorted((k, m.cl_ord_id) for k, m in got) == [("A", "a1"), ("B", "b1")]
            # An unknown CompID is refused: the connection is closed without a Logon.
            stranger = FixInitiator(client(port, sender="C", logon_timeout=2))
            sc = await stranger.start()
            for _ in range(100):
                if acceptor.refused:
                    break
                await asyncio.sleep(0.02)
            assert acceptor.refused >= 1 and not sc.is_logged_on
            await stranger.stop()
            await a.stop()
            await b.stop()
        finally:
            await acceptor.stop()

    run(loop, main())


def test_initiator_reconnects_with_backoff(loop):
    async def main():
        with socket.socket() as s:  # a free port nobody listens on yet
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        initiator = FixInitiator(client(port))
        session = await initiator.start()
        for _ in range(200):
            if initiator.connect_failures >= 2:
                break
            await asyncio.sleep(0.02)
        assert initiator.connect_failures >= 2 and not session.is_logged_on
        exchange = await FixExchange().start("127.0.0.1", port)
        try:
            await session.wait_logged_on(5)
            # The exchange drops the connection: the initiator comes back by itself and the
            # sequence numbers carry on.
            (ex_session,) = exchange.sessions
            seq = session.core.next_sender_seq
            ex_session.abort()
            await session.wait_disconnected(5)
            await session.wait_logged_on(5)
            assert initiator.connects == 2 and session.core.next_sender_seq == seq + 1
        finally:
            await initiator.stop()
            await exchange.stop()

    run(loop, main(), timeout=20)


def test_heartbeats_flow_on_an_idle_session(loop):
    async def main():
        async with FixExchange(heartbeat_interval=1) as exchange:
            async with FixInitiator(client(exchange.address[1], heartbeat_interval=1)) as s:
                await s.wait_logged_on(5)
                await asyncio.sleep(2.5)
                assert s.is_logged_on
                assert s.core.counters.sent >= 3  # logon + heartbeats
                assert s.core.counters.received >= 3

    run(loop, main())
