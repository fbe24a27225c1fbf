"""NASDAQ TotalView-ITCH 5.0 codec for the order-book messages, sans-I/O.

Every message starts with Message Type (1), Stock Locate (u16), Tracking Number (u16)
and a 6-byte Timestamp (ns since midnight); all integers are big-endian. Prices are
u32 with 4 implied decimals and stay integers here (``price / PRICE_SCALE`` dollars);
stock symbols are 8-byte right-space-padded ASCII, returned stripped.

Error policy: ``decode_message`` raises ItchError for an empty or truncated known
message and returns None for an unknown type; ``ItchDecoder`` never raises and counts
both instead (``unknown``, ``malformed``), which is what a feed handler wants. Bytes
past a known layout are ignored, since NASDAQ appends fields in new revisions.
"""

from __future__ import annotations

import struct
from typing import ClassVar

import msgspec

__all__ = [
    "MESSAGE_SIZES",
    "PRICE_SCALE",
    "AddOrder",
    "AddOrderMPID",
    "CrossTrade",
    "ItchDecoder",
    "ItchError",
    "ItchMessage",
    "OrderCancel",
    "OrderDelete",
    "OrderExecuted",
    "OrderExecutedWithPrice",
    "OrderReplace",
    "StockDirectory",
    "SystemEvent",
    "Trade",
    "decode_message",
    "encode_message",
]

PRICE_SCALE = 10_000

# The 6-byte timestamp is read as u16 high + u32 low: struct has no 48-bit integer.
_HEAD = ">BHHHI"
_S = struct.Struct(_HEAD + "B")
_R = struct.Struct(_HEAD + "8sBBIBB2sBBBBBIB")
_A = struct.Struct(_HEAD + "QBI8sI")
_F = struct.Struct(_HEAD + "QBI8sI4s")
_E = struct.Struct(_HEAD + "QIQ")
_C = struct.Struct(_HEAD + "QIQBI")
_X = struct.Struct(_HEAD + "QI")
_D = struct.Struct(_HEAD + "Q")
_U = struct.Struct(_HEAD + "QQII")
_P = struct.Struct(_HEAD + "QBI8sIQ")
_Q = struct.Struct(_HEAD + "Q8sIQB")


class ItchError(ValueError):
    """An ITCH message that is empty or shorter than its type's layout."""


class ItchMessage(msgspec.Struct, frozen=True, gc=False):
    """Fields common to every ITCH 5.0 message."""

    stock_locate: int
    tracking_number: int
    timestamp: int


class SystemEvent(ItchMessage, frozen=True, gc=False):
    """'S': start/end of messages, system hours, market hours (event_code O S Q M E C)."""

    TYPE: ClassVar[bytes] = b"S"
    event_code: str


class StockDirectory(ItchMessage, frozen=True, gc=False):
    """'R': binds a stock locate code to a symbol for the day, with its trading attributes."""

    TYPE: ClassVar[bytes] = b"R"
    stock: str
    market_category: str = "Q"
    financial_status: str = "N"
    round_lot_size: int = 100
    round_lots_only: str = "N"
    issue_classification: str = "C"
    issue_subtype: str = "Z "
    authenticity: str = "P"
    short_sale_threshold: str = "N"
    ipo_flag: str = "N"
    luld_tier: str = "1"
    etp_flag: str = "N"
    etp_leverage_factor: int = 0
    inverse_indicator: str = "N"


class AddOrder(ItchMessage, frozen=True, gc=False):
    """'A': a new displayed order; side is 'B' or 'S'."""

    TYPE: ClassVar[bytes] = b"A"
    order_ref: int
    side: str
    shares: int
    stock: str
    price: int


class AddOrderMPID(ItchMessage, frozen=True, gc=False):
    """'F': a new displayed order attributed to a market participant."""

    TYPE: ClassVar[bytes] = b"F"
    order_ref: int
    side: str
    shares: int
    stock: str
    price: int
    attribution: str


class OrderExecuted(ItchMessage, frozen=True, gc=False):
    """'E': part or all of a resting order executed at its own price."""

    TYPE: ClassVar[bytes] = b"E"
    order_ref: int
    executed_shares: int
    match_number: int


class OrderExecutedWithPrice(ItchMessage, frozen=True, gc=False):
    """'C': an execution at a price other than the order's; printable 'N' is not volume."""

    TYPE: ClassVar[bytes] = b"C"
    order_ref: int
    executed_shares: int
    match_number: int
    printable: str
    execution_price: int


class OrderCancel(ItchMessage, frozen=True, gc=False):
    """'X': part of a resting order cancelled."""

    TYPE: ClassVar[bytes] = b"X"
    order_ref: int
    cancelled_shares: int


class OrderDelete(ItchMessage, frozen=True, gc=False):
    """'D': a resting order removed entirely."""

    TYPE: ClassVar[bytes] = b"D"
    order_ref: int


class OrderReplace(ItchMessage, frozen=True, gc=False):
    """'U': an order replaced by a new reference with new shares and price, same side."""

    TYPE: ClassVar[bytes] = b"U"
    original_order_ref: int
    new_order_ref: int
    shares: int
    price: int


class Trade(ItchMessage, frozen=True, gc=False):
    """'P': an execution against a non-displayed order (no book change)."""

    TYPE: ClassVar[bytes] = b"P"
    order_ref: int
    side: str
    shares: int
    stock: str
    price: int
    match_number: int


class CrossTrade(ItchMessage, frozen=True, gc=False):
    """'Q': the bulk print of an opening, closing, halt or intraday cross."""

    TYPE: ClassVar[bytes] = b"Q"
    shares: int
    stock: str
    cross_price: int
    match_number: int
    cross_type: str


def _alpha(raw: bytes) -> str:
    # latin-1 decodes every byte, so a garbled symbol cannot raise here.
    return raw.rstrip(b" ").decode("latin-1")


def _pad(text: str, size: int) -> bytes:
    raw = text.encode("latin-1")
    if len(raw) > size:
        raise ItchError(f"{text!r} is longer than {size} bytes")
    return raw.ljust(size, b" ")


def _char(text: str) -> int:
    if len(text) != 1:
        raise ItchError(f"{text!r} is not a single character")
    return ord(text)


def _decode_s(v):
    _, loc, trk, hi, lo, code = _S.unpack_from(v)
    return SystemEvent(loc, trk, hi << 32 | lo, chr(code))


def _decode_r(v):
    (
        _,
        loc,
        trk,
        hi,
        lo,
        stock,
        cat,
        fin,
        lot,
        lots_only,
        cls,
        sub,
        auth,
        ssti,
        ipo,
        luld,
        etp,
        lev,
        inv,
    ) = _R.unpack_from(v)
    return StockDirectory(
        loc,
        trk,
        hi << 32 | lo,
        _alpha(stock),
        chr(cat),
        chr(fin),
        lot,
        chr(lots_only),
        chr(cls),
        sub.decode("latin-1"),
        chr(auth),
        chr(ssti),
        chr(ipo),
        chr(luld),
        chr(etp),
        lev,
        chr(inv),
    )


def _decode_a(v):
    _, loc, trk, hi, lo, ref, side, shares, stock, price = _A.unpack_from(v)
    return AddOrder(loc, trk, hi << 32 | lo, ref, chr(side), shares, _alpha(stock), price)


def _decode_f(v):
    _, loc, trk, hi, lo, ref, side, shares, stock, price, mpid = _F.unpack_from(v)
    return AddOrderMPID(
        loc, trk, hi << 32 | lo, ref, chr(side), shares, _alpha(stock), price, _alpha(mpid)
    )


def _decode_e(v):
    _, loc, trk, hi, lo, ref, shares, match = _E.unpack_from(v)
    return OrderExecuted(loc, trk, hi << 32 | lo, ref, shares, match)


def _decode_c(v):
    _, loc, trk, hi, lo, ref, shares, match, printable, price = _C.unpack_from(v)
    return OrderExecutedWithPrice(
        loc, trk, hi << 32 | lo, ref, shares, match, chr(printable), price
    )


def _decode_x(v):
    _, loc, trk, hi, lo, ref, shares = _X.unpack_from(v)
    return OrderCancel(loc, trk, hi << 32 | lo, ref, shares)


def _decode_d(v):
    _, loc, trk, hi, lo, ref = _D.unpack_from(v)
    return OrderDelete(loc, trk, hi << 32 | lo, ref)


def _decode_u(v):
    _, loc, trk, hi, lo, old, new, shares, price = _U.unpack_from(v)
    return OrderReplace(loc, trk, hi << 32 | lo, old, new, shares, price)


def _decode_p(v):
    _, loc, trk, hi, lo, ref, side, shares, stock, price, match = _P.unpack_from(v)
    return Trade(loc, trk, hi << 32 | lo, ref, chr(side), shares, _alpha(stock), price, match)


def _decode_q(v):
    _, loc, trk, hi, lo, shares, stock, price, match, cross = _Q.unpack_from(v)
    return CrossTrade(loc, trk, hi << 32 | lo, shares, _alpha(stock), price, match, chr(cross))


# type byte -> (layout size, decoder)
_DECODERS = {
    ord("S"): (_S.size, _decode_s),
    ord("R"): (_R.size, _decode_r),
    ord("A"): (_A.size, _decode_a),
    ord("F"): (_F.size, _decode_f),
    ord("E"): (_E.size, _decode_e),
    ord("C"): (_C.size, _decode_c),
    ord("X"): (_X.size, _decode_x),
    ord("D"): (_D.size, _decode_d),
    ord("U"): (_U.size, _decode_u),
    ord("P"): (_P.size, _decode_p),
    ord("Q"): (_Q.size, _decode_q),
}

# type letter -> length of its ITCH 5.0 layout in bytes
MESSAGE_SIZES = {chr(code): size for code, (size, _) in _DECODERS.items()}


def decode_message(payload: bytes | bytearray | memoryview) -> ItchMessage | None:
    """Decode one message; None for an unknown type, ItchError if empty or truncated."""
    if not payload:
        raise ItchError("empty ITCH message")
    entry = _DECODERS.get(payload[0])
    if entry is None:
        return None
    size, decode = entry
    if len(payload) < size:
        raise ItchError(f"{chr(payload[0])!r} message of {len(payload)} bytes, expected {size}")
    return decode(payload)


class ItchDecoder:
    """Decodes messages without raising: unknown types and truncated ones are counted drops."""

    __slots__ = ("decoded", "unknown", "malformed")

    def __init__(self) -> None:
        self.decoded = 0
        self.unknown = 0
        self.malformed = 0

    def decode(self, payload: bytes | bytearray | memoryview) -> ItchMessage | None:
        """Return the message, or None after counting it as unknown or malformed."""
        if not payload:
            self.malformed += 1
            return None
        entry = _DECODERS.get(payload[0])
        if entry is None:
            self.unknown += 1
            return None
        size, decode = entry
        if len(payload) < size:
            self.malformed += 1
            return None
        self.decoded += 1
        return decode(payload)


def _ts(message: ItchMessage) -> tuple[int, int]:
    ts = message.timestamp
    if not 0 <= ts < 1 << 48:
        raise ItchError(f"timestamp {ts} does not fit 6 bytes")
    return ts >> 32, ts & 0xFFFFFFFF


def _encode_s(m: SystemEvent) -> bytes:
    return _S.pack(0x53, m.stock_locate, m.tracking_number, *_ts(m), _char(m.event_code))


def _encode_r(m: StockDirectory) -> bytes:
    return _R.pack(
        0x52,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        _pad(m.stock, 8),
        _char(m.market_category),
        _char(m.financial_status),
        m.round_lot_size,
        _char(m.round_lots_only),
        _char(m.issue_classification),
        _pad(m.issue_subtype, 2),
        _char(m.authenticity),
        _char(m.short_sale_threshold),
        _char(m.ipo_flag),
        _char(m.luld_tier),
        _char(m.etp_flag),
        m.etp_leverage_factor,
        _char(m.inverse_indicator),
    )


def _encode_a(m: AddOrder) -> bytes:
    return _A.pack(
        0x41,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.order_ref,
        _char(m.side),
        m.shares,
        _pad(m.stock, 8),
        m.price,
    )


def _encode_f(m: AddOrderMPID) -> bytes:
    return _F.pack(
        0x46,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.order_ref,
        _char(m.side),
        m.shares,
        _pad(m.stock, 8),
        m.price,
        _pad(m.attribution, 4),
    )


def _encode_e(m: OrderExecuted) -> bytes:
    return _E.pack(
        0x45,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.order_ref,
        m.executed_shares,
        m.match_number,
    )


def _encode_c(m: OrderExecutedWithPrice) -> bytes:
    return _C.pack(
        0x43,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.order_ref,
        m.executed_shares,
        m.match_number,
        _char(m.printable),
        m.execution_price,
    )


def _encode_x(m: OrderCancel) -> bytes:
    return _X.pack(
        0x58, m.stock_locate, m.tracking_number, *_ts(m), m.order_ref, m.cancelled_shares
    )


def _encode_d(m: OrderDelete) -> bytes:
    return _D.pack(0x44, m.stock_locate, m.tracking_number, *_ts(m), m.order_ref)


def _encode_u(m: OrderReplace) -> bytes:
    return _U.pack(
        0x55,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.original_order_ref,
        m.new_order_ref,
        m.shares,
        m.price,
    )


def _encode_p(m: Trade) -> bytes:
    return _P.pack(
        0x50,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.order_ref,
        _char(m.side),
        m.shares,
        _pad(m.stock, 8),
        m.price,
        m.match_number,
    )


def _encode_q(m: CrossTrade) -> bytes:
    return _Q.pack(
        0x51,
        m.stock_locate,
        m.tracking_number,
        *_ts(m),
        m.shares,
        _pad(m.stock, 8),
        m.cross_price,
        m.match_number,
        _char(m.cross_type),
    )


_ENCODERS = {
    SystemEvent: _encode_s,
    StockDirectory: _encode_r,
    AddOrder: _encode_a,
    AddOrderMPID: _encode_f,
    OrderExecuted: _encode_e,
    OrderExecutedWithPrice: _encode_c,
    OrderCancel: _encode_x,
    OrderDelete: _encode_d,
    OrderReplace: _encode_u,
    Trade: _encode_p,
    CrossTrade: _encode_q,
}


def encode_message(message: ItchMessage) -> bytes:
    """Encode one message in its ITCH 5.0 wire layout; ItchError if a field does not fit."""
    try:
        return _ENCODERS[type(message)](message)
    except struct.error as exc:  # an integer out of its field's range
        raise ItchError(f"{type(message).__name__}: {exc}") from None
