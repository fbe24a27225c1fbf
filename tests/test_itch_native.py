"""The C ITCH decoder agrees with the Python codec field by field, and never crashes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from aiolowlat._native import ffi
from aiolowlat.protocols.itch import decode_message
from aiolowlat.protocols.itch_native import NativeItchDecoder
from aiolowlat.protocols.moldudp64 import decode_packet, encode_packet
from aiolowlat.sim.itch_feed import generate_session, packetize

# Python field -> C record field, for what the C record keeps of each type.
SHARED = {
    "S": {"event_code": "flag"},
    "R": {"stock": "stock", "market_category": "flag"},
    "A": {"order_ref": "ref", "side": "side", "shares": "shares", "stock": "stock",
          "price": "price"},
    "E": {"order_ref": "ref", "executed_shares": "shares", "match_number": "match"},
    "C": {"order_ref": "ref", "executed_shares": "shares", "match_number": "match",
          "printable": "flag", "execution_price": "price"},
    "X": {"order_ref": "ref", "cancelled_shares": "shares"},
    "D": {"order_ref": "ref"},
    "U": {"original_order_ref": "ref", "new_order_ref": "new_ref", "shares": "shares",
          "price": "price"},
    "P": {"order_ref": "ref", "side": "side", "shares": "shares", "stock": "stock",
          "price": "price", "match_number": "match"},
    "Q": {"shares": "shares", "stock": "stock", "cross_price": "price",
          "match_number": "match", "cross_type": "flag"},
}
SHARED["F"] = SHARED["A"]


def c_value(record, field):
    value = getattr(record, field)
    if field == "stock":
        return ffi.unpack(value, 8).decode("latin-1").rstrip(" \0")
    if field in ("side", "flag"):
        return value.decode("latin-1")
    return value


def test_every_message_of_a_session_matches_the_python_codec():
    packets = packetize(generate_session(7, events=3000), "NATIVE0001", max_messages=32)
    decoder = NativeItchDecoder()
    checked = set()
    for packet in packets:
        n = decoder.decode_packet(packet)
        expected = [decode_message(m) for m in decode_packet(packet).messages]
        assert n == len(expected)
        for record, message in zip(decoder.records[0:n], expected, strict=True):
            kind = type(message).TYPE.decode()
            assert record.type.decode() == kind
            assert (record.locate, record.timestamp) == (message.stock_locate, message.timestamp)
            for py_field, c_field in SHARED[kind].items():
                assert c_value(record, c_field) == getattr(message, py_field), (kind, py_field)
            checked.add(kind)
    assert checked >= {"S", "R", "A", "E", "C", "X", "D", "U", "P"}
    assert (decoder.unknown, decoder.malformed, decoder.overflow) == (0, 0, 0)


def test_truncated_packets_are_counted_at_every_length():
    packet = packetize(generate_session(3, events=50), "NATIVE0001", max_messages=8)[5]
    decoder = NativeItchDecoder()
    whole = decoder.decode_packet(packet)
    for cut in range(len(packet)):
        before = decoder.malformed
        assert decoder.decode_packet(packet[:cut]) < whole
        assert decoder.malformed == before + 1


def test_unknown_types_and_short_messages_are_counted_not_decoded():
    decoder = NativeItchDecoder()
    packet = encode_packet("NATIVE0001", 1, [b"Z" + bytes(30), b"A" + bytes(10), b""])
    assert decoder.decode_packet(packet) == 0
    assert (decoder.unknown, decoder.malformed) == (1, 2)


def test_more_messages_than_records_are_counted_as_overflow():
    decoder = NativeItchDecoder(capacity=4)
    packet = encode_packet("NATIVE0001", 1, [b"D" + bytes(18)] * 10)
    assert decoder.decode_packet(packet) == 4
    assert decoder.overflow == 6


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_crash(data):
    decoder = NativeItchDecoder(capacity=64)
    n = decoder.decode_packet(data)
    assert 0 <= n <= 64
    assert decoder.decoded == n
