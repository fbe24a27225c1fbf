"""The ITCH feed simulator, and end to end: impaired A/B lines -> sequencer -> book."""

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiolowlat.protocols.book import BookBuilder
from aiolowlat.protocols.itch import (
    CrossTrade,
    ItchDecoder,
    StockDirectory,
    SystemEvent,
    decode_message,
)
from aiolowlat.protocols.moldudp64 import decode_packet, encode_request
from aiolowlat.protocols.sequencer import (
    EndOfSession,
    FeedState,
    GapUnrecoverable,
    Message,
    RetransmitRequest,
    Sequencer,
)
from aiolowlat.sim import (
    ItchFeed,
    LineImpairment,
    RetransmissionStore,
    generate_session,
    merge_lines,
    packetize,
)

SESSION = b"SIM0000001"


def reference_book(messages):
    builder = BookBuilder()
    decoder = ItchDecoder()
    for message in messages:
        builder.apply(decoder.decode(message))
    return builder


def test_generator_is_deterministic_by_seed():
    assert generate_session(5, events=300) == generate_session(5, events=300)
    assert generate_session(5, events=300) != generate_session(6, events=300)


def test_session_shape_and_a_consistent_book():
    messages = [decode_message(m) for m in generate_session(11, ("AAA", "BBB"), events=2000)]
    assert messages[0] == SystemEvent(0, 0, messages[0].timestamp, "O")
    assert [type(m) for m in messages[1:3]] == [StockDirectory, StockDirectory]
    assert [m.stock for m in messages[1:3]] == ["AAA", "BBB"]
    assert [m.event_code for m in messages[-3:]] == ["M", "E", "C"]
    assert any(isinstance(m, CrossTrade) for m in messages)
    timestamps = [m.timestamp for m in messages]
    assert timestamps == sorted(timestamps)
    kinds = {type(m).__name__ for m in messages}
    assert kinds >= {"AddOrder", "AddOrderMPID", "OrderExecuted", "OrderExecutedWithPrice",
                     "OrderCancel", "OrderDelete", "OrderReplace", "Trade"}  # fmt: skip
    builder = BookBuilder()
    for m in messages:
        builder.apply(m)
        if builder.applied % 100 == 0:
            for book in builder.books.values():
                top = book.top()
                assert (
                    top.bid_price is None or top.ask_price is None or top.bid_price < top.ask_price
                )
    counters = builder.counters()
    assert (counters["unknown_order"], counters["duplicate_order"], counters["oversized"]) == (
        0,
        0,
        0,
    )
    assert counters["open_orders"] > 0


def test_packets_carry_the_whole_stream_in_sequence():
    messages = generate_session(2, events=500)
    packets = packetize(messages, SESSION, max_messages=5, heartbeat_every=10)
    decoded = [decode_packet(p) for p in packets]
    carried = []
    expected = 1
    for packet in decoded:
        assert packet.sequence == expected
        expected += len(packet.messages)
        carried.extend(bytes(m) for m in packet.messages)
        assert len(packet.messages) <= 5
    assert carried == messages
    assert max(len(p) for p in packets) <= 1400
    assert sum(p.is_heartbeat for p in decoded) >= len(packets) // 12
    assert [p.end_of_session for p in decoded[-3:]] == [True] * 3
    assert decoded[-1].sequence == len(messages) + 1


def test_packets_respect_the_byte_limit():
    messages = generate_session(3, events=200)
    packets = packetize(messages, SESSION, max_messages=100, max_bytes=120)
    assert max(len(p) for p in packets) <= 120
    assert [bytes(m) for p in packets for m in decode_packet(p).messages] == messages


def test_store_answers_a_request_with_the_requested_range():
    feed = ItchFeed(seed=4, events=200, max_messages=4)
    packets = feed.store.answer(encode_request(SESSION, 10, 9))
    decoded = [decode_packet(p) for p in packets]
    assert [p.sequence for p in decoded] == [10, 14, 18]
    assert [bytes(m) for p in decoded for m in p.messages] == feed.messages[9:18]
    # a request running past the end is answered with what exists
    (last,) = feed.store.answer(encode_request(SESSION, len(feed.messages), 5))
    assert [bytes(m) for m in decode_packet(last).messages] == feed.messages[-1:]


def test_store_counts_bad_requests():
    store = RetransmissionStore(SESSION, [b"x"] * 10)
    assert store.answer(b"short") == []
    assert store.answer(encode_request(b"OTHER", 1, 1)) == []
    assert store.answer(encode_request(SESSION, 11, 5)) == []
    assert (store.malformed, store.wrong_session, store.out_of_range, store.answered) == (
        1,
        1,
        1,
        0,
    )


def test_line_impairments_are_seeded_and_counted():
    feed = ItchFeed(seed=9, events=2000)
    impairment = LineImpairment(loss=0.1, reorder=0.1, duplicate=0.1)
    a1, report_a = feed.line("A", impairment)
    a2, _ = feed.line("A", impairment)
    b, report_b = feed.line("B", impairment)
    assert a1 == a2 and a1 != b
    total = len(feed.packets)
    assert len(a1) == total - report_a.dropped_packets + report_a.duplicated
    for report in (report_a, report_b):
        for count in (report.dropped_packets, report.reordered, report.duplicated):
            assert 0.05 * total < count < 0.15 * total
    perfect, report = feed.line("A")
    assert [d.data for d in perfect] == feed.packets and report.dropped_packets == 0
    merged = merge_lines(a1, b)
    assert len(merged) == len(a1) + len(b)
    assert [d.time for d in merged] == sorted(d.time for d in merged)


def run_feed(feed, lines, *, rtt=50e-6, tick_every=100e-6, **sequencer_options):
    """Drive the sequencer with every datagram, answer its requests from the store after
    ``rtt``, and feed delivered messages into a book. Returns (sequencer, builder, events)."""
    sequencer = Sequencer(**sequencer_options)
    builder = BookBuilder()
    decoder = ItchDecoder()
    arrivals = merge_lines(*lines)
    end = arrivals[-1].time + 0.05
    queue = [(d.time, i, d.line, d.data) for i, d in enumerate(arrivals)]
    ticks = int(end / tick_every) + 1
    queue += [(k * tick_every, len(arrivals) + k, "tick", b"") for k in range(ticks)]
    heapq.heapify(queue)
    serial = len(queue)
    seen = []
    for _ in range(10 * len(queue)):  # bounded: requests only ever add a few packets
        if not queue:
            break
        now, _, line, data = heapq.heappop(queue)
        if line == "tick":
            sequencer.tick(now)
        elif line == "retransmission":
            sequencer.receive_retransmission(data, now)
        else:
            sequencer.receive(data, now, line)
        for event in sequencer.events():
            seen.append(event)
            if isinstance(event, Message):
                builder.apply(decoder.decode(event.payload))
            elif isinstance(event, RetransmitRequest):
                for packet in feed.store.answer(event.data):
                    serial += 1
                    heapq.heappush(queue, (now + rtt, serial, "retransmission", packet))
    assert not queue
    return sequencer, builder, seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_end_to_end_impaired_ab_lines_rebuild_the_lossless_book(seed):
    feed = ItchFeed(seed=seed, events=3000, heartbeat_every=20)
    impairment = LineImpairment(loss=0.1, reorder=0.05, duplicate=0.05)
    line_a, report_a = feed.line("A", impairment)
    line_b, report_b = feed.line("B", impairment)
    sequencer, builder, events = run_feed(
        feed, [line_a, line_b], reorder_window=60e-6, retransmit_timeout=500e-6, stale_after=0.01
    )
    delivered = [e.sequence for e in events if isinstance(e, Message)]
    assert delivered == list(range(1, len(feed.messages) + 1))
    assert not [e for e in events if isinstance(e, GapUnrecoverable)]
    assert [e for e in events if isinstance(e, EndOfSession)] == [
        EndOfSession(len(feed.messages) + 1)
    ]
    assert builder.snapshot() == reference_book(feed.messages).snapshot()
    assert sequencer.lines["A"].losses == report_a.dropped_messages > 0
    assert sequencer.lines["B"].losses == report_b.dropped_messages > 0
    assert sequencer.lines["A"].late > 0 and sequencer.lines["B"].late > 0
    assert sequencer.duplicates > 0 and sequencer.reordered > 0
    assert sequencer.requested > 0 and sequencer.retransmitted > 0  # both lines lost some
    assert sequencer.state is FeedState.STALE  # silence after the session ended


def test_end_to_end_with_a_tiny_reorder_buffer_loses_nothing():
    feed = ItchFeed(seed=4, events=2000, heartbeat_every=20)
    impairment = LineImpairment(loss=0.2, reorder=0.1, duplicate=0.05)
    lines = [feed.line("A", impairment)[0], feed.line("B", impairment)[0]]
    sequencer, builder, _ = run_feed(
        feed, lines, reorder_window=60e-6, retransmit_timeout=500e-6, reorder_capacity=8
    )
    assert sequencer.overflow > 0 and sequencer.unrecoverable == 0
    assert builder.snapshot() == reference_book(feed.messages).snapshot()


def test_end_to_end_without_answers_reports_every_lost_range():
    feed = ItchFeed(seed=8, events=1000)
    impairment = LineImpairment(loss=0.2)
    lines = [feed.line("A", impairment)[0], feed.line("B", impairment)[0]]
    feed.store.messages = []  # the re-request server knows nothing
    _, _, events = run_feed(feed, lines, reorder_window=60e-6, retransmit_timeout=500e-6)
    covered = []
    gaps = 0
    for event in events:
        if isinstance(event, Message):
            covered.append(event.sequence)
        elif isinstance(event, GapUnrecoverable):
            gaps += 1
            covered.extend(range(event.first, event.last + 1))
    assert gaps > 0
    assert covered == list(range(1, len(feed.messages) + 1))


@settings(max_examples=25, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32),
    loss=st.floats(0, 0.3),
    reorder=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.3),
)
def test_any_impairment_rebuilds_the_lossless_book(seed, loss, reorder, duplicate):
    feed = ItchFeed(seed=seed, events=300, heartbeat_every=10)
    impairment = LineImpairment(loss=loss, reorder=reorder, duplicate=duplicate)
    (line_a, report_a), (line_b, report_b) = feed.line("A", impairment), feed.line("B", impairment)
    sequencer, builder, events = run_feed(
        feed, [line_a, line_b], reorder_window=60e-6, retransmit_timeout=500e-6
    )
    assert [e.sequence for e in events if isinstance(e, Message)] == list(
        range(1, len(feed.messages) + 1)
    )
    assert builder.snapshot() == reference_book(feed.messages).snapshot()
    # A line's losses are exact once it delivered an end-of-session packet (they are all
    # alike); a tail lost with every one of them is invisible to that line.
    for name, line, report in (("A", line_a, report_a), ("B", line_b, report_b)):
        saw_the_end = any(d.data == feed.packets[-1] for d in line)
        if saw_the_end:
            assert sequencer.lines[name].losses == report.dropped_messages
        else:
            assert sequencer.lines[name].losses <= report.dropped_messages
