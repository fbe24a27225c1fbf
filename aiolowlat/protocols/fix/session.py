"""FIX session layer, sans-I/O: bytes and time in, events and bytes out.

``FixSession`` follows the FIX 4.2/4.4 session rules as QuickFIX applies them: Logon with
HeartBtInt and ResetSeqNumFlag, Heartbeat/TestRequest on timers, ResendRequest answered from
the store (application messages again with PossDupFlag and OrigSendingTime, administrative
ones as SequenceReset-GapFill), SequenceReset in both modes, MsgSeqNum too low (Logout) and
too high (ResendRequest, later messages queued), session Rejects with SessionRejectReason,
CompID and SendingTime checks, and the Logout handshake. It never reads a clock: every call
takes ``now`` (Unix seconds); the caller sends ``data_to_send()`` and closes the connection
when a ``Disconnect`` event comes out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .codec import FixDecodeError, FixMessage, FrameReader, Garbled, decode, encode, parse_utc
from .codec import format_utc as _utc
from .dictionary import DataDictionary, FieldReject, RejectReason
from .store import MemoryStore

__all__ = [
    "AppMessage",
    "Disconnect",
    "FixSession",
    "LoggedOn",
    "LoggedOut",
    "MessageDropped",
    "RejectReceived",
    "RejectSent",
    "SessionConfig",
    "SessionCounters",
    "SessionNotReady",
    "SessionState",
]

# Header tags a resent message gets anew (the rest of the stored frame is kept as is).
_REBUILT_HEADER = frozenset((8, 9, 35, 49, 56, 34, 52, 43, 97, 122, 10))
_ADMIN_TYPES = frozenset((b"0", b"1", b"2", b"3", b"4", b"5", b"A"))
MAX_QUEUED = 10_000  # too-high messages held for a gap; beyond this they are dropped (resent)


@dataclass
class SessionConfig:
    """One session's identity and rules (what a QuickFIX [SESSION] section holds)."""

    sender_comp_id: str
    target_comp_id: str
    begin_string: str = "FIX.4.4"
    heartbeat_interval: int = 30
    initiator: bool = True
    reset_on_logon: bool = False
    reset_on_logout: bool = False
    reset_on_disconnect: bool = False
    validate: bool = True  # check each message against the data dictionary
    check_latency: bool = True
    max_latency: float = 120.0  # SendingTime may differ from now by this much
    logon_timeout: float = 10.0
    logout_timeout: float = 2.0
    test_request_factor: float = 1.2  # silence of HeartBtInt x this -> TestRequest
    timeout_factor: float = 2.4  # silence of HeartBtInt x this -> disconnect

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.begin_string, self.sender_comp_id, self.target_comp_id)


class SessionState(enum.Enum):
    DISCONNECTED = "disconnected"
    AWAITING_LOGON = "awaiting_logon"  # acceptor, connected
    LOGON_SENT = "logon_sent"  # initiator, connected
    ACTIVE = "active"
    LOGOUT_SENT = "logout_sent"


class SessionNotReady(RuntimeError):
    """An application message sent while the session is not logged on."""


@dataclass(frozen=True, slots=True)
class LoggedOn:
    reset: bool  # sequence numbers were reset to 1 by this Logon


@dataclass(frozen=True, slots=True)
class AppMessage:
    """An application message, delivered once and in MsgSeqNum order."""

    msg: FixMessage
    poss_dup: bool = False


@dataclass(frozen=True, slots=True)
class RejectReceived:
    msg: FixMessage


@dataclass(frozen=True, slots=True)
class RejectSent:
    ref_seq_num: int
    reason: int
    tag: int | None
    text: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """Bytes or a message ignored by the session (garbled, duplicate, queue overflow)."""

    reason: str
    size: int = 0


@dataclass(frozen=True, slots=True)
class LoggedOut:
    text: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection now (after sending ``data_to_send()``)."""

    reason: str


@dataclass
class SessionCounters:
    received: int = 0
    sent: int = 0
    garbled: int = 0
    rejects_sent: int = 0
    resend_requests_sent: int = 0
    resent: int = 0
    gap_fills_sent: int = 0
    duplicates: int = 0
    queue_dropped: int = 0


class FixSession:
    """One FIX session over successive connections; see the module docstring."""

    def __init__(self, config: SessionConfig, store=None, dictionary=None):
        self.config = config
        self.store = store if store is not None else MemoryStore()
        self.dictionary = dictionary or DataDictionary.load(config.begin_string)
        self.state = SessionState.DISCONNECTED
        self.counters = SessionCounters()
        self._begin = config.begin_string.encode()
        self._sender = config.sender_comp_id.encode()
        self._target = config.target_comp_id.encode()
        self._reader = FrameReader()
        self._out: list[bytes] = []
        self._events: list = []
        self._queue: dict[int, FixMessage] = {}
        self._resend_pending_until = 0  # highest MsgSeqNum seen while a resend is pending
        self._heartbeat_interval = config.heartbeat_interval
        self._last_sent = self._last_received = self._state_since = 0.0
        self._test_request_sent = False
        self._test_req_counter = 0
        self._logout_initiated = False
        self._reset_sent = False

    # ---- what the adapter calls ------------------------------------------------------------

    @property
    def next_sender_seq(self) -> int:
        return self.store.next_sender_seq

    @property
    def next_target_seq(self) -> int:
        return self.store.next_target_seq

    @property
    def is_logged_on(self) -> bool:
        return self.state is SessionState.ACTIVE

    def connection_made(self, now: float) -> list:
        """A new connection: the initiator sends Logon, the acceptor waits for one."""
        self._reader = FrameReader()
        self._queue.clear()
        self._resend_pending_until = 0
        self._last_sent = self._last_received = now
        self._test_request_sent = False
        self._logout_initiated = False
        self._reset_sent = False
        self._heartbeat_interval = self.config.heartbeat_interval
        if self.config.initiator:
            if self.config.reset_on_logon:
                self.store.reset(now)
            self._send_logon(now)
            self._set_state(SessionState.LOGON_SENT, now)
        else:
            self._set_state(SessionState.AWAITING_LOGON, now)
        return self._take_events()

    def connection_lost(self, now: float) -> list:
        was = self.state
        self._set_state(SessionState.DISCONNECTED, now)
        self._out.clear()
        if self.config.reset_on_disconnect:
            self.store.reset(now)
        if was in (SessionState.ACTIVE, SessionState.LOGOUT_SENT):
            self._events.append(LoggedOut("connection lost"))
        return self._take_events()

    def receive_data(self, data: bytes, now: float) -> list:
        """Feed bytes from the connection; returns the events they caused."""
        self._reader.feed(data)
        for frame in self._reader.frames():
            if self.state is SessionState.DISCONNECTED:
                break
            if type(frame) is Garbled:
                self.counters.garbled += 1
                self._events.append(MessageDropped(frame.reason, len(frame.data)))
                continue
            self._last_received = now
            try:
                msg = decode(frame)
            except FixDecodeError as exc:
                self.counters.garbled += 1
                self._events.append(MessageDropped(f"undecodable: {exc.reason}", len(frame)))
                continue
            self.counters.received += 1
            self._on_message(msg, now)
        return self._take_events()

    def send(self, msg_type: bytes | str, fields, now: float) -> int:
        """Queue an application message; returns its MsgSeqNum (stored before it is sent)."""
        if self.state is not SessionState.ACTIVE:
            raise SessionNotReady(f"session {self.config.key} is {self.state.value}")
        if type(msg_type) is str:
            msg_type = msg_type.encode()
        return self._send(msg_type, fields, now)

    def logout(self, now: float, text: str = "") -> list:
        """Start the Logout handshake (or just disconnect if not logged on)."""
        if self.state is SessionState.ACTIVE:
            self._send_logout(now, text)
        elif self.state in (SessionState.LOGON_SENT, SessionState.AWAITING_LOGON):
            self._disconnect(now, "logout before logon")
        return self._take_events()

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_deadline(self) -> float | None:
        """When ``on_timer`` has something to do next (None: nothing pending)."""
        state = self.state
        if state is SessionState.DISCONNECTED:
            return None
        if state is SessionState.LOGON_SENT or state is SessionState.AWAITING_LOGON:
            return self._state_since + self.config.logon_timeout
        if state is SessionState.LOGOUT_SENT:
            return self._state_since + self.config.logout_timeout
        hbi = self._heartbeat_interval
        if hbi <= 0:
            return None
        factor = self.config.timeout_factor if self._test_request_sent else (
            self.config.test_request_factor
        )
        return min(self._last_sent + hbi, self._last_received + hbi * factor)

    def on_timer(self, now: float) -> list:
        """Heartbeats, TestRequests and timeouts due at ``now``."""
        state = self.state
        if state is SessionState.LOGON_SENT or state is SessionState.AWAITING_LOGON:
            if now >= self._state_since + self.config.logon_timeout:
                self._disconnect(now, "timed out waiting for Logon")
        elif state is SessionState.LOGOUT_SENT:
            if now >= self._state_since + self.config.logout_timeout:
                self._disconnect(now, "timed out waiting for Logout reply")
        elif state is SessionState.ACTIVE and self._heartbeat_interval > 0:
            hbi = self._heartbeat_interval
            silence = now - self._last_received
            if silence >= hbi * self.config.timeout_factor:
                self._disconnect(now, "timed out: no message after TestRequest")
            elif silence >= hbi * self.config.test_request_factor and not self._test_request_sent:
                self._test_req_counter += 1
                self._test_request_sent = True
                self._send(b"1", [(112, b"TEST%d" % self._test_req_counter)], now)
            if self.state is SessionState.ACTIVE and now - self._last_sent >= hbi:
                self._send(b"0", [], now)
        return self._take_events()

    # ---- receiving --------------------------------------------------------------------------

    def _on_message(self, msg: FixMessage, now: float) -> None:
        msg_type = msg.msg_type
        if msg.get(8) != self._begin:
            self._send_logout(now, "Incorrect BeginString")
            self._disconnect(now, f"incorrect BeginString {msg.get(8)!r}")
            return
        if self.state is SessionState.AWAITING_LOGON or self.state is SessionState.LOGON_SENT:
            if msg_type != b"A":
                self._disconnect(now, "first message received was not a Logon")
                return
        seq_b = msg.get(34)
        if seq_b is None or not seq_b.isdigit():
            self._send_logout(now, "MsgSeqNum(34) missing or invalid")
            self._disconnect(now, "message without a valid MsgSeqNum")
            return
        seq = int(seq_b)
        if self.config.validate:
            try:
                self.dictionary.validate(msg)
            except FieldReject as exc:
                if msg_type == b"A":
                    self._disconnect(now, f"invalid Logon: {exc.text} ({exc.tag})")
                    return
                if seq <= self.next_target_seq or msg_type == b"4":
                    self._reject(msg, exc.reason, exc.tag, exc.text, now)
                    if seq == self.next_target_seq:
                        self.store.set_next_target(seq + 1)
                    return
                # Too high and invalid: reject it after the gap is filled (from the queue).
        if msg_type == b"4" and msg.get(123) != b"Y":
            self._on_sequence_reset(msg, now)  # Reset mode ignores MsgSeqNum
            return
        if msg_type == b"A":
            self._on_logon(msg, seq, now)
            return
        if not self._check_header(msg, now):
            return
        if msg_type == b"2" and seq >= self.next_target_seq:
            self._on_resend_request(msg, now)  # answered even while we wait for a gap
        expected = self.next_target_seq
        if seq > expected:
            self._on_too_high(msg, seq, now)
        elif seq < expected:
            self._on_too_low(msg, seq, now)
        else:
            self._process(msg, now)
            self._drain_queue(now)

    def _check_header(self, msg: FixMessage, now: float) -> bool:
        """CompIDs and SendingTime; on a problem: Reject, Logout, and False."""
        if msg.get(49) != self._target or msg.get(56) != self._sender:
            self._reject(msg, RejectReason.COMPID_PROBLEM, None, "CompID problem", now)
            self._consume(msg)
            self._send_logout(now, "CompID problem")
            return False
        if self.config.check_latency:
            try:
                sending = parse_utc(msg.get(52, b""))
            except ValueError:
                sending = None
            if sending is None or abs(now - sending) > self.config.max_latency:
                self._reject(msg, RejectReason.SENDING_TIME_ACCURACY, 52,
                             "SendingTime accuracy problem", now)
                self._consume(msg)
                self._send_logout(now, "SendingTime accuracy problem")
                return False
        return True

    def _consume(self, msg: FixMessage) -> None:
        """A message that was answered by a Reject still used up its MsgSeqNum."""
        if msg.seq_num == self.next_target_seq:
            self.store.set_next_target(msg.seq_num + 1)

    def _on_logon(self, msg: FixMessage, seq: int, now: float) -> None:
        if self.state is SessionState.ACTIVE:
            self._reject(msg, RejectReason.OTHER, None, "Logon while logged on", now)
            return
        if not self._check_header(msg, now):
            self._disconnect(now, "Logon rejected")
            return
        hbi_b = msg.get(108)
        if hbi_b is None or not hbi_b.isdigit():
            self._disconnect(now, "Logon without a valid HeartBtInt(108)")
            return
        reset = msg.get(141) == b"Y"
        if reset and not self._reset_sent:
            # The counterparty resets both sides: our reply carries 141=Y and MsgSeqNum 1.
            self.store.reset(now)
            seq_expected = 1
        elif not self.config.initiator and self.config.reset_on_logon:
            self.store.reset(now)
            seq_expected = 1
        else:
            seq_expected = self.next_target_seq
        if seq < seq_expected:
            self._send_logout(
                now, f"MsgSeqNum too low, expecting {seq_expected} but received {seq}"
            )
            self._disconnect(now, "Logon MsgSeqNum too low")
            return
        if not self.config.initiator:
            self._heartbeat_interval = int(hbi_b)
            self._send_logon(now, reset=reset or self.config.reset_on_logon)
        self._set_state(SessionState.ACTIVE, now)
        self._events.append(LoggedOn(reset=reset))
        if seq > seq_expected:
            self._on_too_high(msg, seq, now, queue=False)
        else:
            self.store.set_next_target(seq + 1)
            self._drain_queue(now)

    def _on_too_high(self, msg: FixMessage, seq: int, now: float, queue: bool = True) -> None:
        if queue:
            if len(self._queue) < MAX_QUEUED:
                self._queue[seq] = msg
            else:
                self.counters.queue_dropped += 1
                self._events.append(MessageDropped("gap queue full"))
        if msg.msg_type == b"5":
            # A Logout from a gapped peer: answer it rather than wait for the resend.
            self._on_logout(msg, now)
            return
        if self._resend_pending_until == 0:
            begin = self.next_target_seq
            self._send(b"2", [(7, begin), (16, 0)], now)
            self.counters.resend_requests_sent += 1
        self._resend_pending_until = max(self._resend_pending_until, seq)

    def _on_too_low(self, msg: FixMessage, seq: int, now: float) -> None:
        if msg.get(43) == b"Y":
            orig = msg.get(122)
            if orig is None:
                if msg.msg_type != b"4":
                    self._reject(msg, RejectReason.REQUIRED_TAG_MISSING, 122,
                                 "Required tag missing", now)
                return
            try:
                late = parse_utc(orig) > parse_utc(msg.get(52, b""))
            except ValueError:
                late = False
            if late:
                self._reject(msg, RejectReason.SENDING_TIME_ACCURACY, 122,
                             "SendingTime accuracy problem", now)
                self._send_logout(now, "SendingTime accuracy problem")
                return
            self.counters.duplicates += 1
            self._events.append(MessageDropped(f"duplicate MsgSeqNum {seq}"))
            return
        text = f"MsgSeqNum too low, expecting {self.next_target_seq} but received {seq}"
        self._send_logout(now, text)
        self._disconnect(now, text)

    def _drain_queue(self, now: float) -> None:
        queue = self._queue
        while queue and self.state is SessionState.ACTIVE:
            expected = self.next_target_seq
            for seq in [s for s in queue if s < expected]:
                del queue[seq]  # covered by a gap fill
            msg = queue.pop(expected, None)
            if msg is None:
                break
            if self.config.validate:
                try:
                    self.dictionary.validate(msg)
                except FieldReject as exc:
                    self._reject(msg, exc.reason, exc.tag, exc.text, now)
                    self.store.set_next_target(expected + 1)
                    continue
            if msg.msg_type == b"2":
                self.store.set_next_target(expected + 1)  # answered when it arrived
                continue
            self._process(msg, now)
        if self._resend_pending_until and self.next_target_seq > self._resend_pending_until:
            self._resend_pending_until = 0

    def _process(self, msg: FixMessage, now: float) -> None:
        """An in-sequence message: act on it and advance the expected MsgSeqNum."""
        msg_type = msg.msg_type
        seq = msg.seq_num
        advance = True
        if msg_type == b"0":
            if self._test_request_sent and msg.get(112) is not None:
                self._test_request_sent = False
        elif msg_type == b"1":
            self._send(b"0", [(112, msg.get(112))], now)
        elif msg_type == b"2":
            pass  # answered on arrival
        elif msg_type == b"3":
            self._events.append(RejectReceived(msg))
        elif msg_type == b"4":
            advance = not self._on_gap_fill(msg, now)
        elif msg_type == b"5":
            self.store.set_next_target(seq + 1)
            self._on_logout(msg, now)
            return
        elif msg_type == b"A":
            self._reject(msg, RejectReason.OTHER, None, "Logon while logged on", now)
        else:
            self._events.append(AppMessage(msg, msg.get(43) == b"Y"))
        if advance:
            self.store.set_next_target(seq + 1)
        self._test_request_sent = False

    def _on_gap_fill(self, msg: FixMessage, now: float) -> bool:
        """SequenceReset-GapFill in sequence; True if it moved the expected MsgSeqNum."""
        new_b = msg.get(36, b"")
        new = int(new_b) if new_b.isdigit() else 0
        if new <= msg.seq_num:
            self._reject(msg, RejectReason.VALUE_INCORRECT, 36,
                         f"Attempt to lower sequence number, invalid value NewSeqNo={new}", now)
            return False
        self.store.set_next_target(new)
        return True

    def _on_sequence_reset(self, msg: FixMessage, now: float) -> None:
        new_b = msg.get(36, b"")
        new = int(new_b) if new_b.isdigit() else 0
        if new < self.next_target_seq:
            self._reject(msg, RejectReason.VALUE_INCORRECT, 36,
                         f"Attempt to lower sequence number, invalid value NewSeqNo={new}", now)
            return
        self.store.set_next_target(new)
        self._drain_queue(now)

    def _on_resend_request(self, msg: FixMessage, now: float) -> None:
        """Replay [7, 16]: application messages with PossDupFlag, the rest as GapFill."""
        begin_b, end_b = msg.get(7, b""), msg.get(16, b"0")
        if not begin_b.isdigit() or not end_b.isdigit():
            self._reject(msg, RejectReason.INCORRECT_DATA_FORMAT, 7 if not begin_b.isdigit()
                         else 16, "Incorrect data format for value", now)
            return
        begin, end = int(begin_b), int(end_b)
        last = self.next_sender_seq - 1
        if end == 0 or end > last:  # 0 (4.2+) or 999999 (4.0/4.1) mean "through the last"
            end = last
        if begin < 1 or begin > end:
            return
        gap_start = None
        stored = dict(self.store.get_sent(begin, end))
        for seq in range(begin, end + 1):
            frame = stored.get(seq)
            resend = None
            if frame is not None:
                try:
                    old = decode(frame)
                except FixDecodeError:
                    old = None
                if old is not None and old.msg_type not in _ADMIN_TYPES:
                    resend = old
            if resend is None:
                if gap_start is None:
                    gap_start = seq
                continue
            if gap_start is not None:
                self._send_gap_fill(gap_start, seq, now)
                gap_start = None
            self._resend(resend, now)
        if gap_start is not None:
            self._send_gap_fill(gap_start, end + 1, now)

    def _on_logout(self, msg: FixMessage, now: float) -> None:
        text = msg.get_str(58, "")
        if not self._logout_initiated:
            self._send(b"5", [], now)
        self._events.append(LoggedOut(text))
        if self.config.reset_on_logout:
            self.store.reset(now)
        self._disconnect(now, "logout")

    # ---- sending ----------------------------------------------------------------------------

    def _send_logon(self, now: float, reset: bool | None = None) -> None:
        if reset is None:
            reset = self.config.reset_on_logon
        fields = [(98, b"0"), (108, self._heartbeat_interval)]
        if reset:
            fields.append((141, b"Y"))
            self._reset_sent = True
        self._send(b"A", fields, now)

    def _send_logout(self, now: float, text: str = "") -> None:
        if self.state is SessionState.DISCONNECTED or self._logout_initiated:
            return
        self._logout_initiated = True
        self._send(b"5", [(58, text)] if text else [], now)
        self._set_state(SessionState.LOGOUT_SENT, now)

    def _reject(self, msg: FixMessage, reason: int, tag, text: str, now: float) -> None:
        fields = [(45, msg.get(34, b"0"))]
        if tag is not None:
            fields.append((371, tag))
        if msg.msg_type:
            fields.append((372, msg.msg_type))
        allowed = self.dictionary.fields.get(373, (None, None, ()))[2] or ()
        if str(reason) in allowed:  # FIX 4.2 knows reasons 0-11 only; the text says the rest
            fields.append((373, reason))
        fields.append((58, text))
        self.counters.rejects_sent += 1
        self._events.append(RejectSent(msg.seq_num if 34 in msg else 0, reason, tag, text))
        self._send(b"3", fields, now)

    def _send(self, msg_type: bytes, fields, now: float) -> int:
        seq = self.store.next_sender_seq
        header = [(49, self._sender), (56, self._target), (34, seq), (52, _utc(now))]
        frame = encode(self._begin, msg_type, header + list(fields))
        self.store.save_sent(seq, frame)  # before it can reach the wire
        self._out.append(frame)
        self._last_sent = now
        self.counters.sent += 1
        return seq

    def _resend(self, old: FixMessage, now: float) -> None:
        header = [(49, self._sender), (56, self._target), (34, old.get(34)), (43, b"Y"),
                  (52, _utc(now)), (122, old.get(52))]
        body = [(t, v) for t, v in zip(old.tags, old.values) if t not in _REBUILT_HEADER]
        self._out.append(encode(self._begin, old.msg_type, header + body))
        self._last_sent = now
        self.counters.resent += 1

    def _send_gap_fill(self, seq: int, new_seq: int, now: float) -> None:
        fields = [(49, self._sender), (56, self._target), (34, seq), (43, b"Y"),
                  (52, _utc(now)), (122, _utc(now)), (123, b"Y"), (36, new_seq)]
        self._out.append(encode(self._begin, b"4", fields))
        self._last_sent = now
        self.counters.gap_fills_sent += 1

    # ---- state ------------------------------------------------------------------------------

    def _set_state(self, state: SessionState, now: float) -> None:
        self.state = state
        self._state_since = now

    def _disconnect(self, now: float, reason: str) -> None:
        if self.state is SessionState.DISCONNECTED:
            return
        self._set_state(SessionState.DISCONNECTED, now)
        self._events.append(Disconnect(reason))

    def _take_events(self) -> list:
        events = self._events
        self._events = []
        return events

