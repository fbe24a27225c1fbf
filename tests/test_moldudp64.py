"""MoldUDP64 framing: round trips, exact bytes, and malformed packets as MoldError."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiolowlat.protocols.moldudp64 import (
    END_OF_SESSION_COUNT,
    HEADER_SIZE,
    MoldError,
    decode_packet,
    decode_request,
    encode_packet,
    encode_request,
)

SESSION = b"SESSION001"


def test_packet_round_trip_with_messages():
    messages = [b"hello", b"", b"x" * 300]
    data = encode_packet(SESSION, 42, messages)
    packet = decode_packet(data)
    assert packet.session == SESSION
    assert packet.sequence == 42
    assert [bytes(m) for m in packet.messages] == messages
    assert not packet.is_heartbeat and not packet.end_of_session


def test_packet_exact_bytes():
    data = encode_packet("S1", 1, [b"ab"])
    assert data == b"S1        " + struct.pack(">QH", 1, 1) + b"\x00\x02ab"


def test_messages_are_views_into_the_input():
    data = bytearray(encode_packet(SESSION, 7, [b"abc"]))
    packet = decode_packet(data)
    assert isinstance(packet.messages[0], memoryview)
    data[-1] = ord("z")
    assert bytes(packet.messages[0]) == b"abz"


def test_heartbeat_round_trip():
    packet = decode_packet(encode_packet(SESSION, 1000))
    assert packet.is_heartbeat and packet.sequence == 1000 and packet.messages == ()


def test_end_of_session_round_trip():
    data = encode_packet(SESSION, 77, end_of_session=True)
    assert struct.unpack_from(">H", data, 18)[0] == END_OF_SESSION_COUNT
    packet = decode_packet(data)
    assert packet.end_of_session and not packet.is_heartbeat and packet.sequence == 77


def test_request_round_trip():
    data = encode_request(SESSION, 123456789012, 17)
    assert len(data) == HEADER_SIZE
    request = decode_request(data)
    assert (request.session, request.sequence, request.count) == (SESSION, 123456789012, 17)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SESSION001",
        b"SESSION001" + struct.pack(">QH", 1, 0)[:-1],
        # one block announced, none present
        b"SESSION001" + struct.pack(">QH", 1, 1),
        # block length runs past the end
        b"SESSION001" + struct.pack(">QHH", 1, 1, 10) + b"abc",
        # half a length field
        b"SESSION001" + struct.pack(">QH", 1, 1) + b"\x00",
        # more bytes than the count covers
        b"SESSION001" + struct.pack(">QHH", 1, 1, 1) + b"ab",
        # end of session with a payload
        b"SESSION001" + struct.pack(">QH", 1, END_OF_SESSION_COUNT) + b"\x00\x00",
        # sequence + count overflows u64
        b"SESSION001" + struct.pack(">QHH", 2**64 - 1, 2, 0) + b"\x00\x00",
    ],
)
def test_malformed_packets_raise_mold_error(data):
    with pytest.raises(MoldError):
        decode_packet(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"x" * 19,
        b"x" * 21,
        SESSION + struct.pack(">QH", 1, 0),
        SESSION + struct.pack(">QH", 1, 0xFFFF),
    ],
)
def test_malformed_requests_raise_mold_error(data):
    with pytest.raises(MoldError):
        decode_request(data)


def test_encoder_rejects_what_it_cannot_frame():
    with pytest.raises(MoldError):
        encode_packet(b"TOO-LONG-SESSION", 1, [])
    with pytest.raises(MoldError):
        encode_packet(SESSION, 1, [b"a"], end_of_session=True)
    with pytest.raises(MoldError):
        encode_packet(SESSION, 1, [b"x" * 65536])
    with pytest.raises(MoldError):
        encode_request(SESSION, 1, 0)


def test_mold_error_is_a_value_error():
    assert issubclass(MoldError, ValueError)


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_mold_error(data):
    try:
        decode_packet(data)
    except MoldError:
        pass
    try:
        decode_request(data)
    except MoldError:
        pass


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.integers(0, 2**63),
    st.lists(st.binary(max_size=40), max_size=20),
    st.binary(min_size=0, max_size=10),
)
def test_round_trip_property(sequence, messages, session):
    session = session.replace(b" ", b"_")  # trailing spaces are padding on the wire
    packet = decode_packet(encode_packet(session, sequence, messages))
    assert packet.session == session.ljust(10, b" ")
    assert packet.sequence == sequence
    assert [bytes(m) for m in packet.messages] == messages


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(min_size=HEADER_SIZE, max_size=120), st.integers(0, 119))
def test_truncated_valid_packets_raise_mold_error(tail, cut):
    data = encode_packet(SESSION, 5, [tail[:7], tail[7:]])
    cut = min(cut, len(data) - 1)
    with pytest.raises(MoldError):
        decode_packet(data[:cut])
