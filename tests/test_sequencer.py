"""Sequencer: ordering, reorder window, retransmission, gap reports, A/B lines, staleness."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aiolowlat.protocols.moldudp64 import encode_packet, encode_request
from aiolowlat.protocols.sequencer import (
    EndOfSession,
    FeedState,
    GapUnrecoverable,
    Message,
    RetransmitRequest,
    Sequencer,
    StateChanged,
)

SESSION = b"TESTSESS01"
WINDOW = 0.001
TIMEOUT = 0.1


def packet(first, count=1, session=SESSION):
    return encode_packet(session, first, [b"m%d" % s for s in range(first, first + count)])


def make(**kwargs):
    kwargs.setdefault("reorder_window", WINDOW)
    kwargs.setdefault("retransmit_timeout", TIMEOUT)
    return Sequencer(**kwargs)


def drain(seq):
    return list(seq.events())


def delivered(events):
    return [e.sequence for e in events if isinstance(e, Message)]


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_in_order_stream():
    seq = make()
    for first in (1, 3, 6):
        seq.receive(packet(first, 3 if first == 3 else 2), now=0.0)
    events = drain(seq)
    assert events[0] == StateChanged(FeedState.INITIAL, FeedState.LIVE)
    assert delivered(events) == list(range(1, 8))
    assert [bytes(e.payload) for e in of(events, Message)][:2] == [b"m1", b"m2"]
    assert seq.state is FeedState.LIVE and seq.next_sequence == 8
    assert (seq.gaps, seq.duplicates, seq.reordered, seq.requested) == (0, 0, 0, 0)


def test_gap_filled_by_reorder_inside_the_window():
    seq = make()
    seq.receive(packet(1, 2), now=0.0)
    seq.receive(packet(5, 2), now=0.0001)
    assert delivered(drain(seq)) == [1, 2]
    seq.tick(0.0005)
    seq.receive(packet(3, 2), now=0.0006)
    events = drain(seq)
    assert delivered(events) == [3, 4, 5, 6]
    assert not of(events, RetransmitRequest)
    assert (seq.gaps, seq.reordered, seq.requested) == (1, 2, 0)
    assert seq.state is FeedState.LIVE


def test_gap_then_retransmission_request_then_fill():
    seq = make()
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(4, 2), now=0.0)
    seq.tick(WINDOW / 2)
    assert not of(drain(seq), RetransmitRequest)
    seq.tick(WINDOW)
    events = drain(seq)
    assert of(events, RetransmitRequest) == [RetransmitRequest(2, 2, encode_request(SESSION, 2, 2))]
    assert StateChanged(FeedState.LIVE, FeedState.RECOVERING) in events
    assert seq.state is FeedState.RECOVERING
    seq.receive_retransmission(packet(2, 2), now=0.002)
    events = drain(seq)
    assert delivered(events) == [2, 3, 4, 5]
    assert events[-1] == StateChanged(FeedState.RECOVERING, FeedState.LIVE)
    assert (seq.requested, seq.retransmitted, seq.unrecoverable) == (2, 1, 0)


def test_request_covers_every_hole_and_skips_buffered_messages():
    seq = make()
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(3), now=0.0)
    seq.receive(packet(6, 2), now=0.0)
    seq.tick(WINDOW)
    requests = of(drain(seq), RetransmitRequest)
    assert [(r.sequence, r.count) for r in requests] == [(2, 1), (4, 2)]


def test_lost_answer_is_requested_again_and_the_second_answer_fills():
    seq = make()
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(5), now=0.0)
    seq.tick(WINDOW)
    seq.receive_retransmission(packet(2), now=WINDOW + 0.001)  # part of the answer only
    assert [(r.sequence, r.count) for r in of(drain(seq), RetransmitRequest)] == [(2, 3)]
    seq.tick(WINDOW + TIMEOUT)
    events = drain(seq)
    assert [(r.sequence, r.count) for r in of(events, RetransmitRequest)] == [(3, 2)]
    seq.receive_retransmission(packet(3, 2), now=WINDOW + TIMEOUT + 0.001)
    assert delivered(drain(seq)) == [3, 4, 5]
    assert seq.state is FeedState.LIVE and seq.unrecoverable == 0


def test_gap_timeout_reports_the_exact_range():
    seq = make(max_retransmit_attempts=2)
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(10, 3), now=0.0)
    seq.tick(WINDOW)
    seq.tick(WINDOW + TIMEOUT)  # second attempt
    events = drain(seq)
    assert len(of(events, RetransmitRequest)) == 2
    assert not of(events, GapUnrecoverable)
    seq.tick(WINDOW + 2 * TIMEOUT)
    events = drain(seq)
    assert of(events, GapUnrecoverable) == [GapUnrecoverable(2, 9)]
    assert delivered(events) == [10, 11, 12]
    assert seq.unrecoverable == 8 and seq.state is FeedState.LIVE
    # a straggler of the skipped range is a duplicate now, not a second delivery
    seq.receive_retransmission(packet(5), now=1.0)
    assert delivered(drain(seq)) == [] and seq.duplicates == 1


def test_two_holes_in_one_round_are_both_reported():
    seq = make(max_retransmit_attempts=1)
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(4), now=0.0)
    seq.receive(packet(7), now=0.0)
    seq.tick(WINDOW)
    seq.tick(WINDOW + TIMEOUT)
    events = drain(seq)
    assert of(events, GapUnrecoverable) == [GapUnrecoverable(2, 3), GapUnrecoverable(5, 6)]
    assert delivered(events) == [1, 4, 7]


def test_duplicates_are_suppressed():
    seq = make()
    for line in ("A", "B", "A"):
        seq.receive(packet(1, 3), now=0.0, line=line)
    seq.receive(packet(2, 3), now=0.0, line="B")  # overlaps: 2 and 3 old, 4 new
    assert delivered(drain(seq)) == [1, 2, 3, 4]
    assert seq.duplicates == 8
    assert seq.lines["A"].duplicates == 3 and seq.lines["B"].duplicates == 2


def test_heartbeat_reveals_a_lost_tail():
    seq = make()
    seq.receive(packet(1), now=0.0)
    seq.receive(encode_packet(SESSION, 4), now=0.0)  # heartbeat: next is 4
    seq.tick(WINDOW)
    assert [(r.sequence, r.count) for r in of(drain(seq), RetransmitRequest)] == [(2, 2)]
    assert seq.lines["A"].losses == 2


def test_ab_arbitration_with_independent_loss():
    rng = random.Random(7)
    packets = [(first, packet(first, 3)) for first in range(1, 301, 3)]
    lost_a = {p for p, _ in packets if rng.random() < 0.2}
    lost_b = {p for p, _ in packets if p not in lost_a and rng.random() < 0.2}
    seq = make()
    now = 0.0
    for first, data in packets:
        now += 0.0001
        if first not in lost_a:
            seq.receive(data, now, line="A")
        if first not in lost_b:
            seq.receive(data, now + 0.00002, line="B")
        seq.tick(now)
    seq.receive(encode_packet(SESSION, 301), now, line="A")
    seq.receive(encode_packet(SESSION, 301), now, line="B")
    events = drain(seq)
    assert delivered(events) == list(range(1, 301))
    assert not of(events, RetransmitRequest) and seq.unrecoverable == 0
    assert seq.lines["A"].losses == 3 * len(lost_a) > 0
    assert seq.lines["B"].losses == 3 * len(lost_b) > 0
    a, b = seq.lines["A"], seq.lines["B"]
    assert a.first_arrivals + b.first_arrivals == 300
    assert seq.duplicates == 300 - 3 * (len(lost_a) + len(lost_b))


def test_late_packet_on_a_line_is_not_a_loss():
    seq = make()
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(3), now=0.0)
    seq.receive(packet(2), now=0.0)
    line = seq.lines["A"]
    assert (line.losses, line.late, line.duplicates) == (0, 1, 0)
    assert delivered(drain(seq)) == [1, 2, 3]


def test_stale_after_silence_and_back_to_live():
    seq = make(stale_after=0.5)
    seq.tick(10.0)
    assert seq.state is FeedState.INITIAL  # no reference point before the first packet
    seq.receive(packet(1), now=1.0)
    seq.tick(1.4)
    assert seq.state is FeedState.LIVE
    seq.tick(1.5)
    assert seq.state is FeedState.STALE
    seq.receive(encode_packet(SESSION, 2), now=1.6)
    assert seq.state is FeedState.LIVE
    changes = of(drain(seq), StateChanged)
    assert [c.state for c in changes] == [FeedState.LIVE, FeedState.STALE, FeedState.LIVE]


def test_end_of_session_waits_for_the_stream_to_be_complete():
    seq = make()
    seq.receive(packet(1), now=0.0)
    seq.receive(encode_packet(SESSION, 3, end_of_session=True), now=0.0)
    assert not of(drain(seq), EndOfSession)
    seq.receive(packet(2), now=0.0)
    seq.receive(encode_packet(SESSION, 3, end_of_session=True), now=0.0)
    events = drain(seq)
    assert delivered(events) == [2] and of(events, EndOfSession) == [EndOfSession(3)]


def test_late_join_starts_at_the_first_packet():
    seq = make(first_sequence=None)
    seq.receive(packet(1000, 2), now=0.0)
    assert delivered(drain(seq)) == [1000, 1001]
    assert seq.lines["A"].losses == 0


def test_malformed_and_foreign_session_packets_are_counted_drops():
    seq = make()
    seq.receive(b"garbage", now=0.0)
    seq.receive(packet(1), now=0.0)
    seq.receive(packet(2, session=b"OTHER"), now=0.0, line="B")
    assert delivered(drain(seq)) == [1]
    assert (seq.malformed, seq.wrong_session, seq.lines["A"].malformed) == (1, 1, 1)


def test_full_reorder_buffer_requests_at_once_and_loses_nothing():
    seq = make(reorder_capacity=4)
    seq.receive(packet(1), now=0.0)
    for first in range(3, 9):
        seq.receive(packet(first), now=0.0)
    assert seq.overflow == 2
    requests = of(drain(seq), RetransmitRequest)
    assert [(r.sequence, r.count) for r in requests] == [(2, 1)]  # no waiting for the window
    seq.receive_retransmission(packet(2), now=0.0001)
    assert delivered(drain(seq)) == list(range(2, 7))
    seq.tick(0.0001 + WINDOW)  # the overflowed 7 and 8 are now an ordinary gap
    requests = of(drain(seq), RetransmitRequest)
    assert [(r.sequence, r.count) for r in requests] == [(7, 2)]
    seq.receive_retransmission(packet(7, 2), now=0.003)
    assert delivered(drain(seq)) == [7, 8] and seq.unrecoverable == 0


def test_counters_snapshot_names():
    seq = make()
    seq.receive(packet(1), now=0.0, line="B")
    counters = seq.counters()
    assert counters["delivered"] == 1 and counters["B_packets"] == 1 and counters["A_losses"] == 0


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes_never_raise(datagrams):
    seq = make()
    for i, data in enumerate(datagrams):
        seq.receive(data, now=i * 0.01, line="AB"[i % 2])
        seq.receive_retransmission(data, now=i * 0.01)
        seq.tick(i * 0.01)
    drain(seq)
    assert seq.malformed + seq.wrong_session + seq.delivered + seq.duplicates >= 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 60), st.integers(0, 4), st.sampled_from("AB"), st.floats(0, 0.2)),
        max_size=40,
    )
)
def test_stream_is_ordered_exactly_once_and_every_gap_is_accounted(arrivals):
    seq = make(max_retransmit_attempts=2)
    now = 0.0
    for first, count, line, delay in arrivals:
        now += delay
        seq.receive(packet(first, count) if count else encode_packet(SESSION, first), now, line)
        seq.tick(now)
    for step in range(1, 8):  # long enough for every round to give up
        seq.tick(now + step * TIMEOUT)
    covered = []
    for event in drain(seq):
        if isinstance(event, Message):
            assert bytes(event.payload) == b"m%d" % event.sequence
            covered.append(event.sequence)
        elif isinstance(event, GapUnrecoverable):
            covered.extend(range(event.first, event.last + 1))
    assert covered == list(range(1, seq.next_sequence))
    assert seq.next_sequence == max([1] + [f + c for f, c, _, _ in arrivals])
