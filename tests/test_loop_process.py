"""Subprocesses and Unix signals."""

import asyncio
import os
import signal
import sys
import threading
import time

import pytest
from conftest import run


def test_subprocess_exec_stdin_stdout_exit_code(loop):
    code = "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(3)"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"piped through a child\n")
        return out, proc.returncode

    assert run(loop, main()) == (b"PIPED THROUGH A CHILD\n", 3)


def test_subprocess_shell(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            'read line; echo "got $line"; echo oops >&2; exit 7',
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(b"hello\n")
        return out, err, proc.returncode

    assert run(loop, main()) == (b"got hello\n", b"oops\n", 7)


def test_subprocess_large_output(loop):
    # More than a pipe buffer, so the child blocks unless the loop keeps reading.
    code = "import sys; sys.stdout.buffer.write(b'z' * (4 << 20))"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return len(out), out.count(b"z"), proc.returncode

    assert run(loop, main()) == (4 << 20, 4 << 20, 0)


def test_subprocess_kill_and_wait(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        assert proc.returncode is None
        proc.kill()
        return await proc.wait()

    assert run(loop, main()) == -signal.SIGKILL


def test_subprocess_exec_protocol(loop):
    class Child(asyncio.SubprocessProtocol):
        def __init__(self):
            self.out = bytearray()
            self.stdout_closed = loop.create_future()
            self.exited = loop.create_future()

        def pipe_data_received(self, fd, data):
            assert fd == 1
            self.out += data

        def pipe_connection_lost(self, fd, exc):
            self.stdout_closed.set_result(fd)

        def process_exited(self):
            self.exited.set_result(None)

    async def main():
        tr, proto = await loop.subprocess_exec(
            Child,
            sys.executable,
            "-c",
            "print('from child')",
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert tr.get_pid() > 0
        assert await proto.stdout_closed == 1
        await proto.exited
        code = tr.get_returncode()
        tr.close()
        return bytes(proto.out), code

    assert run(loop, main()) == (b"from child\n", 0)


def test_subprocess_missing_program(loop):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")

    run(loop, main())


@pytest.fixture
def sigusr1_guard():
    # If a loop fails to install its handler, SIGUSR1's default action would
    # kill the whole pytest process: catch stray signals in Python instead.
    stray = []
    old = signal.signal(signal.SIGUSR1, lambda *a: stray.append(a))
    yield stray
    signal.signal(signal.SIGUSR1, old)


def test_add_and_remove_signal_handler(loop, sigusr1_guard):
    async def main():
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, lambda *a: got.set_result(a), "arg")
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await got == ("arg",)
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False

    run(loop, main())
    assert sigusr1_guard == []  # the loop, not the fallback, got the signal


def test_signal_handler_called_for_each_signal(loop, sigusr1_guard):
    async def main():
        calls = asyncio.Queue()
        loop.add_signal_handler(signal.SIGUSR1, calls.put_nowait, "called")
        for _ in range(3):
            # One at a time: pending signals of one kind coalesce into one.
            os.kill(os.getpid(), signal.SIGUSR1)
            assert await calls.get() == "called"
        loop.remove_signal_handler(signal.SIGUSR1)

    run(loop, main())
    assert sigusr1_guard == []


@pytest.mark.xfail_asyncio(
    "asyncio's loop sets no signal wakeup fd of its own: a signal another thread takes "
    "waits for the loop's next event"
)
def test_signal_taken_by_another_thread_wakes_the_loop(loop, sigusr1_guard):
    # asyncio.Runner's Ctrl-C is such a Python-level handler: it must run while the loop
    # sleeps, not at its next event (the 2 s timeout here). uvloop sets a wakeup fd for it.
    sent_at = []

    def send_from_another_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        time.sleep(0.2)  # the loop is asleep in its wait by then
        sent_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGUSR1)

    async def main():
        handled = loop.create_future()
        signal.signal(
            signal.SIGUSR1, lambda *a: handled.done() or handled.set_result(time.monotonic())
        )
        sender = threading.Thread(target=send_from_another_thread)
        # Blocked here, the process-wide signal goes to the sender thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            sender.start()
            return await asyncio.wait_for(handled, 2)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
            sender.join()

    handled_at = run(loop, main())
    # Woken: at once. Not woken: only when the 2 s timeout wakes the loop, 1.8 s later.
    assert handled_at - sent_at[0] < 1.0
    assert signal.set_wakeup_fd(-1) == -1  # the loop put back what it found


def test_add_signal_handler_rejects_bad_input(loop):
    async def main():
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(signal.SIGKILL, lambda: None)  # cannot be caught

        async def coro():
            pass

        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR1, coro)

    run(loop, main())
