"""A FIX exchange simulator: an acceptor in front of a price-time priority matching engine.

``MatchingEngine`` is plain Python (orders in, fills out). ``FixExchange`` accepts any
initiator logging on to its CompID (FIX 4.2 or 4.4), answers NewOrderSingle,
OrderCancelRequest and OrderCancelReplaceRequest with ExecutionReports or
OrderCancelRejects, and other application messages with a BusinessMessageReject.
With ``ssl=`` (a server SSLContext) it serves FIX over TLS.

    python -m aiolowlat.sim.fix_exchange --port 9876 --seconds 30 [--certfile C --keyfile K]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import signal
import ssl
from dataclasses import dataclass, field

from ..protocols.fix.engine import FixAcceptor, Session, _SessionProtocol
from ..protocols.fix.messages import (
    BusinessMessageReject,
    ExecutionReport,
    NewOrderSingle,
    OrderCancelReject,
    OrderCancelReplaceRequest,
    OrderCancelRequest,
)
from ..protocols.fix.session import SessionConfig
from ..protocols.fix.settings import SessionSettings

__all__ = ["BookOrder", "Fill", "FixExchange", "MatchingEngine"]


@dataclass
class BookOrder:
    order_id: str
    symbol: str
    side: str  # "1" buy, "2" sell
    qty: float  # leaves
    price: float | None  # None: market
    owner: object = None  # the session (None: the simulator's own liquidity)
    cl_ord_id: str = ""
    order_qty: float = 0.0
    cum_qty: float = 0.0
    notional: float = 0.0
    ord_type: str = "2"
    seq: int = 0  # time priority
    fills: list = field(default_factory=list)

    @property
    def avg_px(self) -> float:
        return self.notional / self.cum_qty if self.cum_qty else 0.0


@dataclass(frozen=True)
class Fill:
    aggressor: BookOrder
    resting: BookOrder
    qty: float
    price: float
    # (cum qty, notional, leaves) of each side right after this fill, for its report
    aggressor_after: tuple = ()
    resting_after: tuple = ()


class MatchingEngine:
    """Per-symbol books; price-time priority; trades at the resting order's price."""

    def __init__(self):
        self._books: dict[str, tuple[list, list]] = {}  # symbol -> (bids, asks) sorted
        self._orders: dict[str, BookOrder] = {}
        self._seq = itertools.count(1)

    def order(self, order_id: str) -> BookOrder | None:
        return self._orders.get(order_id)

    def depth(self, symbol: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        bids, asks = self._books.get(symbol, ([], []))
        return ([(o.price, o.qty) for _, o in bids], [(o.price, o.qty) for _, o in asks])

    def submit(self, order: BookOrder, *, rest: bool = True) -> list[Fill]:
        """Match ``order``; a limit remainder rests if ``rest`` (else it is left unfilled)."""
        order.seq = next(self._seq)
        bids, asks = self._books.setdefault(order.symbol, ([], []))
        opposite = asks if order.side == "1" else bids
        fills = []
        while order.qty > 0 and opposite:
            _, best = opposite[0]
            if order.price is not None and (
                best.price > order.price if order.side == "1" else best.price < order.price
            ):
                break
            qty = min(order.qty, best.qty)
            for o in (order, best):
                o.qty -= qty
                o.cum_qty += qty
                o.notional += qty * best.price
            fills.append(Fill(order, best, qty, best.price,
                              (order.cum_qty, order.notional, order.qty),
                              (best.cum_qty, best.notional, best.qty)))
            if best.qty <= 0:
                opposite.pop(0)
                self._orders.pop(best.order_id, None)
        if order.qty > 0 and order.price is not None and rest:
            self._rest(order)
        return fills

    def _rest(self, order: BookOrder) -> None:
        bids, asks = self._books.setdefault(order.symbol, ([], []))
        if order.side == "1":
            bisect.insort(bids, ((-order.price, order.seq), order), key=lambda e: e[0])
        else:
            bisect.insort(asks, ((order.price, order.seq), order), key=lambda e: e[0])
        self._orders[order.order_id] = order

    def cancel(self, order_id: str) -> BookOrder | None:
        order = self._orders.pop(order_id, None)
        if order is None:
            return None
        bids, asks = self._books[order.symbol]
        side = bids if order.side == "1" else asks
        side[:] = [e for e in side if e[1] is not order]
        return order

    def replace(self, order_id: str, qty: float, price: float | None) -> list[Fill] | None:
        """New total quantity and price; keeps time priority only for a pure size-down."""
        order = self.cancel(order_id)
        if order is None:
            return None
        keep_priority = price == order.price and qty <= order.order_qty
        order.order_qty = qty
        order.qty = qty - order.cum_qty
        order.price = price
        if order.qty <= 0:
            return []
        if keep_priority:
            self._rest_keep(order)
            return []
        return self.submit(order)

    def _rest_keep(self, order: BookOrder) -> None:
        seq = order.seq
        self._rest(order)
        order.seq = seq


class FixExchange:
    """The simulator on a FixAcceptor; ``seed`` puts resting liquidity in the books;
    ``ssl`` (a server-side SSLContext) serves TLS."""

    def __init__(self, sender_comp_id: str = "EXCH", *, begin_strings=("FIX.4.4", "FIX.4.2"),
                 heartbeat_interval: int = 30, seed: dict[str, float] | None = None,
                 levels: int = 5, level_qty: float = 1000.0, tick: float = 0.01,
                 replenish: bool = True, ssl=None):
        self.engine = MatchingEngine()
        self.ssl = ssl
        self.replenish = replenish
        self.sender_comp_id = sender_comp_id
        self._ids = itertools.count(1)
        self._exec_ids = itertools.count(1)
        self.orders_received = 0
        self.reports_sent = 0
        self.acceptors = []
        for begin in begin_strings:
            template = SessionSettings(
                config=SessionConfig(sender_comp_id, "*", begin_string=begin,
                                     heartbeat_interval=heartbeat_interval, initiator=False),
                connection_type="acceptor",
            )
            self.acceptors.append(FixAcceptor(template=template, on_message=self._on_message))
        for symbol, mid in (seed or {}).items():
            for i in range(1, levels + 1):
                for side, px in (("1", mid - i * tick), ("2", mid + i * tick)):
                    self.engine.submit(BookOrder(self._order_id(), symbol, side, level_qty,
                                                 round(px, 8), order_qty=level_qty))
        self._server = None

    @property
    def sessions(self) -> list[Session]:
        return [s for a in self.acceptors for s in a.sessions.values()]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FixExchange:
        """Listen on one port for every BeginString (routed by the Logon's BeginString)."""
        loop = asyncio.get_running_loop()
        by_begin = {a.template.config.begin_string: a for a in self.acceptors}

        def route(msg):
            acceptor = by_begin.get(msg.get_str(8, "")) if msg is not None else None
            return acceptor._route(msg) if acceptor is not None else None

        self._server = await loop.create_server(lambda: _SessionProtocol(router=route),
                                                host, port, ssl=self.ssl)
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(s.logout(timeout=timeout) for s in self.sessions if s.connected))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FixExchange:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ---- order handling ------------------------------------------------------------------

    def _order_id(self) -> str:
        return f"X{next(self._ids)}"

    def _on_message(self, session: Session, msg) -> None:
        kind = type(msg)
        if kind is NewOrderSingle:
            self._new_order(session, msg)
        elif kind is OrderCancelRequest:
            self._cancel(session, msg)
        elif kind is OrderCancelReplaceRequest:
            self._replace(session, msg)
        else:
            msg_type = getattr(msg, "MSG_TYPE", None) or msg.msg_type
            self._send(session, BusinessMessageReject(
                ref_msg_type=msg_type.decode(), business_reject_reason=3,
                text="Unsupported Message Type"))

    def _report(self, session, order: BookOrder, exec_type: str, *, last=None, text=None,
                orig_cl_ord_id=None, ord_status=None, after=None) -> None:
        if session is None or not session.is_logged_on:
            return
        fix42 = session.settings.config.begin_string == "FIX.4.2"
        cum, notional, leaves = after or (order.cum_qty, order.notional, order.qty)
        if ord_status is None:
            if leaves <= 0 and cum > 0:
                ord_status = "2"
            elif cum > 0:
                ord_status = "1"
            else:
                ord_status = "0"
        if exec_type == "F" and fix42:
            exec_type = ord_status  # 4.2: 1 partial fill, 2 fill
        leaves = 0.0 if exec_type in ("4", "8") else max(leaves, 0.0)
        self._send(session, ExecutionReport(
            order_id=order.order_id, cl_ord_id=order.cl_ord_id, orig_cl_ord_id=orig_cl_ord_id,
            exec_id=f"E{next(self._exec_ids)}", exec_trans_type="0" if fix42 else None,
            exec_type=exec_type, ord_status=ord_status, symbol=order.symbol, side=order.side,
            order_qty=order.order_qty, ord_type=order.ord_type, price=order.price,
            last_qty=last.qty if last else None, last_px=last.price if last else None,
            leaves_qty=leaves, cum_qty=cum, avg_px=round(notional / cum, 8) if cum else 0.0,
            text=text, ord_rej_reason=None))
        self.reports_sent += 1

    @staticmethod
    def _send(session, msg) -> None:
        if session is not None and session.is_logged_on:  # else the owner is gone
            session.send_nowait(msg)

    def _fills(self, fills: list[Fill]) -> None:
        for f in fills:
            self._report(f.aggressor.owner, f.aggressor, "F", last=f, after=f.aggressor_after)
            self._report(f.resting.owner, f.resting, "F", last=f, after=f.resting_after)
        for f in fills:
            if f.resting.owner is None and self.replenish and f.resting.qty <= 0:
                # The simulator's own liquidity comes back (matching, and reported, like any
                # order): every seeded level is always there.
                r = f.resting
                self._fills(self.engine.submit(BookOrder(
                    self._order_id(), r.symbol, r.side, r.order_qty, r.price,
                    order_qty=r.order_qty)))

    def _new_order(self, session: Session, msg: NewOrderSingle) -> None:
        self.orders_received += 1
        limit = msg.ord_type == "2"
        order = BookOrder(self._order_id(), msg.symbol, msg.side, msg.order_qty,
                          msg.price if limit else None, owner=session, cl_ord_id=msg.cl_ord_id,
                          order_qty=msg.order_qty, ord_type=msg.ord_type)
        problem = None
        if msg.ord_type not in ("1", "2"):
            problem = "unsupported OrdType"
        elif msg.side not in ("1", "2"):
            problem = "unsupported Side"
        elif not msg.order_qty or msg.order_qty <= 0:
            problem = "OrderQty must be positive"
        elif limit and (msg.price is None or msg.price <= 0):
            problem = "limit order needs a positive Price"
        if problem is not None:
            order.qty = 0
            self._report(session, order, "8", text=problem, ord_status="8")
            return
        self._report(session, order, "0")
        ioc = msg.time_in_force in ("3", "4") or not limit
        fills = self.engine.submit(order, rest=not ioc)
        self._fills(fills)
        if ioc and order.qty > 0:
            self._report(session, order, "4", ord_status="4", text="unfilled remainder canceled")

    def _find(self, session: Session, orig_cl_ord_id: str) -> BookOrder | None:
        for order in list(self.engine._orders.values()):
            if order.owner is session and order.cl_ord_id == orig_cl_ord_id:
                return order
        return None

    def _cancel(self, session: Session, msg: OrderCancelRequest) -> None:
        order = self._find(session, msg.orig_cl_ord_id)
        if order is None:
            self._send(session, OrderCancelReject(
                order_id="NONE", cl_ord_id=msg.cl_ord_id, orig_cl_ord_id=msg.orig_cl_ord_id,
                ord_status="8", cxl_rej_response_to="1", cxl_rej_reason=1,
                text="Unknown order"))
            return
        self.engine.cancel(order.order_id)
        order.cl_ord_id = msg.cl_ord_id
        self._report(session, order, "4", ord_status="4", orig_cl_ord_id=msg.orig_cl_ord_id)

    def _replace(self, session: Session, msg: OrderCancelReplaceRequest) -> None:
        order = self._find(session, msg.orig_cl_ord_id)
        if order is None or msg.order_qty <= order.cum_qty:
            self._send(session, OrderCancelReject(
                order_id=order.order_id if order else "NONE", cl_ord_id=msg.cl_ord_id,
                orig_cl_ord_id=msg.orig_cl_ord_id, ord_status="8" if order is None else "0",
                cxl_rej_response_to="2", cxl_rej_reason=1 if order is None else 0,
                text="Unknown order" if order is None else "quantity below filled"))
            return
        order.cl_ord_id = msg.cl_ord_id
        price = msg.price if msg.ord_type == "2" else order.price
        if price == order.price and msg.order_qty <= order.order_qty:
            self.engine.replace(order.order_id, msg.order_qty, price)  # keeps its priority
            self._report(session, order, "5", orig_cl_ord_id=msg.orig_cl_ord_id)
            return
        # Report the new terms first, then what they trade (as an exchange would).
        self.engine.cancel(order.order_id)
        order.order_qty, order.qty, order.price = msg.order_qty, msg.order_qty - order.cum_qty, price
        self._report(session, order, "5", orig_cl_ord_id=msg.orig_cl_ord_id)
        self._fills(self.engine.submit(order))


async def _main(args) -> None:
    tls = None
    if args.certfile:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.certfile, args.keyfile)
    exchange = FixExchange(args.comp_id, seed={s: args.mid for s in args.symbols.split(",")},
                           heartbeat_interval=args.heartbeat, ssl=tls)
    await exchange.start(args.host, args.port)
    print(f"FIX exchange {args.comp_id} on {exchange.address[0]}:{exchange.address[1]}"
          f"{' (TLS)' if tls else ''}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.seconds)
    except TimeoutError:
        pass
    await exchange.stop()
    print(f"orders={exchange.orders_received} reports={exchange.reports_sent} "
          f"sessions={len(exchange.sessions)}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9876)
    parser.add_argument("--comp-id", default="EXCH")
    parser.add_argument("--symbols", default="AAPL,MSFT")
    parser.add_argument("--mid", type=float, default=100.0)
    parser.add_argument("--heartbeat", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--certfile", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--keyfile", help="its private key, if not in --certfile")
    args = parser.parse_args(argv)
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
