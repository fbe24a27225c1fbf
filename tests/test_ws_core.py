"""The sans-I/O WebSocket client core (aiolowlat.protocols.websocket) in plain bytes."""

import base64
import hashlib
import os
import struct
import zlib

import pytest
from aiolowlat._native._ws import ffi, lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiolowlat.protocols.websocket import (
    GUID,
    Accepted,
    ClientProtocol,
    Close,
    Deflate,
    InvalidHandshake,
    Message,
    Ping,
    Pong,
    ProtocolError,
    State,
)

KEY = b"0123456789abcdef"


def accept_for(proto) -> str:
    return base64.b64encode(hashlib.sha1(proto.key + GUID).digest()).decode()


def response(proto, *extra: str, accept: str | None = None, status="101 Switching Protocols"):
    lines = [f"HTTP/1.1 {status}", "Upgrade: websocket", "Connection: Upgrade"]
    lines.append(f"Sec-WebSocket-Accept: {accept or accept_for(proto)}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def frame(opcode, payload=b"", *, fin=True, rsv=0, mask=None, length=None) -> bytes:
    """A frame as a server writes it (unmasked unless mask is given)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def unmask_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse client (masked) frames: [(first byte, payload)]; every frame must be masked."""
    out = []
    while data:
        b0, b1 = data[0], data[1]
        assert b1 & 0x80, "client frames must be masked"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            n, pos = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, pos = struct.unpack("!Q", data[2:10])[0], 10
        key = data[pos : pos + 4]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[pos + 4 : pos + 4 + n]))
        out.append((b0, payload))
        data = data[pos + 4 + n :]
    return out


def open_client(*extra, **kwargs) -> ClientProtocol:
    proto = ClientProtocol("example.com", "/stream?x=1", key=KEY, **kwargs)
    proto.request()
    events = proto.receive_data(response(proto, *extra))
    assert isinstance(events[0], Accepted)
    assert proto.state is State.OPEN
    return proto


def fails_with(proto, data, code):
    with pytest.raises(ProtocolError) as info:
        proto.receive_data(data)
    assert info.value.code == code
    assert proto.state is State.CLOSED
    sent = unmask_frames(proto.data_to_send())
    assert sent == [(0x88, code.to_bytes(2, "big"))]  # the close frame the error calls for
    return info.value


# --- handshake -----------------------------------------------------------------------------


def test_request_has_the_rfc_headers():
    proto = ClientProtocol(
        "example.com:8443", "/ws?a=b", key=KEY, subprotocols=["v2", "v1"],
        extra_headers={"X-Api-Key": "k"}, compression="deflate",
    )  # fmt: skip
    text = proto.request().decode()
    assert text.startswith("GET /ws?a=b HTTP/1.1\r\nHost: example.com:8443\r\n")
    assert text.endswith("\r\n\r\n")
    for line in (
        "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {base64.b64encode(KEY).decode()}",
        "Sec-WebSocket-Protocol: v2, v1", "X-Api-Key: k",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    ):  # fmt: skip
        assert f"\r\n{line}\r\n" in text


def test_random_key_each_connection():
    assert ClientProtocol("h").key != ClientProtocol("h").key


def test_header_injection_is_refused():
    with pytest.raises(ValueError):
        ClientProtocol("h", extra_headers=[("X", "a\r\nEvil: 1")]).request()


def test_accept_and_frames_in_the_same_bytes():
    proto = ClientProtocol("h", key=KEY)
    events = proto.receive_data(response(proto) + frame(1, b"hi") + frame(2, b"\x00\xff"))
    assert isinstance(events[0], Accepted)
    assert events[1:] == [Message(1, b"hi"), Message(2, b"\x00\xff")]


def test_response_split_byte_by_byte():
    proto = ClientProtocol("h", key=KEY)
    data = response(proto) + frame(1, b"hello")
    events = []
    for i in range(len(data)):
        events += proto.receive_data(data[i : i + 1])
    assert [type(e) for e in events] == [Accepted, Message]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: response(p, accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA="), "Accept"),
        (lambda p: response(p, status="403 Forbidden"), "403"),
        (lambda p: response(p).replace(b"Upgrade: websocket\r\n", b""), "Upgrade"),
        (lambda p: response(p).replace(b"Connection: Upgrade", b"Connection: close"), "Connection"),
        (lambda p: b"HTTP/1.0 101 OK\r\n\r\n", "status line"),
        (lambda p: response(p, "Sec-WebSocket-Protocol: nope"), "subprotocol"),
        (lambda p: response(p, "Sec-WebSocket-Extensions: permessage-deflate"), "extension"),
        (lambda p: response(p, "bad header line"), "malformed"),
    ],
)
def test_bad_handshake_responses(mutate, match):
    proto = ClientProtocol("h", key=KEY)
    with pytest.raises(InvalidHandshake, match=match):
        proto.receive_data(mutate(proto))
    assert proto.state is State.CLOSED


def test_oversized_response_headers():
    proto = ClientProtocol("h", key=KEY)
    with pytest.raises(InvalidHandshake, match="over"):
        proto.receive_data(b"HTTP/1.1 101 OK\r\n" + b"X: " + b"a" * 70000)


def test_subprotocol_chosen_by_server():
    proto = open_client("Sec-WebSocket-Protocol: v1", subprotocols=["v2", "v1"])
    assert proto.subprotocol == "v1"


@pytest.mark.parametrize(
    "offer, answer, agreed",
    [
        (Deflate(), "permessage-deflate", Deflate(False, False, 15, 15)),
        (
            Deflate(),
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",
            Deflate(False, False, 9, 10),
        ),
        (
            Deflate(client_no_context_takeover=True, server_no_context_takeover=True),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            Deflate(True, True, 15, 15),
        ),
        (Deflate(server_max_window_bits=12), "permessage-deflate; server_max_window_bits=11",
         Deflate(False, False, 15, 11)),
    ],
)  # fmt: skip
def test_deflate_negotiation(offer, answer, agreed):
    proto = open_client(f"Sec-WebSocket-Extensions: {answer}", compression=offer)
    assert proto.deflate == agreed


@pytest.mark.parametrize(
    "offer, answer",
    [
        (Deflate(), "permessage-deflate; server_max_window_bits=16"),
        (Deflate(), "permessage-deflate; server_max_window_bits=08"),
        (Deflate(), "permessage-deflate; server_max_window_bits"),
        (Deflate(), "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
        (Deflate(), "permessage-deflate; colour=blue"),
        (Deflate(), "permessage-deflate; client_no_context_takeover=1"),
        (Deflate(client_max_window_bits=None), "permessage-deflate; client_max_window_bits=10"),
        (Deflate(server_no_context_takeover=True), "permessage-deflate"),
        (Deflate(server_max_window_bits=10), "permessage-deflate; server_max_window_bits=12"),
        (Deflate(), "x-webkit-deflate-frame"),
        (Deflate(), "permessage-deflate, permessage-deflate"),
    ],
)
def test_deflate_bad_answers(offer, answer):
    proto = ClientProtocol("h", key=KEY, compression=offer)
    with pytest.raises(InvalidHandshake):
        proto.receive_data(response(proto, f"Sec-WebSocket-Extensions: {answer}"))


# --- framing -------------------------------------------------------------------------------


def test_sent_frames_are_masked_with_fresh_keys():
    proto = open_client()
    a, b = proto.send_text("héllo"), proto.send_binary(b"\x00" * 300)
    assert unmask_frames(a) == [(0x81, "héllo".encode())]
    assert unmask_frames(b) == [(0x82, b"\x00" * 300)]
    assert a[2:6] != b[4:8]  # two frames, two masking keys
    big = proto.send_binary(os.urandom(70000))
    assert big[1] == 0x80 | 127 and len(unmask_frames(big)[0][1]) == 70000


def test_fragmented_message_with_interleaved_controls():
    proto = open_client()
    data = (
        frame(1, b"he", fin=False) + frame(9, b"p1") + frame(0, b"ll", fin=False)
        + frame(10, b"p2") + frame(0, "ö".encode())
    )  # fmt: skip
    events = proto.receive_data(data)
    assert events == [Ping(b"p1"), Pong(b"p2"), Message(1, "hellö".encode())]
    assert unmask_frames(proto.data_to_send()) == [(0x8A, b"p1")]


def test_utf8_split_across_fragments_is_valid():
    proto = open_client()
    euro = "€".encode()
    data = frame(1, euro[:1], fin=False) + frame(0, euro[1:2], fin=False) + frame(0, euro[2:])
    assert proto.receive_data(data) == [Message(1, euro)]


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(0, b"x"), 1002),  # continuation without a start
        (frame(1, b"a", fin=False) + frame(2, b"b"), 1002),  # new message inside one
        (frame(3, b""), 1002),  # reserved data opcode
        (frame(11, b""), 1002),  # reserved control opcode
        (frame(1, b"x", rsv=4), 1002),  # RSV1 without deflate
        (frame(1, b"x", rsv=2), 1002),
        (frame(1, b"x", mask=b"abcd"), 1002),  # servers must not mask
        (frame(9, b"", fin=False), 1002),  # fragmented control frame
        (frame(9, b"x" * 126), 1002),  # control frame over 125 bytes
        (frame(2, b"", length=1 << 63), 1002),
        (frame(1, b"\xff"), 1007),
        (frame(1, b"\xed\xa0\x80"), 1007),  # a surrogate
        (frame(1, b"\xc0\xaf"), 1007),  # overlong
        (frame(1, b"a", fin=False) + frame(0, b"\xf5", fin=False), 1007),  # fails fast
        (frame(8, b"\x03"), 1002),  # 1-byte close payload
        (frame(8, struct.pack("!H", 1005)), 1002),
        (frame(8, struct.pack("!H", 999)), 1002),
        (frame(8, struct.pack("!H", 5000)), 1002),
        (frame(8, struct.pack("!H", 1000) + b"\xff"), 1007),
    ],
)
def test_protocol_violations_close_with_the_right_code(data, code):
    fails_with(open_client(), data, code)


def test_events_before_an_error_are_kept():
    proto = open_client()
    err = fails_with(proto, frame(1, b"ok") + frame(3), 1002)
    assert err.events == [Message(1, b"ok")]


def test_size_limits():
    fails_with(open_client(max_size=100), frame(2, b"x" * 101), 1009)
    fails_with(open_client(max_size=1000, max_frame_size=10), frame(2, b"x" * 11), 1009)
    proto = open_client(max_size=100)
    data = frame(2, b"x" * 60, fin=False) + frame(0, b"x" * 60)
    fails_with(proto, data, 1009)
    assert open_client(max_size=100).receive_data(frame(2, b"x" * 100)) == [Message(2, b"x" * 100)]


def test_frames_bigger_than_the_buffer_and_64_bit_lengths():
    proto = open_client(max_size=None)
    big = os.urandom(3 << 20)
    data = frame(2, big) + frame(1, b"after")
    events = []
    for i in range(0, len(data), 100_000):
        events += proto.receive_data(data[i : i + 100_000])
    assert events == [Message(2, big), Message(1, b"after")]


def test_close_handshake_from_server():
    proto = open_client()
    events = proto.receive_data(frame(8, struct.pack("!H", 4001) + "bye é".encode()))
    assert events == [Close(4001, "bye é")]
    assert (proto.close_code, proto.close_reason, proto.state) == (4001, "bye é", State.CLOSED)
    assert unmask_frames(proto.data_to_send()) == [(0x88, struct.pack("!H", 4001))]
    assert proto.receive_data(frame(1, b"late")) == []  # nothing after the close frame


def test_close_without_code_is_1005_and_echoed_empty():
    proto = open_client()
    assert proto.receive_data(frame(8)) == [Close(1005, "")]
    assert unmask_frames(proto.data_to_send()) == [(0x88, b"")]


def test_close_handshake_from_client():
    proto = open_client()
    assert unmask_frames(proto.send_close(1001, "going")) == [(0x88, b"\x03\xe9going")]
    assert proto.state is State.CLOSING
    # messages the server sent before it saw our close still arrive
    assert proto.receive_data(frame(1, b"in flight")) == [Message(1, b"in flight")]
    assert proto.receive_data(frame(8, b"\x03\xe9")) == [Close(1001, "")]
    assert proto.data_to_send() == b""  # no second close frame
    with pytest.raises(ValueError):
        open_client().send_close(1006)


def test_ping_payload_is_echoed_in_the_pong():
    proto = open_client()
    assert proto.receive_data(frame(9, b"\x00\x01")) == [Ping(b"\x00\x01")]
    assert unmask_frames(proto.data_to_send()) == [(0x8A, b"\x00\x01")]


# --- permessage-deflate ----------------------------------------------------------------------


class ServerDeflate:
    """What a server does to compress messages (RFC 7692 7.2.1)."""

    def __init__(self, bits=15, takeover=True):
        self.bits, self.takeover = bits, takeover
        self.c = zlib.compressobj(wbits=-bits)

    def __call__(self, data: bytes) -> bytes:
        if not self.takeover:
            self.c = zlib.compressobj(wbits=-self.bits)
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]


@pytest.mark.parametrize("takeover", [True, False])
def test_deflate_messages_in_and_out(takeover):
    answer = "permessage-deflate" + ("" if takeover else "; server_no_context_takeover")
    proto = open_client(f"Sec-WebSocket-Extensions: {answer}", compression="deflate")
    deflate = ServerDeflate(takeover=takeover)
    msgs = [b'{"price": "1.0"}' * 20, b'{"price": "1.0"}' * 20, "é".encode() * 50]
    data = b"".join(frame(1, deflate(m), rsv=4) for m in msgs)
    # a compressed message in fragments: RSV1 on the first frame only
    z = deflate(b"fragmented " * 100)
    data += frame(2, z[:10], fin=False, rsv=4) + frame(9, b"") + frame(0, z[10:])
    events = proto.receive_data(data)
    assert events == [Message(1, m) for m in msgs] + [Ping(b""), Message(2, b"fragmented " * 100)]
    # what we send inflates on the server's side
    sent = unmask_frames(proto.send_text("hello " * 100) + proto.send_text("hello " * 100))
    d = zlib.decompressobj(wbits=-15)
    for first, payload in sent:
        assert first == 0xC1
        assert d.decompress(payload + b"\x00\x00\xff\xff") == b"hello " * 100


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(0, b"x", rsv=4), 1002),  # RSV1 on a continuation frame
        (frame(1, b"\xff\xff\xff", rsv=4), 1007),  # not a deflate stream
        (frame(1, ServerDeflate()(b"\xff\xfe"), rsv=4), 1007),  # inflates to bad UTF-8
        (frame(2, ServerDeflate()(b"\x00" * 200_000), rsv=4), 1009),  # a small bomb
    ],
)
def test_deflate_violations(data, code):
    proto = open_client("Sec-WebSocket-Extensions: permessage-deflate",
                        compression="deflate", max_size=100_000)  # fmt: skip
    fails_with(proto, data, code)


# --- C helpers against Python references -----------------------------------------------------


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_c_mask_matches_python(data, key):
    out = ffi.new("uint8_t[]", max(1, len(data)))
    lib.al_ws_mask(out, ffi.from_buffer(data), len(data), ffi.from_buffer(key))
    assert ffi.buffer(out, len(data))[:] == bytes(b ^ key[i % 4] for i, b in enumerate(data))


@given(st.one_of(st.binary(max_size=64), st.text(max_size=32).map(str.encode)))
def test_c_utf8_check_matches_python(data):
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert bool(lib.al_ws_utf8_valid(data, len(data))) == valid


# --- property tests --------------------------------------------------------------------------

payloads = st.binary(max_size=300)
texts = st.text(max_size=100).map(str.encode)
messages = st.one_of(
    st.tuples(st.just(1), texts, st.integers(1, 4)),
    st.tuples(st.just(2), payloads, st.integers(1, 4)),
    st.tuples(st.just(9), st.binary(max_size=125), st.just(1)),
    st.tuples(st.just(10), st.binary(max_size=125), st.just(1)),
)


def encode(msgs) -> tuple[bytes, list]:
    """Server bytes for msgs (data split into fragments) and the events they must give."""
    data, expected = b"", []
    for opcode, payload, parts in msgs:
        if opcode >= 8:
            data += frame(opcode, payload)
            expected.append(Ping(payload) if opcode == 9 else Pong(payload))
            continue
        cuts = sorted({len(payload) * k // parts for k in range(1, parts)})
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for k, piece in enumerate(pieces):
            data += frame(opcode if k == 0 else 0, piece, fin=k == len(pieces) - 1)
        expected.append(Message(opcode, payload))
    return data, expected


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=20), st.lists(st.integers(1, 400), max_size=30))
def test_any_split_of_valid_frames_gives_the_same_events(msgs, chunks):
    data, expected = encode(msgs)
    proto = open_client(max_size=None)
    events, pos = [], 0
    for size in chunks:
        events += proto.receive_data(data[pos : pos + size])
        pos += size
    events += proto.receive_data(data[pos:])
    assert events == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(messages, max_size=10),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=5),
    st.binary(max_size=50),
    st.booleans(),
)
def test_corrupt_frames_give_events_or_protocol_error(msgs, flips, junk, deflate):
    data, _ = encode(msgs)
    data = bytearray(data + junk)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    ext = ("Sec-WebSocket-Extensions: permessage-deflate",) if deflate else ()
    proto = open_client(*ext, compression="deflate" if deflate else None, max_size=4096)
    try:
        events = proto.receive_data(bytes(data))
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
        assert proto.state is State.CLOSED
        return
    for event in events:
        assert isinstance(event, Message | Ping | Pong | Close)
        if isinstance(event, Message) and event.opcode == 1:
            event.payload.decode("utf-8")  # only valid UTF-8 gets through


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_random_handshake_bytes_give_events_or_typed_errors(data):
    proto = ClientProtocol("h", key=KEY)
    try:
        proto.receive_data(data)
    except (InvalidHandshake, ProtocolError):
        pass


# --- the per-message path in C (aiolowlat._native._ws_py) ----------------------------------

from aiolowlat.protocols.websocket import _py  # noqa: E402


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_c_frame_is_a_masked_frame_of_any_size(size, kind):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = _py.frame(0x82, kind(payload))
    assert type(data) is bytes
    assert unmask_frames(data) == [(0x82, payload)]


def test_c_frame_refuses_what_is_not_bytes():
    with pytest.raises(TypeError):
        _py.frame(0x81, "text")
    with pytest.raises(TypeError):
        _py.frame(0x81)


def test_wsframe_fields_and_payload_accessors():
    from aiolowlat.ws import WSFrame

    f = WSFrame(1, "héllo".encode(), 42)
    assert (f.opcode, f.fin, f.rx_ns, f.close_code, f.close_reason) == (1, True, 42, None, "")
    assert f.get_payload_as_bytes() == "héllo".encode()
    assert f.get_payload_as_utf8_text() == "héllo"
    assert bytes(f.get_payload_as_memoryview()) == "héllo".encode()
    with pytest.raises(UnicodeDecodeError):
        f.get_payload_as_ascii_text()
    f.opcode, f.payload, f.close_code = 8, bytearray(b"ab"), 1000
    assert f.get_payload_as_bytes() == b"ab" and f.close_code == 1000
    assert repr(f) == "WSFrame(opcode=8, size=2, rx_ns=42)"
    assert WSFrame().payload == b""


def scanned(proto, data: bytes) -> int:
    room = proto.get_buffer()
    room[: len(data)] = data
    proto.commit(len(data))
    return proto.scan()


def test_c_dispatch_takes_plain_messages_and_stops_at_the_rest():
    proto = open_client()
    got = []
    wsf = _py.WSFrame()

    def on_frame(transport, f):
        assert transport == "t" and f is wsf
        got.append((f.opcode, f.payload))

    n = scanned(proto, frame(1, b"a") + frame(2, b"\x00b") + frame(9, b"p") + frame(1, b"c"))
    assert n == 4
    assert _py.dispatch(proto._buf, proto.frames_addr, 0, n, wsf, on_frame, "t") == 2
    assert got == [(1, b"a"), (2, b"\x00b")]  # the ping is not a plain message: it stops
    assert proto.frame_at(2)[0] & 255 == 0x89
    assert _py.dispatch(proto._buf, proto.frames_addr, 3, n, wsf, on_frame, "t") == 4
    assert got[-1] == (1, b"c")


def test_c_dispatch_queue_mode_gives_text_and_bytes_with_rx_ns():
    proto = open_client()
    messages, rx_ns = [], []
    n = scanned(proto, frame(1, "é".encode()) + frame(2, b"\xff") + frame(1, b"partial")[:-2])
    assert n == 2  # the partial frame waits
    queue = (messages.append, rx_ns.append)
    _py.dispatch(proto._buf, proto.frames_addr, 0, n, _py.WSFrame(0, b"", 7), queue, None)
    assert messages == ["é", b"\xff"] and rx_ns == [7, 7]
    with pytest.raises(TypeError):
        _py.dispatch(proto._buf, proto.frames_addr, 0, n, _py.WSFrame(), messages.append, None)


def test_c_dispatch_refuses_bad_arguments():
    proto = open_client()
    scanned(proto, frame(1, b"x"))
    f = _py.WSFrame()
    with pytest.raises(TypeError):
        _py.dispatch(bytes(proto._buf), proto.frames_addr, 0, 1, f, print, None)
    with pytest.raises(TypeError):
        _py.dispatch(proto._buf, proto.frames_addr, 0, 1, object(), print, None)
    with pytest.raises(ValueError, match="outside the receive buffer"):
        _py.dispatch(bytearray(2), proto.frames_addr, 0, 1, f, print, "t")
    with pytest.raises(TypeError):
        _py.dispatch(proto._buf, proto.frames_addr, 0, 1, f, print)


def test_c_dispatch_passes_the_callbacks_exception():
    proto = open_client()
    scanned(proto, frame(1, b"x") + frame(1, b"y"))
    seen = []

    def boom(transport, f):
        seen.append(f.payload)
        raise KeyError("listener bug")

    with pytest.raises(KeyError):
        _py.dispatch(proto._buf, proto.frames_addr, 0, 2, _py.WSFrame(), boom, "t")
    assert seen == [b"x"]


class Calls:
    """Records what a Receiver hands back to Python."""

    def __init__(self):
        self.general, self.stopped, self.failed, self.frames, self.reads = [], [], [], [], 0

    def on_frame(self, transport, f):
        if f.payload == b"raise":
            raise RuntimeError("listener bug")
        self.frames.append((f.opcode, f.payload, f.rx_ns > 0))

    def after_read(self):
        self.reads += 1


def armed_receiver(proto):
    calls = Calls()
    rx = _py.Receiver(proto, State.OPEN, calls.general.append, calls.stopped.append,
                      calls.failed.append)  # fmt: skip
    rx.arm(proto.frames_addr, proto.scan_addr, 1024, 2**20, 2, _py.WSFrame(), calls.on_frame,
           "t", calls.after_read)  # fmt: skip
    return rx, calls


def feed(rx, data: bytes) -> None:
    room = rx.get_buffer(-1)
    room[: len(data)] = data
    rx.buffer_updated(len(data))


def test_c_receiver_takes_plain_messages_and_keeps_the_core_offsets():
    proto = open_client()
    rx, calls = armed_receiver(proto)
    assert rx.get_buffer(-1) is proto._view  # empty buffer: all of it, no slice
    feed(rx, frame(1, b"a") + frame(2, b"b"))
    assert calls.frames == [(1, b"a", True), (2, b"b", True)] and calls.reads == 1
    assert proto._start == proto._end == 0
    whole = frame(1, b"c" * 300)
    feed(rx, whole[:100])  # a partial frame waits in the buffer
    assert (proto._start, proto._end) == (0, 100) and len(calls.frames) == 2
    assert len(rx.get_buffer(-1)) == len(proto._buf) - 100
    feed(rx, whole[100:])
    assert calls.frames[-1] == (1, b"c" * 300, True) and proto._end == 0
    assert calls.general == calls.stopped == calls.failed == []


def test_c_receiver_hands_the_rest_to_python():
    proto = open_client()
    rx, calls = armed_receiver(proto)
    feed(rx, frame(1, b"a") + frame(9, b"ping") + frame(1, b"b"))
    assert calls.frames == [(1, b"a", True)] and len(calls.stopped) == 1  # rx_ns
    assert proto.receive_stopped() == (3, 1)  # the Python path goes on from the ping
    feed(rx, frame(1, b"raise"))
    assert [type(e) for e in calls.failed] == [RuntimeError]
    proto.state = State.CLOSING  # not open: everything goes to the general path
    feed(rx, frame(1, b"late"))
    assert calls.general == [len(frame(1, b"late"))]
    rx.disarm()
    proto.state = State.OPEN
    feed(rx, frame(1, b"x"))
    assert len(calls.general) == 2 and not rx.armed


def test_c_receiver_refuses_bad_arguments():
    proto = open_client()
    rx, _ = armed_receiver(proto)
    with pytest.raises(TypeError):
        rx.arm(proto.frames_addr, proto.scan_addr, 1024, 2**20, 2, object(), print, None, None)
    with pytest.raises(ValueError):
        rx.arm(0, proto.scan_addr, 1024, 2**20, 2, _py.WSFrame(), print, None, None)
    with pytest.raises(ValueError):
        rx.buffer_updated(len(proto._buf) + 1)  # more than the buffer holds
    with pytest.raises(TypeError):
        _py.Receiver(proto)


# --- the adapter's C read path against the core, on the same bytes ---------------------------


class FakeTransport:
    """Stands in for the socket: collects writes, remembers close (no loop I/O needed)."""

    def __init__(self):
        self.out, self.closed = bytearray(), False

    def write(self, data):
        self.out += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    abort = close

    def get_extra_info(self, name, default=None):
        return default


def core_events(data: bytes, max_size: int):
    """What the sans-I/O core makes of data in one go: [(opcode, payload)], close code."""
    proto = open_client(max_size=max_size)
    try:
        events, code = proto.receive_data(data), None
    except ProtocolError as exc:
        events, code = exc.events, exc.code
    kinds = {Ping: 9, Pong: 10, Close: 8}
    out = [(e.opcode, e.payload) if isinstance(e, Message) else
           (kinds[type(e)], b"" if isinstance(e, Close) else e.payload) for e in events]  # fmt: skip
    return out, code


def adapter_events(data: bytes, chunks: list[int], max_size: int):
    """What aiolowlat.ws's WSTransport (reads in C once open) makes of data in chunks."""
    import asyncio

    import aiolowlat.ws as alws

    got = []

    class Listener(alws.WSListener):
        def on_ws_frame(self, transport, frame):
            got.append((frame.opcode, bytes(frame.payload)))

    async def main():
        proto = ClientProtocol("example.com", "/stream?x=1", key=KEY, max_size=max_size)
        tr = alws.WSTransport(proto, Listener)
        tr.connection_made(FakeTransport())
        pos = 0
        for size in [*chunks, len(data)]:
            piece = (response(proto) if tr.listener is None else b"") + data[pos : pos + size]
            pos += size
            while piece and not tr.transport.closed:
                room = tr.get_buffer(-1)
                k = min(len(room), len(piece))
                room[:k] = piece[:k]
                piece = piece[k:]
                tr.buffer_updated(k)
        assert tr._rx.armed  # the C path was the one reading
        return getattr(tr.error, "code", None)

    code = asyncio.run(main())
    return got, code


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(messages, max_size=12),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    st.lists(st.integers(1, 500), max_size=8),
)
def test_c_read_path_agrees_with_the_core(msgs, flips, chunks):
    data, _ = encode(msgs)
    data = bytearray(data)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    data = bytes(data)
    assert adapter_events(data, chunks, 1000) == core_events(data, 1000)


def test_c_receiver_survives_a_callback_that_disarms_it():
    """connection_lost can run inside a callback: the read in progress must not crash."""
    proto = open_client()
    got = []
    holder = {}

    def on_frame(transport, f):
        got.append(f.payload)
        holder["rx"].disarm()
        holder.pop("extra", None)  # drop what the Receiver was armed with

    def after():
        got.append("after")

    holder["extra"] = on_frame
    rx = _py.Receiver(proto, State.OPEN, print, print, print)
    holder["rx"] = rx
    rx.arm(proto.frames_addr, proto.scan_addr, 1024, 2**20, 2, _py.WSFrame(), on_frame, "t",
           after)  # fmt: skip
    del on_frame
    feed(rx, frame(1, b"a") + frame(1, b"b"))
    assert got == [b"a", b"b", "after"] and not rx.armed
