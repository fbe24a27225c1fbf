"""Off-loop logging: records rendered by the writer thread, a blocked writer never blocks
the caller, overflow is counted and reported, configuration is restored."""

import asyncio
import io
import json
import logging
import threading
import time

import pytest
import structlog
from conftest import run

from aiolowlat.log import LogWriter, setup_logging


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_records_carry_level_time_context_and_fields():
    stream = io.StringIO()
    with setup_logging("json", stream=stream, level="info") as writer:
        log = structlog.get_logger().bind(feed="itch")
        structlog.contextvars.bind_contextvars(session="S1")
        try:
            log.info("gap", expected=10, got=12, obj=object())
            log.debug("filtered out")
        finally:
            structlog.contextvars.clear_contextvars()
        assert writer.flush()
        assert writer.written == 1
    [rec] = lines(stream)
    assert rec["event"] == "gap" and rec["level"] == "info"
    assert (rec["feed"], rec["session"], rec["expected"], rec["got"]) == ("itch", "S1", 10, 12)
    assert rec["obj"].startswith("<object object")  # unknown types rendered with repr
    assert rec["timestamp"].endswith("+00:00") and "T" in rec["timestamp"]


def test_console_renderer():
    stream = io.StringIO()
    with setup_logging("console", stream=stream) as writer:
        structlog.get_logger().warning("slow consumer", lag_ms=12)
        assert writer.flush()
    out = stream.getvalue()
    assert "slow consumer" in out and "lag_ms=12" in out and "warning" in out


def test_exceptions_are_formatted_on_the_calling_thread():
    stream = io.StringIO()
    with setup_logging("json", stream=stream) as writer:
        try:
            raise KeyError("order 7")
        except KeyError:
            structlog.get_logger().exception("reject")
        assert writer.flush()
    [rec] = lines(stream)
    assert rec["level"] == "error" and "KeyError: 'order 7'" in rec["exception"]


def test_stdlib_logging_is_bridged_and_restored():
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    before = structlog.get_config()
    with setup_logging("json", stream=stream, level="warning") as writer:
        logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "cb", 0.2)
        logging.getLogger("asyncio").info("below the level")
        assert writer.flush()
    [rec] = lines(stream)
    assert rec == {**rec, "event": "Executing cb took 0.200 seconds", "level": "warning",
                   "logger": "asyncio"}
    assert root.handlers == handlers and root.level == level
    assert structlog.get_config() == before


class BlockedStream(io.StringIO):
    """A stream whose writes wait until released: a stuck disk or terminal. It notes
    which threads wrote."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.writers = set()

    def write(self, text):
        self.writers.add(threading.current_thread().name)
        self.release.wait(10)
        return super().write(text)


def test_blocked_output_never_blocks_the_caller_and_drops_are_counted():
    stream = BlockedStream()
    with setup_logging("json", stream=stream, queue_size=100) as writer:
        log = structlog.get_logger()
        log.info("first")  # the writer takes it and blocks in write()
        deadline = time.monotonic() + 5
        while writer._queue and time.monotonic() < deadline:
            time.sleep(0.005)
        for i in range(1000):
            log.info("tick", i=i)
        # All calls returned while the only write so far is still stuck.
        assert not stream.release.is_set() and stream.getvalue() == ""
        assert writer.dropped == 900  # 100 queued, the rest counted
        stream.release.set()
        assert writer.flush()
    assert stream.writers == {"aiolowlat-log"}
    records = lines(stream)
    ticks = [r["i"] for r in records if r["event"] == "tick"]
    assert ticks == list(range(100))
    [report] = [r for r in records if r["event"] == "log.dropped"]
    assert (report["count"], report["total"], report["level"]) == (900, 900, "warning")


def test_logging_from_coroutines_on_every_loop(loop):
    stream = io.StringIO()

    async def main():
        log = structlog.get_logger()
        for i in range(50):
            log.info("tick", i=i)
            await asyncio.sleep(0)

    with setup_logging("json", stream=stream) as writer:
        run(loop, main())
        assert writer.flush()
    assert [r["i"] for r in lines(stream)] == list(range(50))


def test_a_broken_stream_is_counted_not_raised():
    stream = io.StringIO()
    stream.close()
    writer = LogWriter("json", stream=stream)
    try:
        writer.put({"event": "lost", "level": "info"})
        assert writer.flush()
        assert (writer.written, writer.write_errors) == (0, 1)
    finally:
        writer.close()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="renderer"):
        LogWriter("xml")
    with pytest.raises(ValueError, match="level"):
        setup_logging(level="verbose")
    with pytest.raises(ValueError, match="queue_size"):
        LogWriter(queue_size=0)
