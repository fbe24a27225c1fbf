"""FIX session rules on the sans-I/O core, in plain bytes, with time passed in."""

import pytest

from aiolowlat.protocols.fix.codec import FrameReader, decode, encode, format_utc
from aiolowlat.protocols.fix.session import (
    AppMessage,
    Disconnect,
    FixSession,
    LoggedOn,
    LoggedOut,
    MessageDropped,
    RejectReceived,
    RejectSent,
    SessionConfig,
    SessionNotReady,
    SessionState,
)
from aiolowlat.protocols.fix.store import MemoryStore

T0 = 1_700_000_000.0
NOS = [(11, b"O1"), (55, b"AAPL"), (54, b"1"), (60, b"20231114-22:13:20"), (38, 100), (40, b"1")]


def frame(msg_type, seq, fields=(), *, now=T0, sender=b"EXCH", target=b"CLIENT",
          header=(), begin=b"FIX.4.4"):
    """A frame from the counterparty (EXCH) to us (CLIENT)."""
    head = [(49, sender), (56, target), (34, seq), *header, (52, format_utc(now))]
    return encode(begin, msg_type, head + list(fields))


def sent(session):
    reader = FrameReader()
    reader.feed(session.data_to_send())
    frames = list(reader.frames())
    assert all(isinstance(f, bytes) for f in frames), frames
    return [decode(f) for f in frames]


def initiator(**kw):
    cfg = SessionConfig("CLIENT", "EXCH", heartbeat_interval=30, **kw)
    return FixSession(cfg, MemoryStore())


def logged_on(**kw):
    s = initiator(**kw)
    s.connection_made(T0)
    sent(s)
    events = s.receive_data(frame(b"A", 1, [(98, 0), (108, 30)]), T0)
    assert events == [LoggedOn(reset=False)]
    return s


def test_initiator_logon_then_active():
    s = initiator()
    assert s.connection_made(T0) == []
    (logon,) = sent(s)
    assert logon.msg_type == b"A" and logon[34] == b"1" and logon[108] == b"30"
    assert logon[98] == b"0" and 141 not in logon
    assert s.state is SessionState.LOGON_SENT
    events = s.receive_data(frame(b"A", 1, [(98, 0), (108, 30)]), T0)
    assert events == [LoggedOn(reset=False)]
    assert s.is_logged_on and s.next_target_seq == 2 and s.next_sender_seq == 2


def test_reset_on_logon_sends_flag_and_starts_at_one():
    store = MemoryStore()
    store.set_next_sender(7)
    store.set_next_target(9)
    s = FixSession(SessionConfig("CLIENT", "EXCH", reset_on_logon=True), store)
    s.connection_made(T0)
    (logon,) = sent(s)
    assert logon[141] == b"Y" and logon[34] == b"1"
    assert s.receive_data(frame(b"A", 1, [(98, 0), (108, 30), (141, b"Y")]), T0) == [
        LoggedOn(reset=True)
    ]
    assert s.next_target_seq == 2


def test_acceptor_answers_logon_reset_and_adopts_heartbeat():
    store = MemoryStore()
    store.set_next_sender(5)
    store.set_next_target(5)
    s = FixSession(SessionConfig("CLIENT", "EXCH", initiator=False), store)
    s.connection_made(T0)
    assert sent(s) == []
    events = s.receive_data(frame(b"A", 1, [(98, 0), (108, 7), (141, b"Y")]), T0)
    assert events == [LoggedOn(reset=True)]
    (reply,) = sent(s)
    assert reply.msg_type == b"A" and reply[141] == b"Y" and reply[34] == b"1"
    assert reply[108] == b"7"
    assert s.next_deadline() == T0 + 7


def test_acceptor_disconnects_when_first_message_is_not_logon():
    s = FixSession(SessionConfig("CLIENT", "EXCH", initiator=False))
    s.connection_made(T0)
    events = s.receive_data(frame(b"D", 1, NOS), T0)
    assert [type(e) for e in events] == [Disconnect]
    assert sent(s) == []


def test_logon_timeout_disconnects():
    s = initiator(logon_timeout=5)
    s.connection_made(T0)
    assert s.next_deadline() == T0 + 5
    assert s.on_timer(T0 + 4) == []
    assert [type(e) for e in s.on_timer(T0 + 5)] == [Disconnect]


def test_heartbeat_after_idle_interval():
    s = logged_on()
    assert s.next_deadline() == T0 + 30
    s.receive_data(frame(b"0", 2, now=T0 + 29), T0 + 29)
    assert s.on_timer(T0 + 30) == []
    (hb,) = sent(s)
    assert hb.msg_type == b"0" and hb[34] == b"2" and 112 not in hb


def test_test_request_after_silence_then_timeout():
    s = logged_on()
    s.on_timer(T0 + 30)
    sent(s)  # heartbeat
    s.on_timer(T0 + 36)  # 1.2 x 30 of silence
    (tr,) = sent(s)
    assert tr.msg_type == b"1" and tr[112]
    # The answer clears it; silence again leads to a new TestRequest, then a timeout.
    s.receive_data(frame(b"0", 2, [(112, tr[112])], now=T0 + 37), T0 + 37)
    s.on_timer(T0 + 37 + 36)
    assert [m.msg_type for m in sent(s)] == [b"1"]  # it also counts as our heartbeat
    assert [type(e) for e in s.on_timer(T0 + 37 + 72)] == [Disconnect]


def test_test_request_is_answered_with_its_id():
    s = logged_on()
    s.receive_data(frame(b"1", 2, [(112, b"ping-7")]), T0)
    (hb,) = sent(s)
    assert hb.msg_type == b"0" and hb[112] == b"ping-7"


def test_resend_request_replays_app_messages_and_gap_fills_admin():
    s = logged_on()
    s.send("D", NOS, T0 + 1)  # 2
    s.on_timer(T0 + 31)  # 3: heartbeat
    s.send("D", NOS, T0 + 32)  # 4
    sent(s)
    s.receive_data(frame(b"2", 2, [(7, 1), (16, 0)], now=T0 + 40), T0 + 40)
    out = sent(s)
    assert [(m.msg_type, m[34]) for m in out] == [(b"4", b"1"), (b"D", b"2"), (b"4", b"3"),
                                                  (b"D", b"4")]
    assert out[0][123] == b"Y" and out[0][36] == b"2" and out[0][43] == b"Y"
    assert out[2][36] == b"4"
    assert out[1][43] == b"Y" and out[1][122] == format_utc(T0 + 1)
    assert out[1][52] == format_utc(T0 + 40) and out[1][11] == b"O1"
    assert s.next_sender_seq == 5  # replays use no new numbers


def test_too_high_sends_one_resend_request_and_queues_until_filled():
    s = logged_on()
    events = s.receive_data(frame(b"D", 4, NOS) + frame(b"D", 5, NOS), T0)
    assert events == []
    (rr,) = sent(s)
    assert rr.msg_type == b"2" and rr[7] == b"2" and rr[16] == b"0"
    fill = frame(b"4", 2, [(123, b"Y"), (36, 3)], header=[(43, b"Y"), (122, format_utc(T0))])
    replay = frame(b"D", 3, [(11, b"R3"), *NOS[1:]], header=[(43, b"Y"), (122, format_utc(T0))])
    events = s.receive_data(fill + replay, T0)
    assert [(type(e), e.msg.seq_num) for e in events] == [(AppMessage, 3), (AppMessage, 4),
                                                          (AppMessage, 5)]
    assert events[0].poss_dup and not events[1].poss_dup
    assert s.next_target_seq == 6 and sent(s) == []


def test_too_low_without_possdup_logs_out():
    s = logged_on()
    s.receive_data(frame(b"D", 2, NOS), T0)
    events = s.receive_data(frame(b"D", 2, NOS), T0)
    assert [type(e) for e in events] == [Disconnect]
    (logout,) = sent(s)
    assert logout.msg_type == b"5"
    assert logout[58] == b"MsgSeqNum too low, expecting 3 but received 2"


def test_too_low_with_possdup_is_ignored_and_needs_orig_sending_time():
    s = logged_on()
    s.receive_data(frame(b"D", 2, NOS), T0)
    dup = frame(b"D", 2, NOS, header=[(43, b"Y"), (122, format_utc(T0))])
    assert [type(e) for e in s.receive_data(dup, T0)] == [MessageDropped]
    assert sent(s) == []
    no_orig = frame(b"D", 2, NOS, header=[(43, b"Y")])
    (ev,) = s.receive_data(no_orig, T0)
    assert ev == RejectSent(2, 1, 122, "Required tag missing")
    (rej,) = sent(s)
    assert rej.msg_type == b"3" and rej[45] == b"2" and rej[373] == b"1" and rej[371] == b"122"
    assert s.is_logged_on and s.next_target_seq == 3


def test_gap_fill_advances_and_rejects_lowering():
    s = logged_on()
    s.receive_data(frame(b"4", 2, [(123, b"Y"), (36, 10)]), T0)
    assert s.next_target_seq == 10
    (ev,) = s.receive_data(frame(b"4", 10, [(123, b"Y"), (36, 10)]), T0)
    assert isinstance(ev, RejectSent) and ev.reason == 5 and ev.tag == 36
    assert s.next_target_seq == 11  # the rejected message used up its number


def test_sequence_reset_reset_ignores_msgseqnum():
    s = logged_on()
    assert s.receive_data(frame(b"4", 999, [(36, 50)]), T0) == []
    assert s.next_target_seq == 50 and sent(s) == []
    (ev,) = s.receive_data(frame(b"4", 1, [(36, 20)]), T0)
    assert ev.reason == 5 and s.next_target_seq == 50


def test_wrong_comp_id_rejects_and_logs_out():
    s = logged_on()
    (ev,) = s.receive_data(frame(b"D", 2, NOS, sender=b"INTRUDER"), T0)
    assert ev.reason == 9
    rej, logout = sent(s)
    assert rej[373] == b"9" and logout.msg_type == b"5"
    assert s.state is SessionState.LOGOUT_SENT


def test_sending_time_accuracy_rejects_and_logs_out():
    s = logged_on()
    (ev,) = s.receive_data(frame(b"D", 2, NOS, now=T0 - 500), T0)
    assert ev.reason == 10 and ev.tag == 52
    assert [m.msg_type for m in sent(s)] == [b"3", b"5"]
    assert s.next_target_seq == 3


@pytest.mark.parametrize(
    ("fields", "reason", "tag"),
    [
        ([f for f in NOS if f[0] != 54], 1, 54),  # required tag missing
        ([*NOS[:2], (54, b"Z"), *NOS[3:]], 5, 54),  # not an enum value
        ([*NOS[:4], (38, b"lots"), *NOS[5:]], 6, 38),  # not a number
        ([*NOS, (999, b"x")], 0, 999),  # no such tag
        ([*NOS, (58, b"")], 4, 58),  # empty value
        ([*NOS, (11, b"again")], 13, 11),  # tag twice
        ([*NOS, (453, 2), (448, b"P1"), (447, b"D"), (452, 1)], 16, 453),  # group count
    ],
)
def test_invalid_messages_get_session_reject_and_use_their_seqnum(fields, reason, tag):
    s = logged_on()
    (ev,) = s.receive_data(frame(b"D", 2, fields), T0)
    assert (ev.reason, ev.tag) == (reason, tag)
    (rej,) = sent(s)
    assert rej.msg_type == b"3" and rej[45] == b"2" and rej[373] == str(reason).encode()
    assert rej[371] == str(tag).encode() and rej[372] == b"D"
    assert s.next_target_seq == 3 and s.is_logged_on


def test_unknown_msg_type_is_rejected():
    s = logged_on()
    (ev,) = s.receive_data(frame(b"ZZ", 2, []), T0)
    assert ev.reason == 11


def test_garbled_frame_is_ignored_and_the_gap_is_requested():
    s = logged_on()
    bad = bytearray(frame(b"D", 2, NOS))
    bad[-3] = ord("9") if bad[-3] != ord("9") else ord("8")  # wrong CheckSum
    events = s.receive_data(bytes(bad) + b"noise" + frame(b"D", 3, NOS), T0)
    assert [type(e) for e in events] == [MessageDropped, MessageDropped]
    (rr,) = sent(s)
    assert rr.msg_type == b"2" and rr[7] == b"2"
    assert s.counters.garbled == 2


def test_reject_from_counterparty_is_an_event():
    s = logged_on()
    (ev,) = s.receive_data(frame(b"3", 2, [(45, 1), (373, 5)]), T0)
    assert isinstance(ev, RejectReceived) and ev.msg[45] == b"1"


def test_logout_handshake_we_start():
    s = logged_on()
    s.logout(T0, "bye")
    (lo,) = sent(s)
    assert lo.msg_type == b"5" and lo[58] == b"bye"
    with pytest.raises(SessionNotReady):
        s.send("D", NOS, T0)
    events = s.receive_data(frame(b"5", 2), T0)
    assert [type(e) for e in events] == [LoggedOut, Disconnect]
    assert sent(s) == []  # the reply is not answered


def test_logout_handshake_they_start_and_timeout():
    s = logged_on()
    events = s.receive_data(frame(b"5", 2, [(58, b"end of day")]), T0)
    assert events == [LoggedOut("end of day"), Disconnect("logout")]
    assert [m.msg_type for m in sent(s)] == [b"5"]
    t = logged_on(logout_timeout=2)
    t.logout(T0)
    assert t.next_deadline() == T0 + 2
    assert [type(e) for e in t.on_timer(T0 + 2)] == [Disconnect]


def test_send_before_logon_raises():
    s = initiator()
    s.connection_made(T0)
    with pytest.raises(SessionNotReady):
        s.send("D", NOS, T0)


def test_reconnect_keeps_sequence_numbers():
    s = logged_on()
    s.send("D", NOS, T0)
    s.connection_lost(T0)
    s.connection_made(T0 + 5)
    (logon,) = sent(s)
    assert logon[34] == b"3"
    s.receive_data(frame(b"A", 2, [(98, 0), (108, 30)], now=T0 + 5), T0 + 5)
    assert s.is_logged_on and s.next_target_seq == 3


def test_logon_with_too_low_seqnum_logs_out():
    s = logged_on()
    s.receive_data(frame(b"D", 2, NOS), T0)
    s.connection_lost(T0)
    s.connection_made(T0)
    sent(s)
    events = s.receive_data(frame(b"A", 1, [(98, 0), (108, 30)]), T0)
    assert [type(e) for e in events] == [Disconnect]
    (lo,) = sent(s)
    assert lo.msg_type == b"5" and b"too low" in lo[58]


def test_logon_with_too_high_seqnum_requests_resend():
    s = initiator()
    s.connection_made(T0)
    sent(s)
    events = s.receive_data(frame(b"A", 5, [(98, 0), (108, 30)]), T0)
    assert events == [LoggedOn(reset=False)]
    (rr,) = sent(s)
    assert rr.msg_type == b"2" and rr[7] == b"1"
    fill = frame(b"4", 1, [(123, b"Y"), (36, 6)], header=[(43, b"Y"), (122, format_utc(T0))])
    s.receive_data(fill, T0)
    assert s.next_target_seq == 6


def test_fix42_reject_leaves_out_reasons_fix42_does_not_have():
    s = FixSession(SessionConfig("CLIENT", "EXCH", begin_string="FIX.4.2"), MemoryStore())
    s.connection_made(T0)
    s.data_to_send()
    s.receive_data(frame(b"A", 1, [(98, 0), (108, 30)], begin=b"FIX.4.2"), T0)
    nos42 = [(11, b"O1"), (21, b"1"), (55, b"X"), (54, b"1"), (60, b"20231114-22:13:20"),
             (40, b"1")]
    (ev,) = s.receive_data(frame(b"D", 2, [*nos42, (11, b"twice")], begin=b"FIX.4.2"), T0)
    assert ev.reason == 13
    (rej,) = sent(s)
    assert 373 not in rej and rej[58] == b"Tag appears more than once" and rej[371] == b"11"
    (ev,) = s.receive_data(frame(b"D", 3, nos42[1:], begin=b"FIX.4.2"), T0)
    (rej,) = sent(s)
    assert rej[373] == b"1" and rej[371] == b"11"
