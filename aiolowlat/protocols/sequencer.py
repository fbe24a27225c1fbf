"""MoldUDP64 sequencer, sans-I/O: A/B arbitration, reordering, gap recovery, feed state.

Feed it the datagrams of each line (and the unicast retransmissions) with the receive
time you are handed, call ``tick(now)`` now and then, and drain ``events()``: every
message comes out once, in sequence order, or its range is reported as
GapUnrecoverable. Nothing here opens a socket or reads a clock.

A message delivered straight from the packet is a memoryview into the datagram you
fed (decode it before reusing that buffer); messages that had to wait in the reorder
buffer were copied to bytes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterator

import msgspec

from .moldudp64 import MAX_MESSAGES_PER_PACKET, MoldError, decode_packet, encode_request

__all__ = [
    "EndOfSession",
    "FeedState",
    "GapUnrecoverable",
    "LineStats",
    "Message",
    "RetransmitRequest",
    "Sequencer",
    "StateChanged",
]

# Per-line holes beyond this many are folded into the line's loss count unfilled.
_MAX_LINE_HOLES = 256


class FeedState(enum.Enum):
    """What the strategy may assume about the stream it is reading."""

    INITIAL = "initial"  # no packet yet
    LIVE = "live"  # in sequence, or a gap still inside the reorder window
    RECOVERING = "recovering"  # a retransmission request is outstanding
    STALE = "stale"  # no packet or heartbeat on any line for stale_after


class Message(msgspec.Struct, frozen=True, gc=False):
    """One message of the stream, in sequence order, exactly once."""

    sequence: int
    payload: bytes | memoryview


class StateChanged(msgspec.Struct, frozen=True, gc=False):
    """The feed state moved from ``previous`` to ``state``."""

    previous: FeedState
    state: FeedState


class RetransmitRequest(msgspec.Struct, frozen=True, gc=False):
    """Send ``data`` (a MoldUDP64 request) to the re-request server."""

    sequence: int
    count: int
    data: bytes


class GapUnrecoverable(msgspec.Struct, frozen=True, gc=False):
    """Messages ``first``..``last`` (inclusive) were never received and are skipped."""

    first: int
    last: int


class EndOfSession(msgspec.Struct, frozen=True, gc=False):
    """The server ended the session and every message before ``sequence`` was handled."""

    sequence: int


Event = Message | StateChanged | RetransmitRequest | GapUnrecoverable | EndOfSession


class LineStats:
    """Per-line counters; a line's losses are messages it never delivered, late ones excluded."""

    __slots__ = ("name", "packets", "malformed", "late", "duplicates", "first_arrivals",
                 "_next", "_holes", "_lost_for_good")  # fmt: skip

    def __init__(self, name: Hashable) -> None:
        self.name = name
        self.packets = 0
        self.malformed = 0
        self.late = 0  # arrived after a later message on the same line
        self.duplicates = 0  # seen twice on this line
        self.first_arrivals = 0  # messages this line delivered before the other(s)
        self._next: int | None = None
        self._holes: list[tuple[int, int]] = []  # [start, end) not yet seen on this line
        self._lost_for_good = 0

    @property
    def losses(self) -> int:
        return self._lost_for_good + sum(end - start for start, end in self._holes)

    def _account(self, origin: int, sequence: int, count: int) -> None:
        if self._next is None:
            self._next = origin
        end = sequence + count
        if sequence > self._next:
            self._holes.append((self._next, sequence))
            if len(self._holes) > _MAX_LINE_HOLES:
                start, stop = self._holes.pop(0)
                self._lost_for_good += stop - start
        elif sequence < self._next:
            covered = min(end, self._next)
            filled = _subtract(self._holes, sequence, covered)
            self.late += filled
            self.duplicates += covered - sequence - filled
        self._next = max(self._next, end)


def _subtract(holes: list[tuple[int, int]], start: int, end: int) -> int:
    """Remove [start, end) from ``holes`` in place; return how many sequences it covered."""
    removed = 0
    kept = []
    for lo, hi in holes:
        a, b = max(lo, start), min(hi, end)
        if a >= b:
            kept.append((lo, hi))
            continue
        removed += b - a
        if lo < a:
            kept.append((lo, a))
        if b < hi:
            kept.append((b, hi))
    holes[:] = kept
    return removed


class Sequencer:
    """Turns MoldUDP64 datagrams from redundant lines into one ordered, gap-checked stream."""

    def __init__(
        self,
        *,
        lines: tuple[Hashable, ...] = ("A", "B"),
        first_sequence: int | None = 1,
        session: bytes | None = None,
        reorder_window: float = 0.001,
        reorder_capacity: int = 4096,
        retransmit_timeout: float = 0.1,
        max_retransmit_attempts: int = 3,
        max_request_span: int = MAX_MESSAGES_PER_PACKET,
        stale_after: float = 1.0,
    ) -> None:
        """``first_sequence=None`` joins late: the first packet seen starts the stream."""
        self.lines = {name: LineStats(name) for name in lines}
        self._session = session
        self._origin = first_sequence
        self._expected = first_sequence  # next sequence to deliver
        self._high = first_sequence or 0  # one past the highest sequence known to exist
        self._buffer: dict[int, bytes] = {}
        self._reorder_window = reorder_window
        self._capacity = reorder_capacity
        self._retransmit_timeout = retransmit_timeout
        self._max_attempts = max_retransmit_attempts
        self._max_span = max(1, max_request_span)
        self._stale_after = stale_after
        self._state = FeedState.INITIAL
        self._events: deque = deque()
        self._last_receive: float | None = None
        self._gap_since: float | None = None
        self._gap_head = 0
        self._requested_at: float | None = None
        self._requested_through = 0
        self._attempts = 0
        self._end_of_session: int | None = None
        self._end_reported = False
        # counters (messages unless named otherwise)
        self.packets = 0  # datagrams fed, retransmissions included
        self.malformed = 0  # datagrams that failed MoldUDP64 framing
        self.wrong_session = 0  # datagrams of another session
        self.delivered = 0
        self.duplicates = 0  # already delivered or buffered: the slower line, replays
        self.reordered = 0  # waited in the reorder buffer for an earlier message
        self.overflow = 0  # dropped with the reorder buffer full, then asked for again
        self.gaps = 0  # times the next message was missing while later ones had arrived
        self.requested = 0  # asked for in RetransmitRequest events
        self.retransmitted = 0  # retransmission datagrams accepted
        self.unrecoverable = 0  # skipped and reported in GapUnrecoverable events

    @property
    def state(self) -> FeedState:
        return self._state

    @property
    def next_sequence(self) -> int | None:
        """The next sequence number to be delivered."""
        return self._expected

    @property
    def session(self) -> bytes | None:
        return self._session

    def counters(self) -> dict[str, int]:
        """A snapshot for metrics: stream counters plus ``<line>_losses`` etc. per line."""
        names = ("packets", "malformed", "wrong_session", "delivered", "duplicates",
                 "reordered", "overflow", "gaps", "requested", "retransmitted", "unrecoverable")  # fmt: skip
        snapshot = {name: getattr(self, name) for name in names}
        for line in self.lines.values():
            for field in ("packets", "malformed", "late", "duplicates", "first_arrivals", "losses"):
                snapshot[f"{line.name}_{field}"] = getattr(line, field)
        return snapshot

    def events(self) -> Iterator[Event]:
        """Drain the events produced so far."""
        events = self._events
        for _ in range(len(events)):
            yield events.popleft()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def receive(self, data: bytes | memoryview, now: float, line: Hashable = "A") -> None:
        """Feed one datagram received on ``line`` (one of ``lines``) at time ``now``."""
        stats = self.lines[line]
        stats.packets += 1
        packet = self._decode(data, now)
        if packet is None:
            stats.malformed += 1
            return
        stats._account(self._origin, packet.sequence, len(packet.messages))
        self._ingest(packet, now, stats)

    def receive_retransmission(self, data: bytes | memoryview, now: float) -> None:
        """Feed one datagram answering a RetransmitRequest (no line accounting)."""
        packet = self._decode(data, now)
        if packet is not None:
            self.retransmitted += 1
            self._ingest(packet, now, None)

    def tick(self, now: float) -> None:
        """Advance timers: reorder window, retransmission timeout, staleness."""
        last = self._last_receive
        if last is not None and self._state is not FeedState.STALE:
            if now - last >= self._stale_after:
                self._set_state(FeedState.STALE)
        if self._expected is not None:
            self._service(now)

    def _decode(self, data, now):
        self.packets += 1
        try:
            packet = decode_packet(data)
        except MoldError:
            self.malformed += 1
            return None
        if self._session is None:
            self._session = packet.session
        elif packet.session != self._session:
            self.wrong_session += 1
            return None
        if self._expected is None:
            self._origin = self._expected = self._high = packet.sequence
        self._last_receive = now if self._last_receive is None else max(now, self._last_receive)
        if self._state is FeedState.INITIAL or self._state is FeedState.STALE:
            recovering = self._requested_at is not None
            self._set_state(FeedState.RECOVERING if recovering else FeedState.LIVE)
        return packet

    def _ingest(self, packet, now, stats):
        first = packet.sequence
        messages = packet.messages
        end = first + len(messages)
        if packet.end_of_session:
            self._end_of_session = first
        if end > self._high:
            self._high = end
        if messages:
            expected = self._expected
            if first == expected and not self._buffer:
                emit = self._events.append
                for offset, payload in enumerate(messages):
                    emit(Message(first + offset, payload))
                self._expected = end
                self.delivered += len(messages)
                if stats is not None:
                    stats.first_arrivals += len(messages)
            elif end <= expected:
                self.duplicates += len(messages)
            else:
                self._insert(first, messages, stats)
        self._service(now)

    def _insert(self, first, messages, stats):
        """Slow path: deliver what is next, buffer what is early, drop what is old."""
        buffer = self._buffer
        for offset, payload in enumerate(messages):
            sequence = first + offset
            if sequence < self._expected or sequence in buffer:
                self.duplicates += 1
                continue
            if sequence == self._expected:
                self._events.append(Message(sequence, payload))
                self.delivered += 1
                self._expected += 1
                self._drain()
            elif len(buffer) < self._capacity:
                buffer[sequence] = bytes(payload)
                self.reordered += 1
            else:
                # Re-requested as a hole of its own once the head gap fills and frees room;
                # asking now would only have the answer overflow again.
                self.overflow += 1
                continue
            if stats is not None:
                stats.first_arrivals += 1

    def _drain(self):
        buffer = self._buffer
        expected = self._expected
        for _ in range(len(buffer)):
            payload = buffer.pop(expected, None)
            if payload is None:
                break
            self._events.append(Message(expected, payload))
            self.delivered += 1
            expected += 1
        self._expected = expected

    def _service(self, now):
        """Run the gap timers; each pass settles at most one hole, so the loop is bounded."""
        for _ in range(len(self._buffer) + 2):
            if self._requested_at is not None and self._expected >= self._requested_through:
                self._end_round()
            if self._expected >= self._high:
                self._gap_since = None
                if self._state is FeedState.RECOVERING:
                    self._set_state(FeedState.LIVE)
                self._report_end_of_session()
                return
            if self._gap_since is None or (
                self._requested_at is None and self._gap_head != self._expected
            ):
                self._gap_since, self._gap_head = now, self._expected
                self.gaps += 1
            if self._requested_at is None:
                waited = now - self._gap_since
                if waited >= self._reorder_window or self._buffer_full():
                    self._request_holes(now)
                return
            if now - self._requested_at < self._retransmit_timeout:
                return
            if self._attempts < self._max_attempts:
                self._request_holes(now)
                return
            self._skip_head_hole()

    def _buffer_full(self):
        return len(self._buffer) >= self._capacity

    def _request_holes(self, now):
        """Start or repeat a retransmission round for the holes from the next sequence."""
        self._request_range(self._expected, self._high)
        self._attempts += 1
        self._requested_at = now
        if self._state is FeedState.LIVE:
            self._set_state(FeedState.RECOVERING)

    def _request_range(self, start, high):
        """Ask for every missing range in [start, high), at most max_request_span of it."""
        stop = min(high, start + self._max_span)
        holes = []
        for sequence in sorted(s for s in self._buffer if start <= s < stop):
            if sequence > start:
                holes.append((start, sequence))
            start = sequence + 1
        if start < stop:
            holes.append((start, stop))
        for first, end in holes:
            for chunk in range(first, end, MAX_MESSAGES_PER_PACKET):
                count = min(MAX_MESSAGES_PER_PACKET, end - chunk)
                data = encode_request(self._session, chunk, count)
                self._events.append(RetransmitRequest(chunk, count, data))
                self.requested += count
        self._requested_through = max(self._requested_through, stop)

    def _skip_head_hole(self):
        end = min(self._buffer) if self._buffer else self._high
        self._events.append(GapUnrecoverable(self._expected, end - 1))
        self.unrecoverable += end - self._expected
        self._expected = end
        self._gap_since = None
        self._drain()

    def _end_round(self):
        self._requested_at = None
        self._attempts = 0
        self._gap_since = None

    def _report_end_of_session(self):
        eos = self._end_of_session
        if eos is not None and not self._end_reported and self._expected >= eos:
            self._end_reported = True
            self._events.append(EndOfSession(eos))

    def _set_state(self, state):
        if state is not self._state:
            self._events.append(StateChanged(self._state, state))
            self._state = state
