"""Typed FIX order messages as msgspec Structs, with their tag mapping both ways.

Attribute names are the FIX field names in snake_case (``cl_ord_id`` is ClOrdID, 11); times
are Unix seconds (float), prices and quantities float, enumerations their FIX character
("1" buy, "2" sell). ``to_fields()`` gives the body for ``FixSession.send``; ``from_fix``
reads a decoded message back (unknown types stay a FixMessage).
"""

from __future__ import annotations

import time
from typing import ClassVar, get_type_hints

import msgspec

from .codec import FixMessage, encode_value, format_utc, parse_utc

__all__ = [
    "BusinessMessageReject",
    "ExecutionReport",
    "FixStruct",
    "NewOrderSingle",
    "OrderCancelReject",
    "OrderCancelReplaceRequest",
    "OrderCancelRequest",
    "from_fix",
]

TAGS = {
    "account": 1, "avg_px": 6, "cl_ord_id": 11, "cum_qty": 14, "exec_id": 17,
    "exec_trans_type": 20, "handl_inst": 21, "last_px": 31, "last_qty": 32, "order_id": 37,
    "order_qty": 38, "ord_status": 39, "ord_type": 40, "orig_cl_ord_id": 41, "price": 44,
    "ref_seq_num": 45, "side": 54, "symbol": 55, "text": 58, "time_in_force": 59,
    "transact_time": 60, "stop_px": 99, "cxl_rej_reason": 102, "ord_rej_reason": 103,
    "exec_type": 150, "leaves_qty": 151, "ref_msg_type": 372, "business_reject_ref_id": 379,
    "business_reject_reason": 380, "cxl_rej_response_to": 434,
}
_TIME_FIELDS = frozenset(("transact_time",))


def _now() -> float:
    return time.time()


class FixStruct(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of the typed messages: ``MSG_TYPE`` and a field-name -> tag mapping."""

    MSG_TYPE: ClassVar[bytes] = b""
    _codec: ClassVar[tuple] = ()

    @classmethod
    def _build_codec(cls) -> None:
        """(name, tag, encoder, decoder) per field, from the annotations; run once per class."""
        hints = get_type_hints(cls)
        codec = []
        for name in cls.__struct_fields__:
            kind = hints[name]
            if name in _TIME_FIELDS:
                enc, dec = format_utc, parse_utc
            elif kind in (float, float | None):
                enc, dec = _encode_number, float
            elif kind in (int, int | None):
                enc, dec = _encode_number, int
            else:
                enc, dec = _encode_str, _latin1
            codec.append((name, TAGS[name], enc, dec))
        cls._codec = tuple(codec)

    def to_fields(self) -> list[tuple[int, bytes]]:
        """The body fields in declaration order (None values left out)."""
        out = []
        for name, tag, enc, _ in self._codec:
            value = getattr(self, name)
            if value is not None:
                out.append((tag, enc(value)))
        return out

    @classmethod
    def from_message(cls, msg: FixMessage):
        kwargs = {}
        get = msg.get
        for name, tag, _, dec in cls._codec:
            value = get(tag)
            if value is not None:
                kwargs[name] = dec(value)
        return cls(**kwargs)


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


def _encode_str(value) -> bytes:
    return value.encode("latin-1") if type(value) is str else encode_value(value)


def _encode_number(value) -> bytes:
    if type(value) is float and value.is_integer() and abs(value) < 1e15:
        return b"%d" % value  # 100.0 -> "100", the common case for quantities
    return encode_value(value)


class NewOrderSingle(FixStruct, kw_only=True):
    MSG_TYPE: ClassVar[bytes] = b"D"
    cl_ord_id: str
    handl_inst: str | None = "1"  # required in FIX 4.2: automated, private
    symbol: str
    side: str
    transact_time: float = msgspec.field(default_factory=_now)
    order_qty: float
    ord_type: str = "2"
    price: float | None = None
    stop_px: float | None = None
    time_in_force: str | None = None
    account: str | None = None
    text: str | None = None


class OrderCancelRequest(FixStruct, kw_only=True):
    MSG_TYPE: ClassVar[bytes] = b"F"
    orig_cl_ord_id: str
    cl_ord_id: str
    order_id: str | None = None
    symbol: str
    side: str
    transact_time: float = msgspec.field(default_factory=_now)
    order_qty: float | None = None
    account: str | None = None
    text: str | None = None


class OrderCancelReplaceRequest(FixStruct, kw_only=True):
    MSG_TYPE: ClassVar[bytes] = b"G"
    orig_cl_ord_id: str
    cl_ord_id: str
    order_id: str | None = None
    handl_inst: str | None = "1"
    symbol: str
    side: str
    transact_time: float = msgspec.field(default_factory=_now)
    order_qty: float
    ord_type: str = "2"
    price: float | None = None
    stop_px: float | None = None
    time_in_force: str | None = None
    account: str | None = None


class ExecutionReport(FixStruct, kw_only=True):
    MSG_TYPE: ClassVar[bytes] = b"8"
    order_id: str
    cl_ord_id: str | None = None
    orig_cl_ord_id: str | None = None
    exec_id: str
    exec_trans_type: str | None = None  # FIX 4.2 only ("0" new)
    exec_type: str
    ord_status: str
    ord_rej_reason: int | None = None
    account: str | None = None
    symbol: str | None = None
    side: str
    order_qty: float | None = None
    ord_type: str | None = None
    price: float | None = None
    last_qty: float | None = None
    last_px: float | None = None
    leaves_qty: float
    cum_qty: float
    avg_px: float
    transact_time: float | None = None
    text: str | None = None


class OrderCancelReject(FixStruct, kw_only=True):
    MSG_TYPE: ClassVar[bytes] = b"9"
    order_id: str
    cl_ord_id: str
    orig_cl_ord_id: str
    ord_status: str
    cxl_rej_response_to: str  # "1" cancel, "2" cancel/replace
    cxl_rej_reason: int | None = None
    text: str | None = None


class BusinessMessageReject(FixStruct, kw_only=True):
    MSG_TYPE: ClassVar[bytes] = b"j"
    ref_seq_num: int | None = None
    ref_msg_type: str
    business_reject_ref_id: str | None = None
    business_reject_reason: int
    text: str | None = None


_BY_TYPE = {
    cls.MSG_TYPE: cls
    for cls in (NewOrderSingle, OrderCancelRequest, OrderCancelReplaceRequest, ExecutionReport,
                OrderCancelReject, BusinessMessageReject)
}


for _cls in _BY_TYPE.values():
    _cls._build_codec()


def from_fix(msg: FixMessage):
    """The typed message for ``msg`` (a FixStruct), or ``msg`` itself for other types."""
    cls = _BY_TYPE.get(msg.msg_type)
    return msg if cls is None else cls.from_message(msg)
