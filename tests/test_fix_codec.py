"""FIX codec and malformed input: exact round trips, stream framing, and hypothesis-driven bad
messages that end in a session Reject, a dropped frame or a Logout, never an exception."""

import time

import pytest
import simplefix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiolowlat.protocols.fix.codec import (
    DATA_FIELDS,
    FixDecodeError,
    FrameReader,
    Garbled,
    checksum,
    decode,
    encode,
    format_utc,
    parse_utc,
)
from aiolowlat.protocols.fix.dictionary import DataDictionary
from aiolowlat.protocols.fix.session import (
    AppMessage,
    Disconnect,
    FixSession,
    MessageDropped,
    RejectSent,
    SessionConfig,
)

T0 = 1_700_000_000.0
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADER_TAGS = {8, 9, 10, 35, 49, 56, 34, 52, 43, 122, 97}
values = st.binary(min_size=1, max_size=20).filter(lambda v: b"\x01" not in v)
body_fields = st.lists(
    st.tuples(st.integers(1, 4999).filter(lambda t: t not in HEADER_TAGS and t not in
                                          {90, 91, 93, 89, 95, 96, 212, 213, 348, 349, 350, 351,
                                           352, 353, 354, 355, 356, 357, 358, 359, 360, 361,
                                           362, 363, 364, 365, 445, 446, 618, 619, 621, 622}),
              values),
    max_size=25,
)


def test_encode_matches_simplefix_bytes():
    fields = [(49, b"C"), (56, b"E"), (34, 7), (52, b"20240101-00:00:00.000"), (11, b"X"),
              (44, 1.25), (38, 100)]
    ours = encode(b"FIX.4.4", b"D", fields)
    m = simplefix.FixMessage()
    m.append_pair(8, "FIX.4.4")
    m.append_pair(35, "D")
    for tag, value in fields:
        m.append_pair(tag, value)
    assert ours == m.encode()
    parser = simplefix.FixParser()
    parser.append_buffer(ours)
    assert parser.get_message().get(11) == b"X"


def test_checksum_beyond_256_bytes():
    data = bytes(range(256)) * 5 + b"xyz"
    assert checksum(data) == sum(data) % 256
    assert checksum(b"") == 0


@PROPS
@given(body_fields, st.sampled_from([b"D", b"8", b"0"]))
def test_round_trip_any_fields(fields, msg_type):
    frame = encode(b"FIX.4.4", msg_type, fields)
    msg = decode(frame)
    assert msg.tags[:3] == [8, 9, 35] and msg.tags[-1] == 10
    assert list(zip(msg.tags[3:-1], msg.values[3:-1])) == fields
    assert int(msg[10]) == checksum(frame[: frame.rindex(b"10=")])


@PROPS
@given(st.lists(body_fields, min_size=1, max_size=5), st.data())
def test_stream_cut_anywhere_yields_the_same_frames(bodies, data):
    frames = [encode(b"FIX.4.2", b"D", f) for f in bodies]
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = FrameReader()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        reader.feed(stream[a:b])
        got.extend(reader.frames())
    assert got == frames and reader.buffered == 0


def test_data_field_may_contain_soh_and_equals():
    raw = b"a\x01b=c\x01"
    frame = encode(b"FIX.4.4", b"D", [(11, b"X"), (95, len(raw)), (96, raw), (58, b"t=1")])
    msg = decode(frame)
    assert msg[96] == raw and msg[58] == b"t=1" and msg[11] == b"X"
    with pytest.raises(FixDecodeError):
        decode(encode(b"FIX.4.4", b"D", [(95, 50), (96, b"short")]))


def test_garbage_between_messages_is_dropped_and_counted():
    one = encode(b"FIX.4.4", b"0", [(34, 1)])
    two = encode(b"FIX.4.4", b"0", [(34, 2)])
    reader = FrameReader()
    reader.feed(b"\x00junk" + one + b"8=FIX.4.4\x019=zz\x01" + b"more" + two)
    out = list(reader.frames())
    frames = [f for f in out if isinstance(f, bytes)]
    assert frames == [one, two]
    assert all(isinstance(g, Garbled) for g in out if not isinstance(g, bytes))
    assert reader.garbled_bytes == len(b"\x00junk") + len(b"8=FIX.4.4\x019=zz\x01more")


def test_wrong_body_length_in_both_directions():
    good = encode(b"FIX.4.4", b"0", [(34, 1), (112, b"abc")])
    for delta in (-3, 4):
        length = int(good.split(b"\x01")[1][2:]) + delta
        bad = good.replace(b"9=%d" % (length - delta), b"9=%d" % length, 1)
        reader = FrameReader()
        reader.feed(bad + good)
        out = list(reader.frames())
        assert isinstance(out[0], Garbled) and "BodyLength" in out[0].reason
        assert out[-1] == good


def test_utc_timestamps():
    t = 1_700_000_000.123
    assert format_utc(t) == b"20231114-22:13:20.123"
    assert parse_utc(b"20231114-22:13:20.123") == pytest.approx(t)
    assert parse_utc(b"20231114-22:13:20") == 1_700_000_000
    with pytest.raises(ValueError):
        parse_utc(b"2023-11-14 22:13:20")


def test_groups_read_through_the_dictionary():
    dd = DataDictionary.load("FIX.4.4")
    frame = encode(b"FIX.4.4", b"D", [(49, b"C"), (56, b"E"), (34, 1), (52, format_utc(T0)),
                                      (11, b"X"), (453, 2), (448, b"P1"), (447, b"D"),
                                      (452, 1), (802, 1), (523, b"sub"), (803, 4),
                                      (448, b"P2"), (447, b"D"), (452, 3), (55, b"AAPL"),
                                      (54, b"1"), (60, format_utc(T0)), (40, b"1")])
    msg = decode(frame)
    dd.validate(msg)
    parties = msg.group(453, dd.group_spec(b"D", 453))
    assert [p[448] for p in parties] == [b"P1", b"P2"]
    sub = parties[0].group(802, dd.group_spec(b"D", 453)[3][802])
    assert [s[523] for s in sub] == [b"sub"]


# ---- malformed messages into a logged-on session --------------------------------------------

NOS = [(11, b"O1"), (55, b"AAPL"), (54, b"1"), (60, b"20231114-22:13:20"), (38, 100),
       (40, b"1")]


def peer(msg_type, seq, fields, now=T0):
    head = [(49, b"EXCH"), (56, b"CLIENT"), (34, seq), (52, format_utc(now))]
    return encode(b"FIX.4.4", msg_type, head + list(fields))


def logged_on(validate=True):
    s = FixSession(SessionConfig("CLIENT", "EXCH", validate=validate))
    s.connection_made(T0)
    s.receive_data(peer(b"A", 1, [(98, 0), (108, 30)]), T0)
    s.data_to_send()
    return s


@PROPS
@given(st.integers(0, 254))
def test_bad_checksum_is_ignored_not_rejected(delta):
    frame = peer(b"D", 2, NOS)
    value = (int(frame[-4:-1]) + delta + 1) % 256
    bad = frame[:-4] + b"%03d\x01" % value
    s = logged_on()
    events = s.receive_data(bad, T0)
    assert [type(e) for e in events] == [MessageDropped]
    assert s.data_to_send() == b"" and s.next_target_seq == 2 and s.is_logged_on


@PROPS
@given(st.integers(-40, 40).filter(lambda d: d != 0))
def test_bad_body_length_never_crashes_and_the_next_message_gets_through(delta):
    frame = peer(b"D", 2, NOS)
    length = int(frame.split(b"\x01")[1][2:])
    bad = frame.replace(b"\x019=%d\x01" % length, b"\x019=%d\x01" % max(0, length + delta), 1)
    s = logged_on()
    events = s.receive_data(bad + peer(b"D", 2, NOS), T0)
    assert events and type(events[0]) is MessageDropped
    assert s.next_target_seq == 3 and s.is_logged_on


@PROPS
@given(st.sets(st.sampled_from([11, 54, 60, 40]), min_size=1))
def test_missing_required_tags_get_reject_reason_1(missing):
    s = logged_on()
    events = s.receive_data(peer(b"D", 2, [f for f in NOS if f[0] not in missing]), T0)
    (ev,) = events
    assert isinstance(ev, RejectSent) and ev.reason == 1 and ev.tag in missing
    assert s.next_target_seq == 3 and s.is_logged_on


@PROPS
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_garbage_between_messages(garbage):
    s = logged_on()
    stream = b""
    for i, junk in enumerate(garbage):
        stream += junk.replace(b"8=", b"8-") + peer(b"0", 2 + i, [])
    events = s.receive_data(stream, T0)
    assert all(type(e) is MessageDropped for e in events)
    assert s.next_target_seq == 2 + len(garbage) and s.is_logged_on
    assert s.data_to_send() == b""


@PROPS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(blob):
    s = logged_on()
    events = s.receive_data(blob, T0) + s.receive_data(peer(b"0", 2, []), T0)
    kinds = {type(e) for e in events}
    assert kinds <= {MessageDropped, RejectSent, Disconnect}


@PROPS
@given(st.lists(st.tuples(st.integers(1, 999), st.binary(max_size=8)), min_size=1,
                max_size=6))
def test_random_body_fields_reject_or_pass_never_raise(extra):
    s = logged_on()
    fields = [(t, v.replace(b"\x01", b"")) for t, v in extra if t not in HEADER_TAGS]
    events = s.receive_data(peer(b"D", 2, NOS + fields), T0)
    kinds = [type(e) for e in events]
    assert s.is_logged_on
    if kinds == [MessageDropped]:
        # A length field of a data pair that does not frame its data: garbled, as QuickFIX.
        assert any(t in DATA_FIELDS for t, _ in fields) and s.next_target_seq == 2
    else:
        assert kinds in ([AppMessage], [RejectSent])  # valid, or rejected with a reason
        assert s.next_target_seq == 3


def test_decode_agrees_with_simplefix():
    frame = peer(b"D", 2, NOS, now=time.time())
    parser = simplefix.FixParser()
    parser.append_buffer(frame)
    theirs = parser.get_message()
    ours = decode(frame)
    assert [(t, v) for t, v in zip(ours.tags, ours.values)] == [
        (int(t), v) for t, v in theirs.pairs
    ]


@PROPS
@given(st.sampled_from([b"0", b"1", b"2", b"3", b"4", b"5", b"A", b"D"]),
       st.lists(st.tuples(st.sampled_from([7, 16, 36, 43, 45, 58, 108, 112, 122, 123, 141, 373]),
                          st.binary(max_size=6).map(lambda v: v.replace(b"\x01", b""))),
                max_size=5),
       st.integers(0, 5))
def test_admin_messages_with_bad_values_never_raise_even_without_validation(kind, fields, seq):
    for validate in (True, False):
        s = logged_on(validate)
        events = s.receive_data(peer(kind, seq, fields), T0)
        assert all(type(e).__module__ == FixSession.__module__ for e in events)
