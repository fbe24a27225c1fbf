"""What only the io_uring loop has: ring entries, provided buffers, its issuer thread."""

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import threading

import pytest
from conftest import run

import aiolowlat
from aiolowlat import UringUnavailableError


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Collect(asyncio.Protocol):
    def __init__(self, expected: int, done: asyncio.Future):
        self.expected, self.done, self.hash, self.n = expected, done, hashlib.sha256(), 0

    def data_received(self, data):
        self.hash.update(data)
        self.n += len(data)
        if self.n >= self.expected and not self.done.done():
            self.done.set_result(self.hash.hexdigest())


class Answered(asyncio.Protocol):
    answer: asyncio.Future

    def data_received(self, data):
        self.answer.set_result(data)


@contextlib.asynccontextmanager
async def _answered_echo(loop):
    """(transport, Answered protocol) connected to a local echo server, both closed after."""
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    tr, proto = await loop.create_connection(
        Answered, "127.0.0.1", server.sockets[0].getsockname()[1]
    )
    try:
        yield tr, proto
    finally:
        tr.close()
        server.close()
        await server.wait_closed()


async def _settle(loop, iterations=20):
    for _ in range(iterations):  # let cancellations and closes complete
        await asyncio.sleep(0)
    await asyncio.sleep(0.02)


def test_ring_entries_and_conns_released_after_close():
    loop = aiolowlat.new_event_loop()
    try:
        async def main():
            await _settle(loop)
            baseline_inflight, baseline_ops = loop._ring.inflight(), set(loop._ring.ops)
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            clients = []
            for _ in range(50):
                done = loop.create_future()
                tr, _ = await loop.create_connection(lambda d=done: Collect(5, d), "127.0.0.1", port)
                tr.write(b"hello")
                clients.append((tr, done))
            for tr, done in clients:
                assert await done == hashlib.sha256(b"hello").hexdigest()
                tr.close()
            server.close()
            await server.wait_closed()
            await _settle(loop)
            assert loop._ring.conns == {}
            assert set(loop._ring.ops) == baseline_ops
            assert loop._ring.inflight() == baseline_inflight

        run(loop, main())
    finally:
        loop.close()


def test_recv_buffer_exhaustion_recovers_without_loss():
    # Two 4 KiB buffers for four concurrent 2 MiB streams: the kernel runs out
    # (ENOBUFS ends the multishot recv) and the core must re-arm without losing bytes.
    loop = aiolowlat.new_event_loop(recv_buffers=2, recv_buffer_size=4096)
    size = 2 * 1024 * 1024
    payload = os.urandom(size)
    try:
        async def main():
            dones = []

            def factory():
                done = loop.create_future()
                dones.append(done)
                return Collect(size, done)

            server = await loop.create_server(factory, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            writers = []
            for _ in range(4):
                tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                writers.append(tr)
            for tr in writers:
                tr.write(payload)
            await asyncio.sleep(0.05)
            digests = await asyncio.gather(*dones)
            assert digests == [hashlib.sha256(payload).hexdigest()] * 4
            for tr in writers:
                tr.close()
            server.close()
            await server.wait_closed()

        run(loop, main(), timeout=30)
        assert loop.ring_stats()["enobufs"] > 0
    finally:
        loop.close()


def test_bursts_beyond_the_buffers_in_the_ring_arrive_whole():
    # The ring holds a few of the pool's buffers (hot in the cache) and takes more
    # when a burst runs it dry: sixteen streams at once, every byte in order.
    loop = aiolowlat.new_event_loop(recv_buffers=512, recv_buffer_size=4096)
    size = 1024 * 1024
    payloads = [os.urandom(size) for _ in range(16)]
    try:
        async def main():
            dones = []

            def factory():
                dones.append(loop.create_future())
                return Collect(size, dones[-1])

            server = await loop.create_server(factory, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            writers = []
            for _ in payloads:
                tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
                writers.append(tr)
            await asyncio.sleep(0.01)
            for tr, payload in zip(writers, payloads):
                tr.write(payload)
            digests = await asyncio.gather(*dones)
            assert sorted(digests) == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
            for tr in writers:
                tr.close()
            server.close()
            await server.wait_closed()

        run(loop, main(), timeout=30)
    finally:
        loop.close()


def test_one_timer_op_serves_many_waits():
    # Waits toward the same deadline share one armed IORING_OP_TIMEOUT: no timer set-up
    # per io_uring_enter. Bringing the deadline forward moves it; it still fires.
    loop = aiolowlat.new_event_loop()
    try:
        async def main():
            loop.call_later(3600, lambda: None)
            await _settle(loop)
            baseline_inflight = loop._ring.inflight()
            async with _answered_echo(loop) as (tr, proto):
                before = loop._ring.stats()
                for _ in range(200):  # a blocking wait per round trip, toward the hour-away timer
                    proto.answer = echoed = loop.create_future()
                    tr.write(b"x")
                    # wait_for's own timer each time is a later deadline: the armed op stays
                    assert await asyncio.wait_for(echoed, 5) == b"x"
                after = loop._ring.stats()
                t0 = loop.time()
                await asyncio.sleep(0.02)  # earlier than the armed hour: the timer moves
                slept = loop.time() - t0
            await _settle(loop)
            return before, after, loop._ring.stats(), slept, baseline_inflight

        before, after, end, slept, baseline_inflight = run(loop, main())
        assert after["waits"] - before["waits"] >= 200
        assert after["timer_arms"] - before["timer_arms"] <= 2
        assert end["timer_arms"] > after["timer_arms"]
        assert 0.018 <= slept < 1.0
        assert loop._ring.inflight() == baseline_inflight
    finally:
        loop.close()


def test_a_loop_running_callbacks_polls_without_a_syscall_and_still_sees_io():
    # With callbacks ready, each iteration polls the ring with a zero timeout. The kernel
    # flags deferred task work (IORING_SQ_TASKRUN): with none, nothing to submit and an
    # empty CQ, the poll makes no io_uring_enter. A receive completing meanwhile is
    # flagged, so the spinning loop still sees it.
    loop = aiolowlat.new_event_loop()
    try:
        async def main():
            async with _answered_echo(loop) as (tr, proto):
                proto.answer = echoed = loop.create_future()
                tr.write(b"x")
                for _ in range(100_000):  # no blocking wait in here: only zero-timeout polls
                    if echoed.done():
                        break
                    await asyncio.sleep(0)
                before = loop._ring.stats()
                for _ in range(2000):
                    await asyncio.sleep(0)
                after = loop._ring.stats()
            return echoed, before, after

        echoed, before, after = run(loop, main())
        assert echoed.done() and echoed.result() == b"x"
        assert after["polls_skipped"] - before["polls_skipped"] >= 1900
    finally:
        loop.close()


def test_loop_made_in_one_thread_runs_in_another():
    loop = aiolowlat.new_event_loop()  # the ring is claimed by the first thread that waits
    result = []

    def worker():
        async def main():
            await asyncio.sleep(0.01)
            return await loop.run_in_executor(None, sum, [1, 2, 3])

        result.append(loop.run_until_complete(main()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    loop.close()
    assert result == [6]


def test_loop_refuses_a_second_issuer_thread():
    loop = aiolowlat.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0.001))
        errors = []

        def worker():
            coro = asyncio.sleep(0.001)
            try:
                loop.run_until_complete(coro)
            except RuntimeError as exc:
                errors.append(str(exc))
                coro.close()  # never started: the loop refused to run

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(10)
        assert errors and "only on the thread that first ran it" in errors[0]
    finally:
        loop.close()


def test_bad_ring_options_are_value_errors():
    with pytest.raises(ValueError, match="power of two"):
        aiolowlat.new_event_loop(recv_buffers=1000)


def test_disabled_io_uring_names_the_fix():
    # Real kernel switch (root here, as in CI): io_uring_disabled=2 makes setup fail with EPERM.
    knob = "/proc/sys/kernel/io_uring_disabled"
    with open(knob) as f:
        saved = f.read().strip()
    code = "import aiolowlat; aiolowlat.new_event_loop()"
    try:
        with open(knob, "w") as f:
            f.write("2")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=30)
    finally:
        with open(knob, "w") as f:
            f.write(saved)
    assert proc.returncode != 0
    assert UringUnavailableError.__name__ in proc.stderr
    assert "kernel.io_uring_disabled" in proc.stderr
