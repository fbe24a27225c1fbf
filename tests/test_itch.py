"""ITCH 5.0 codec: spec layouts, round trips, and the unknown/malformed drop policy."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiolowlat.protocols.itch import (
    MESSAGE_SIZES,
    AddOrder,
    AddOrderMPID,
    CrossTrade,
    ItchDecoder,
    ItchError,
    OrderCancel,
    OrderDelete,
    OrderExecuted,
    OrderExecutedWithPrice,
    OrderReplace,
    StockDirectory,
    SystemEvent,
    Trade,
    decode_message,
    encode_message,
)

TS = 0x0123_4567_89AB  # uses all 6 bytes

SAMPLES = [
    SystemEvent(0, 1, TS, "O"),
    StockDirectory(
        7, 2, TS, "AAPL", "Q", "N", 100, "N", "C", "Z ", "P", "N", "N", "1", "N", 0, "N"
    ),
    AddOrder(7, 3, TS, 2**63 + 5, "B", 300, "AAPL", 1_234_500),
    AddOrderMPID(7, 4, TS, 99, "S", 200, "ZVZZT", 4_294_967_295, "GSCO"),
    OrderExecuted(7, 5, TS, 99, 50, 2**40),
    OrderExecutedWithPrice(7, 6, TS, 99, 25, 2**40 + 1, "Y", 1_234_600),
    OrderCancel(7, 7, TS, 99, 10),
    OrderDelete(7, 8, TS, 99),
    OrderReplace(7, 9, TS, 99, 100, 400, 1_235_000),
    Trade(7, 10, TS, 0, "B", 1000, "AAPL", 1_234_550, 2**40 + 2),
    CrossTrade(7, 11, TS, 2**33, "AAPL", 1_234_000, 2**40 + 3, "O"),
]

# Message lengths from the TotalView-ITCH 5.0 specification.
SPEC_SIZES = {
    "S": 12, "R": 39, "A": 36, "F": 40, "E": 31, "C": 36,
    "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40,
}  # fmt: skip


def test_layout_sizes_match_the_spec():
    assert MESSAGE_SIZES == SPEC_SIZES


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    data = encode_message(message)
    assert data[:1] == type(message).TYPE
    assert len(data) == SPEC_SIZES[data[:1].decode()]
    assert decode_message(data) == message
    assert decode_message(memoryview(data)) == message


def test_add_order_field_offsets():
    # Built by hand from the spec's offsets, not from the codec's own struct formats.
    data = bytearray(36)
    data[0:1] = b"A"
    data[1:3] = (7).to_bytes(2, "big")
    data[3:5] = (3).to_bytes(2, "big")
    data[5:11] = TS.to_bytes(6, "big")
    data[11:19] = (123456).to_bytes(8, "big")
    data[19:20] = b"S"
    data[20:24] = (500).to_bytes(4, "big")
    data[24:32] = b"MSFT    "
    data[32:36] = (4_150_000).to_bytes(4, "big")
    assert decode_message(bytes(data)) == AddOrder(7, 3, TS, 123456, "S", 500, "MSFT", 4_150_000)
    assert encode_message(AddOrder(7, 3, TS, 123456, "S", 500, "MSFT", 4_150_000)) == data


def test_replace_and_cross_field_offsets():
    replace = encode_message(OrderReplace(1, 2, 3, 10, 11, 12, 13))
    assert struct.unpack(">QQII", replace[11:35]) == (10, 11, 12, 13)
    cross = encode_message(CrossTrade(1, 2, 3, 14, "AB", 15, 16, "C"))
    assert cross[11:19] == (14).to_bytes(8, "big")
    assert cross[19:27] == b"AB      "
    assert struct.unpack(">IQ", cross[27:39]) == (15, 16)
    assert cross[39:40] == b"C"


def test_stock_directory_field_offsets():
    data = encode_message(SAMPLES[1])
    assert data[11:19] == b"AAPL    "
    assert struct.unpack(">I", data[21:25]) == (100,)
    assert data[27:29] == b"Z "
    assert struct.unpack(">I", data[34:38]) == (0,)


def test_trailing_bytes_past_a_layout_are_ignored():
    data = encode_message(SAMPLES[2]) + b"future"
    assert decode_message(data) == SAMPLES[2]


def test_unknown_type_is_none_and_counted():
    unknown = b"H" + bytes(24)
    assert decode_message(unknown) is None
    decoder = ItchDecoder()
    assert decoder.decode(unknown) is None
    assert decoder.decode(b"\xff") is None
    assert (decoder.unknown, decoder.malformed, decoder.decoded) == (2, 0, 0)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_truncated_message_raises_or_is_counted(message):
    data = encode_message(message)
    decoder = ItchDecoder()
    for cut in range(1, len(data)):
        with pytest.raises(ItchError):
            decode_message(data[:cut])
        assert decoder.decode(data[:cut]) is None
    assert decoder.malformed == len(data) - 1
    assert decoder.decode(data) == message and decoder.decoded == 1


def test_empty_message():
    with pytest.raises(ItchError):
        decode_message(b"")
    decoder = ItchDecoder()
    assert decoder.decode(b"") is None and decoder.malformed == 1


def test_encoder_rejects_fields_that_do_not_fit():
    with pytest.raises(ItchError):
        encode_message(AddOrder(1, 2, 3, 4, "B", 5, "TOOLONGSYM", 6))
    with pytest.raises(ItchError):
        encode_message(AddOrder(1, 2, 1 << 48, 4, "B", 5, "A", 6))
    with pytest.raises(ItchError):
        encode_message(AddOrder(1, 2, 3, 4, "B", 2**32, "A", 6))
    with pytest.raises(ItchError):
        encode_message(AddOrder(1, 2, 3, 4, "BS", 5, "A", 6))


def test_itch_error_is_a_value_error():
    assert issubclass(ItchError, ValueError)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(sorted(SPEC_SIZES)), st.binary(max_size=60))
def test_random_bodies_never_raise_from_the_decoder(kind, body):
    decoder = ItchDecoder()
    result = decoder.decode(kind.encode() + body)
    assert decoder.decoded + decoder.malformed == 1
    if result is not None:
        # A full-length body always decodes, and re-encodes to the same prefix.
        assert encode_message(result) == (kind.encode() + body)[: SPEC_SIZES[kind]]


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=60))
def test_random_bytes_never_raise_from_the_decoder(data):
    decoder = ItchDecoder()
    decoder.decode(data)
    assert decoder.decoded + decoder.malformed + decoder.unknown == 1
