"""Our own orders, tracked by ClOrdID from execution reports: state, cum/leaves qty, avg price.

``OrderTracker`` is fed what we send (``sent``) and what comes back (``received``). A cancel or
replace chains a new ClOrdID onto the same ``Order``, so any ID in the chain finds it. An
execution report seen twice (same ExecID, e.g. a PossDup resend) is ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .messages import (
    ExecutionReport,
    NewOrderSingle,
    OrderCancelReject,
    OrderCancelReplaceRequest,
    OrderCancelRequest,
)

__all__ = ["Order", "OrderState", "OrderTracker"]


class OrderState(enum.Enum):
    PENDING_NEW = "pending_new"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = {OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED, OrderState.EXPIRED}
# OrdStatus (39) -> state; "5" Replaced (FIX 4.2) leaves the order working.
_BY_ORD_STATUS = {
    "0": OrderState.NEW, "1": OrderState.PARTIALLY_FILLED, "2": OrderState.FILLED,
    "4": OrderState.CANCELED, "6": OrderState.PENDING_CANCEL, "8": OrderState.REJECTED,
    "A": OrderState.PENDING_NEW, "C": OrderState.EXPIRED, "E": OrderState.PENDING_REPLACE,
}
_FILL_EXEC_TYPES = {"F", "1", "2"}  # Trade (4.4), Partial fill / Fill (4.2)


@dataclass
class Order:
    cl_ord_id: str
    symbol: str
    side: str
    order_qty: float
    price: float | None
    state: OrderState = OrderState.PENDING_NEW
    order_id: str | None = None
    cum_qty: float = 0.0
    leaves_qty: float = 0.0
    avg_px: float = 0.0
    fills: list[tuple[float, float]] = field(default_factory=list)  # (qty, price)
    cl_ord_ids: list[str] = field(default_factory=list)  # the chain, oldest first
    text: str | None = None

    @property
    def filled_notional(self) -> float:
        return sum(q * p for q, p in self.fills)


class OrderTracker:
    """Orders by ClOrdID; see the module docstring."""

    def __init__(self):
        self._orders: dict[str, Order] = {}
        self._exec_ids: set[str] = set()
        self._before_pending: dict[str, OrderState] = {}
        self.unknown_reports = 0  # execution reports for orders we never sent
        self.unknown_requests = 0  # cancels/replaces of orders we do not know

    def get(self, cl_ord_id: str) -> Order | None:
        return self._orders.get(cl_ord_id)

    def orders(self) -> list[Order]:
        """Every order once (a replaced order is known by each of its ClOrdIDs)."""
        return list({id(o): o for o in self._orders.values()}.values())

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders() if not o.state.is_final]

    def sent(self, msg) -> Order | None:
        """Record an order message we send; returns the order it concerns."""
        if isinstance(msg, NewOrderSingle):
            order = Order(msg.cl_ord_id, msg.symbol, msg.side, msg.order_qty, msg.price,
                          leaves_qty=msg.order_qty, cl_ord_ids=[msg.cl_ord_id])
            self._orders[msg.cl_ord_id] = order
            return order
        if isinstance(msg, (OrderCancelRequest, OrderCancelReplaceRequest)):
            order = self._orders.get(msg.orig_cl_ord_id)
            if order is None:
                self.unknown_requests += 1  # the exchange will answer with a reject
                return None
            self._orders[msg.cl_ord_id] = order
            self._before_pending[msg.cl_ord_id] = order.state
            if isinstance(msg, OrderCancelRequest):
                order.state = OrderState.PENDING_CANCEL
            else:
                order.state = OrderState.PENDING_REPLACE
            return order
        return None

    def received(self, msg) -> Order | None:
        """Apply an ExecutionReport or OrderCancelReject; returns the updated order."""
        if isinstance(msg, ExecutionReport):
            return self._on_execution_report(msg)
        if isinstance(msg, OrderCancelReject):
            order = self._orders.get(msg.orig_cl_ord_id) or self._orders.get(msg.cl_ord_id)
            if order is not None:
                prior = self._before_pending.pop(msg.cl_ord_id, None)
                order.state = _BY_ORD_STATUS.get(msg.ord_status, prior or order.state)
                order.text = msg.text
            return order
        return None

    def _on_execution_report(self, er: ExecutionReport) -> Order | None:
        order = self._orders.get(er.cl_ord_id or "")
        if order is None and er.orig_cl_ord_id:
            order = self._orders.get(er.orig_cl_ord_id)
        if order is None:
            self.unknown_reports += 1
            return None
        if er.exec_id in self._exec_ids:
            return order  # a report seen before (PossDup resend)
        self._exec_ids.add(er.exec_id)
        if er.order_id:
            order.order_id = er.order_id
        if er.exec_type in _FILL_EXEC_TYPES and er.last_qty:
            order.fills.append((er.last_qty, er.last_px or 0.0))
        if er.exec_type == "5":  # Replaced: the new ClOrdID and terms are in force
            if er.cl_ord_id and er.cl_ord_id != order.cl_ord_id:
                order.cl_ord_id = er.cl_ord_id
                order.cl_ord_ids.append(er.cl_ord_id)
            if er.order_qty is not None:
                order.order_qty = er.order_qty
            if er.price is not None:
                order.price = er.price
        if er.exec_type == "4" and er.cl_ord_id and er.cl_ord_id != order.cl_ord_id:
            order.cl_ord_ids.append(er.cl_ord_id)
        order.cum_qty = er.cum_qty
        order.leaves_qty = er.leaves_qty
        order.avg_px = er.avg_px
        state = _BY_ORD_STATUS.get(er.ord_status)
        if state is not None:
            order.state = state
        if er.ord_status == "5":  # FIX 4.2 Replaced
            order.state = OrderState.PARTIALLY_FILLED if er.cum_qty else OrderState.NEW
        if er.text:
            order.text = er.text
        return order
