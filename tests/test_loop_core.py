"""Callbacks, timers, threads, executors, exception handling and loop lifecycle."""

import asyncio
import concurrent.futures
import contextvars
import socket
import threading
import time

import pytest
from conftest import run

import aiolowlat


def test_call_soon_fifo_order(loop):
    order = []

    async def main():
        done = loop.create_future()
        for i in range(5):
            loop.call_soon(order.append, i)
        loop.call_soon(done.set_result, None)
        await done

    run(loop, main())
    assert order == [0, 1, 2, 3, 4]


def test_call_soon_handles_contexts_cancel_debug_and_close(loop):
    # aiolowlat's call_soon is in C; it must be asyncio's in every visible way.
    var = contextvars.ContextVar("var", default="unset")
    seen = []
    var.set("caller")
    handle = loop.call_soon(seen.append, "args")
    assert type(handle).__name__ == "Handle" and not handle.cancelled()  # uvloop's: its own
    loop.call_soon(lambda: seen.append(var.get()))  # a copy of the caller's context
    other = contextvars.Context()
    other.run(var.set, "other")
    loop.call_soon(lambda: seen.append(var.get()), context=other)
    loop.call_soon(lambda: seen.append(var.get()), context=None)
    loop.call_soon(seen.append, "cancelled").cancel()
    with pytest.raises(TypeError):
        loop.call_soon(seen.append, 1, bogus=True)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["args", "caller", "other", "caller"]
    loop.set_debug(True)
    traced = loop.call_soon(seen.append, "debug")
    assert traced._source_traceback  # debug mode records where it was scheduled
    traced.cancel()
    loop.set_debug(False)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(seen.append, "late")


def test_call_later_and_call_at_check_contexts_debug_and_close(loop):
    # aiolowlat's call_later and call_at are in C; they must be asyncio's in every visible way.
    var = contextvars.ContextVar("var", default="unset")
    seen = []
    var.set("caller")
    timer = loop.call_later(0.01, lambda: seen.append(var.get()))
    assert type(timer).__name__ == "TimerHandle" and not timer.cancelled()
    assert timer.when() == pytest.approx(loop.time() + 0.01, abs=0.005)
    other = contextvars.Context()
    other.run(var.set, "other")
    loop.call_at(loop.time() + 0.005, lambda: seen.append(var.get()), context=other)
    with pytest.raises(TypeError):
        loop.call_later(None, seen.append)
    with pytest.raises(TypeError):
        loop.call_at(None, seen.append)
    with pytest.raises(TypeError):
        loop.call_later("soon", seen.append)
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert seen == ["other", "caller"]
    loop.set_debug(True)
    traced = loop.call_later(60, seen.append, "debug")
    assert traced._source_traceback
    traced.cancel()
    loop.set_debug(False)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(0, seen.append)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_at(0, seen.append)


def test_call_later_and_call_at_order_and_cancel(loop):
    order = []

    async def main():
        done = loop.create_future()
        loop.call_later(0.03, order.append, "later-30ms")
        loop.call_at(loop.time() + 0.01, order.append, "at-10ms")
        loop.call_later(0, order.append, "later-0")
        cancelled = loop.call_later(0.02, order.append, "cancelled")
        loop.call_later(0.05, done.set_result, None)
        cancelled.cancel()
        assert cancelled.cancelled()
        await done

    run(loop, main())
    assert order == ["later-0", "at-10ms", "later-30ms"]


def test_timer_handle_when(loop):
    async def main():
        when = loop.time() + 100
        handle = loop.call_at(when, lambda: None)
        assert handle.when() == pytest.approx(when, abs=1e-3)
        handle.cancel()

    run(loop, main())


def test_call_soon_threadsafe_from_other_thread(loop):
    async def main():
        fut = loop.create_future()

        def callback(sender):
            fut.set_result((sender, threading.get_ident()))

        t = threading.Thread(
            target=lambda: loop.call_soon_threadsafe(callback, threading.get_ident())
        )
        t.start()
        sender, ran_in = await fut
        t.join()
        return sender, ran_in

    sender, ran_in = run(loop, main())
    # The callback must run in the loop's thread, not the caller's.
    assert ran_in == threading.get_ident()
    assert sender != ran_in


def test_call_soon_threadsafe_wakes_blocked_loop(loop):
    # The loop is blocked waiting for a timer an hour away; only the wakeup
    # from the other thread can get the future resolved.
    async def main():
        fut = loop.create_future()
        loop.call_later(3600, fut.set_result, "timer")
        t = threading.Timer(0.05, loop.call_soon_threadsafe, (fut.set_result, "thread"))
        t.start()
        try:
            return await fut
        finally:
            t.join()

    assert run(loop, main(), timeout=5) == "thread"


def test_timer_brought_forward_while_waiting_fires_on_time(loop):
    # The loop sleeps toward a timer an hour away; a thread then asks for one 20 ms out.
    async def main():
        loop.call_later(3600, lambda: None)
        fired = loop.create_future()

        def bring_forward():
            loop.call_later(0.02, lambda: fired.set_result(loop.time()))
            return loop.time()

        asked = loop.create_future()
        t = threading.Timer(
            0.05, loop.call_soon_threadsafe, (lambda: asked.set_result(bring_forward()),)
        )
        t.start()
        try:
            return await asked, await fired
        finally:
            t.join()

    asked, fired = run(loop, main(), timeout=5)
    assert 0.02 - 0.002 <= fired - asked < 1.0


def test_timer_pushed_back_does_not_fire_early(loop):
    # The head timer is cancelled while the loop waits for it: the next one still
    # runs no earlier than it was asked to (the loop may wake early, not run early).
    async def main():
        t0 = loop.time()
        head = loop.call_later(0.03, lambda: None)
        fired = loop.create_future()
        loop.call_later(0.08, lambda: fired.set_result(loop.time()))
        t = threading.Timer(0.01, loop.call_soon_threadsafe, (head.cancel,))
        t.start()
        try:
            return await fired - t0
        finally:
            t.join()

    elapsed = run(loop, main(), timeout=5)
    assert 0.08 - 0.002 <= elapsed < 1.0


def test_run_in_executor(loop):
    def work(x):
        return x * 2, threading.get_ident()

    def fail():
        raise ValueError("boom")

    async def main():
        result, tid = await loop.run_in_executor(None, work, 21)
        assert result == 42 and tid != threading.get_ident()
        with pytest.raises(ValueError, match="boom"):
            await loop.run_in_executor(None, fail)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert (await loop.run_in_executor(pool, work, 1))[0] == 2

    run(loop, main())


def test_shutdown_default_executor_waits_for_jobs(loop):
    finished = []

    def job():
        time.sleep(0.05)
        finished.append(True)

    async def main():
        fut = loop.run_in_executor(None, job)
        await loop.shutdown_default_executor()
        assert finished == [True]
        await fut
        with pytest.raises(RuntimeError):
            await loop.run_in_executor(None, job)

    run(loop, main())


def test_shutdown_asyncgens_finalizes_generators(loop):
    finalized = []

    async def gen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append(True)

    async def main():
        g = gen()
        assert await g.__anext__() == 1
        return g

    g = run(loop, main())  # keep a reference: only shutdown_asyncgens may finalize it
    assert finalized == []
    run(loop, loop.shutdown_asyncgens())
    assert finalized == [True]
    del g


def test_exception_handler_gets_callback_exception(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    assert loop.get_exception_handler() is not None

    def bad():
        raise ZeroDivisionError("in callback")

    async def main():
        loop.call_soon(bad)
        await asyncio.sleep(0.01)

    run(loop, main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)


def test_debug_mode(loop):
    loop.set_debug(True)
    assert loop.get_debug()

    async def main():
        errors = []

        def from_thread():
            try:
                loop.call_soon(lambda: None)
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=from_thread)
        t.start()
        await loop.run_in_executor(None, t.join)
        return errors

    # Debug mode makes non-threadsafe calls from other threads raise.
    errors = run(loop, main())
    assert len(errors) == 1
    loop.set_debug(False)
    assert not loop.get_debug()


def test_getaddrinfo_getnameinfo(loop):
    async def main():
        infos = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
        addrs = {info[4][0] for info in infos}
        assert addrs & {"127.0.0.1", "::1"}
        assert all(info[4][1] == 80 for info in infos)
        infos = await loop.getaddrinfo(
            "127.0.0.1", 8080, family=socket.AF_INET, type=socket.SOCK_DGRAM
        )
        assert infos[0][:2] == (socket.AF_INET, socket.SOCK_DGRAM)
        assert infos[0][4] == ("127.0.0.1", 8080)
        flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        assert await loop.getnameinfo(("127.0.0.1", 80), flags) == ("127.0.0.1", "80")
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("no-such-host.invalid", 80)

    run(loop, main())


def test_close_semantics(loop):
    async def main():
        with pytest.raises(RuntimeError):
            loop.close()  # cannot close a running loop
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            loop.run_until_complete(coro)  # already running
        coro.close()

    run(loop, main())
    assert loop.is_running() is False
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    with pytest.raises(RuntimeError):
        loop.call_soon(lambda: None)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()


def test_close_loop_with_operations_in_flight(loop):
    a, b = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    for s in (a, b, listener):
        s.setblocking(False)
    fired = []

    async def main():
        tasks = [
            loop.create_task(loop.sock_recv(a, 100)),
            loop.create_task(loop.sock_accept(listener)),
            loop.create_task(asyncio.sleep(3600)),
        ]
        loop.call_later(3600, fired.append, True)
        await asyncio.sleep(0.01)
        return tasks

    tasks = run(loop, main())
    loop.close()  # must neither raise nor hang with I/O and timers pending
    assert loop.is_closed()
    assert not any(t.done() for t in tasks) and fired == []
    # The loop must have released its claims on our fds: they still work.
    b.send(b"after close")
    assert a.recv(100) == b"after close"
    for s in (a, b, listener):
        s.close()
    for t in tasks:  # silence "Task was destroyed but it is pending!"
        t._log_destroy_pending = False


def test_aiolowlat_run():
    async def main():
        lp = asyncio.get_running_loop()
        return isinstance(lp, aiolowlat.Loop), lp.get_debug()

    assert aiolowlat.run(main()) == (True, False)
    assert aiolowlat.run(main(), debug=True) == (True, True)
    assert aiolowlat.run(main(), busy_poll=True)[0] is True


def test_aiolowlat_install_policy():
    old = asyncio.get_event_loop_policy()
    try:
        aiolowlat.install()
        assert isinstance(asyncio.get_event_loop_policy(), aiolowlat.EventLoopPolicy)
        lp = asyncio.new_event_loop()
        try:
            assert isinstance(lp, aiolowlat.Loop)
        finally:
            lp.close()
    finally:
        asyncio.set_event_loop_policy(old)
