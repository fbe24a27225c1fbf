"""FIX file store: format round trip, torn records, locking; a SIGKILLed initiator resumes
with no lost and no duplicated sequence numbers."""

import asyncio
import os
import signal
import sys

import pytest

from aiolowlat.protocols.fix.engine import FixAcceptor
from aiolowlat.protocols.fix.session import AppMessage, SessionConfig
from aiolowlat.protocols.fix.settings import SessionSettings
from aiolowlat.protocols.fix.store import FileStore, StoreError


def test_file_store_round_trip(tmp_path):
    path = tmp_path / "s.store"
    store = FileStore(path, fsync="never")
    store.save_sent(1, b"one")
    store.save_sent(2, b"two\x01with SOH")
    store.set_next_target(7)
    store.close()
    again = FileStore(path)
    assert again.next_sender_seq == 3 and again.next_target_seq == 7
    assert again.get_sent(1, 5) == [(1, b"one"), (2, b"two\x01with SOH")]
    again.set_next_sender(10)
    again.close()
    assert FileStore(path).next_sender_seq == 10


def test_torn_last_record_is_dropped_and_truncated(tmp_path):
    path = tmp_path / "s.store"
    store = FileStore(path, fsync="never")
    store.save_sent(1, b"first")
    store.save_sent(2, b"second")
    store.close()
    full = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(full - 3)  # a crash in the middle of writing record 2
    again = FileStore(path)
    assert again.next_sender_seq == 2 and again.get_sent(1, 9) == [(1, b"first")]
    assert again.truncated_bytes > 0
    again.save_sent(2, b"second again")
    again.close()
    assert FileStore(path).get_sent(2, 2) == [(2, b"second again")]


def test_corrupt_record_ends_the_log(tmp_path):
    path = tmp_path / "s.store"
    store = FileStore(path, fsync="never")
    store.save_sent(1, b"aaaa")
    store.save_sent(2, b"bbbb")
    store.close()
    data = bytearray(path.read_bytes())
    data[data.rindex(b"bbbb")] ^= 0xFF  # CRC no longer matches
    path.write_bytes(bytes(data))
    assert FileStore(path).next_sender_seq == 2


def test_reset_starts_a_new_file_and_not_a_store_is_refused(tmp_path):
    path = tmp_path / "s.store"
    store = FileStore(path)
    store.save_sent(1, b"x")
    store.reset(now=123.0)
    assert (store.next_sender_seq, store.next_target_seq) == (1, 1)
    store.close()
    again = FileStore(path)
    assert again.creation_time == 123.0 and again.get_sent(1, 9) == []
    again.close()
    bad = tmp_path / "bad.store"
    bad.write_bytes(b"hello")
    with pytest.raises(StoreError, match="not a FIX store"):
        FileStore(bad)


def test_one_process_per_store(tmp_path):
    path = tmp_path / "s.store"
    first = FileStore(path)
    code = f"from aiolowlat.protocols.fix.store import FileStore; FileStore({str(path)!r})"
    proc = asyncio.run(_run_python(code))
    assert proc[0] != 0 and b"in use by another process" in proc[1]
    first.close()


async def _run_python(code):
    p = await asyncio.create_subprocess_exec(sys.executable, "-c", code,
                                             stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, err


def test_fsync_policy_values(tmp_path):
    for policy in ("always", "never", 0.5):
        FileStore(tmp_path / f"{policy}.store", fsync=policy).close()
    with pytest.raises(ValueError):
        FileStore(tmp_path / "x.store", fsync="sometimes")


CLIENT_CFG = """\
[DEFAULT]
HeartBtInt=30
ReconnectInterval=0.1
FileStoreSync=never
[SESSION]
ConnectionType=initiator
BeginString=FIX.4.4
SenderCompID=CRASHY
TargetCompID=EXCH
SocketConnectHost=127.0.0.1
SocketConnectPort={port}
FileStorePath={store}
"""


def test_sigkill_mid_stream_then_resume_without_lost_or_duplicate_seqnums(tmp_path):
    async def main():
        seqs: list[tuple[int, bool]] = []

        def watch(session):
            receive = session.core.receive_data

            def recording(data, now):
                events = receive(data, now)
                seqs.extend((e.msg.seq_num, e.poss_dup) for e in events
                            if type(e) is AppMessage)
                return events

            session.core.receive_data = recording

        settings = SessionSettings(SessionConfig("EXCH", "CRASHY", initiator=False),
                                   connection_type="acceptor", store_path=str(tmp_path / "ex"))
        acceptor = FixAcceptor([settings], on_session=watch, on_message=lambda s, m: None)
        await acceptor.start("127.0.0.1", 0)
        (ex_session,) = acceptor.sessions.values()
        cfg = tmp_path / "client.cfg"
        cfg.write_text(CLIENT_CFG.format(port=acceptor.address[1], store=tmp_path / "cl"))
        cmd = [sys.executable, "-m", "aiolowlat.fix", "initiator", "--config", str(cfg),
               "--orders-per-second", "400", "--seconds", "30"]

        async def wait_for_count(n):
            for _ in range(1500):
                if len(seqs) >= n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"only {len(seqs)} messages arrived, wanted {n}")

        try:
            first = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
            await wait_for_count(150)
            first.send_signal(signal.SIGKILL)  # mid-stream: orders are flowing
            assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
            await ex_session.wait_disconnected(10)
            killed_at = len(seqs)
            second = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
            await wait_for_count(killed_at + 150)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 15) == 0
            await ex_session.wait_disconnected(10)
        finally:
            for p in ("first", "second"):
                proc = locals().get(p)
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await acceptor.stop()
        numbers = [s for s, _ in seqs]
        # Every application message delivered exactly once, in order, with no hole: the
        # session layer and the store together neither lose nor reuse a number.
        assert len(numbers) == len(set(numbers))
        assert numbers == sorted(numbers)
        admin = set(range(numbers[0], numbers[-1] + 1)) - set(numbers)
        assert len(admin) <= 6, admin  # logons and logouts only, nothing else missing
        assert ex_session.last_logout_text == ""  # never "MsgSeqNum too low"
        assert ex_session.rejects_sent == []
        client_store = FileStore(tmp_path / "cl" / "FIX.4.4-CRASHY-EXCH.store")
        server_store = FileStore(tmp_path / "ex" / "FIX.4.4-EXCH-CRASHY.store")
        # Both sides agree where the session stands after the restart and a clean logout.
        assert server_store.next_target_seq == client_store.next_sender_seq
        assert client_store.next_target_seq == server_store.next_sender_seq
        sent_app = [s for s, f in client_store.get_sent(1, 10**9) if b"\x0135=D\x01" in f]
        assert sent_app == numbers

    asyncio.run(asyncio.wait_for(main(), 60))


def test_store_file_is_written_before_send(tmp_path):
    """A frame is in the file as soon as send() returns, before any write reaches a socket."""
    from aiolowlat.protocols.fix.session import FixSession

    store = FileStore(tmp_path / "s.store", fsync="never")
    s = FixSession(SessionConfig("A", "B"), store)
    s.connection_made(1_700_000_000.0)
    size_after_logon = os.path.getsize(tmp_path / "s.store")
    assert size_after_logon > 0 and store.get_sent(1, 1)[0][1] == s.data_to_send()
    store.close()


def test_stored_but_unsent_message_is_replayed_after_restart(tmp_path):
    """Crash between store and socket: the peer sees a gap, asks, and gets it as PossDup."""
    from aiolowlat.protocols.fix.codec import FrameReader, decode, encode, format_utc
    from aiolowlat.protocols.fix.session import FixSession

    t0 = 1_700_000_000.0
    path = tmp_path / "c.store"
    cfg = SessionConfig("CLIENT", "EXCH")

    def peer(msg_type, seq, fields=()):
        head = [(49, b"EXCH"), (56, b"CLIENT"), (34, seq), (52, format_utc(t0))]
        return encode(b"FIX.4.4", msg_type, head + list(fields))

    def out(session):
        reader = FrameReader()
        reader.feed(session.data_to_send())
        return [decode(f) for f in reader.frames()]

    s = FixSession(cfg, FileStore(path, fsync="never"))
    s.connection_made(t0)
    out(s)
    s.receive_data(peer(b"A", 1, [(98, 0), (108, 30)]), t0)
    nos = [(11, b"O1"), (55, b"X"), (54, b"1"), (60, format_utc(t0)), (38, 5), (40, b"1")]
    s.send("D", nos, t0)  # stored as 2; the process dies before the bytes leave
    s.store.close()

    r = FixSession(cfg, FileStore(path, fsync="never"))
    r.connection_made(t0 + 1)
    (logon,) = out(r)
    assert logon[34] == b"3"  # 2 is taken: never reused
    r.receive_data(peer(b"A", 2, [(98, 0), (108, 30)]) + peer(b"2", 3, [(7, 2), (16, 0)]),
                   t0 + 1)
    (replay, fill) = out(r)
    assert replay.msg_type == b"D" and replay[34] == b"2" and replay[43] == b"Y"
    assert replay[122] == format_utc(t0) and replay[11] == b"O1"
    assert fill.msg_type == b"4" and fill[34] == b"3" and fill[36] == b"4"
    r.store.close()


ACCEPTOR_CFG = """\
[DEFAULT]
HeartBtInt=30
FileStoreSync=never
[SESSION]
ConnectionType=acceptor
BeginString=FIX.4.4
SenderCompID=EXCH
TargetCompID=CLIENT
SocketAcceptPort={port}
FileStorePath={store}
"""


def test_sigkilled_acceptor_restarts_and_nothing_sent_is_lost(tmp_path):
    """The acceptor process dies mid-stream; after its restart, it asks for what it missed
    and every order the initiator stored reaches it."""
    import json
    import socket
    import subprocess
    import threading

    from aiolowlat.protocols.fix.engine import FixInitiator
    from aiolowlat.protocols.fix.messages import NewOrderSingle
    from aiolowlat.protocols.fix.session import SessionNotReady

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "acceptor.cfg"
    cfg.write_text(ACCEPTOR_CFG.format(port=port, store=tmp_path / "ex"))
    cmd = [sys.executable, "-m", "aiolowlat.fix", "acceptor", "--config", str(cfg),
           "--seconds", "40"]
    printed: list[str] = []

    def start_acceptor():
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

        def read():
            for line in proc.stdout:
                printed.append(json.loads(line)["cl_ord_id"])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        return proc, reader

    async def main():
        settings = SessionSettings(SessionConfig("CLIENT", "EXCH"), host="127.0.0.1", port=port,
                                   store_path=str(tmp_path / "cl"), store_sync="never",
                                   reconnect_interval=0.05, max_reconnect_interval=0.2)
        initiator = FixInitiator(settings)
        session = await initiator.start()
        sent: list[str] = []
        stop = asyncio.Event()

        async def sender():
            i = 0
            while not stop.is_set():
                try:
                    await session.send(NewOrderSingle(cl_ord_id=f"O{i}", symbol="AAPL", side="1",
                                                      order_qty=1, price=1.0), timeout=10)
                except (SessionNotReady, ConnectionError):
                    await asyncio.sleep(0.01)
                    continue
                sent.append(f"O{i}")
                i += 1
                await asyncio.sleep(0.002)

        async def wait_printed(n):
            for _ in range(2000):
                if len(printed) >= n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"acceptor printed {len(printed)}, wanted {n}")

        first, _ = start_acceptor()
        second = reader2 = None
        task = asyncio.get_running_loop().create_task(sender())
        try:
            await wait_printed(150)
            first.kill()
            await asyncio.get_running_loop().run_in_executor(None, first.wait)
            await session.wait_disconnected(10)
            second, reader2 = start_acceptor()
            await wait_printed(len(printed) + 150)
            stop.set()
            await task
            for _ in range(1000):  # the resend after the restart fills what the kill lost
                if set(sent) <= set(printed):
                    break
                await asyncio.sleep(0.01)
            await initiator.stop()
            second.terminate()
            assert await asyncio.get_running_loop().run_in_executor(None, second.wait) == 0
            reader2.join(10)
        finally:
            stop.set()
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
            await initiator.stop()
        missing = set(sent) - set(printed)
        assert not missing, f"{len(missing)} orders lost: {sorted(missing)[:10]}"
        # At-least-once: only orders the dead process had taken but not yet recorded as
        # received can come twice (as PossDup resends).
        assert len(printed) - len(set(printed)) <= 20
        client = FileStore(tmp_path / "cl" / "FIX.4.4-CLIENT-EXCH.store")
        server = FileStore(tmp_path / "ex" / "FIX.4.4-EXCH-CLIENT.store")
        assert server.next_target_seq == client.next_sender_seq
        assert client.next_target_seq == server.next_sender_seq

    asyncio.run(asyncio.wait_for(main(), 90))
