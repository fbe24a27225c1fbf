"""structlog set-up whose log calls never block the hot path.

A log call on the loop thread does only cheap work (level filter, context merge, a
nanosecond timestamp) and appends the event dict to a bounded deque; a writer thread
renders it (JSON or console) and writes it, in short slices so the loop thread gets
the GIL back quickly. When the deque is full the record is dropped and counted, and
the writer reports the count as a ``log.dropped`` record. Hot code should keep a
bound logger (``structlog.get_logger().bind()``): the lazy proxy rebuilds it per call.
"""

from __future__ import annotations

import collections
import datetime
import logging
import sys
import threading
import time
from typing import IO, Literal

import msgspec
import structlog

__all__ = ["LogWriter", "setup_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


_SLICE, _PAUSE = 16, 20e-6  # records rendered per slice, pause between slices (s)


def _stamp(_logger, _method, event_dict):
    event_dict["timestamp"] = time.time_ns()  # formatted by the writer thread
    return event_dict


class LogWriter:
    """The writer thread and its bounded queue; ``dropped``/``written`` count records."""

    def __init__(self, renderer: Literal["json", "console"] = "json", *,
                 stream: IO[str] | None = None, queue_size: int = 10_000,
                 flush_interval: float = 0.02):
        if renderer not in ("json", "console"):
            raise ValueError(f"renderer must be 'json' or 'console', not {renderer!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size}")
        self.renderer = renderer
        self.stream = stream if stream is not None else sys.stderr
        self.queue_size = queue_size
        self.dropped = self.written = self.write_errors = 0
        self._reported_drops = 0
        self._queue: collections.deque = collections.deque()
        self._interval = flush_interval
        self._wake = threading.Event()
        self._restore = None  # set by setup_logging
        self._closing = False
        self._render = self._make_renderer()
        self._thread = threading.Thread(target=self._run, name="aiolowlat-log", daemon=True)
        self._thread.start()

    # -- the caller's side: the last structlog processor --

    def put(self, event_dict: dict) -> None:
        """Queue a record, or count it dropped when the queue is full."""
        queue = self._queue
        if len(queue) < self.queue_size:
            queue.append(event_dict)
        else:
            self.dropped += 1

    def __call__(self, _logger, _method, event_dict) -> str:
        """The last structlog processor: queue the record; the ReturnLogger gets ""."""
        self.put(event_dict)
        return ""

    # -- the writer thread --

    def _make_renderer(self):
        if self.renderer == "console":
            console = structlog.dev.ConsoleRenderer(colors=False)
            return lambda ed: console(None, "", ed)
        encoder = msgspec.json.Encoder(enc_hook=repr)
        return lambda ed: encoder.encode(ed).decode()

    def _format(self, event_dict: dict) -> str:
        stamp = event_dict.pop("timestamp", None)
        if isinstance(stamp, int):
            stamp = datetime.datetime.fromtimestamp(
                stamp / 1e9, datetime.UTC).isoformat(timespec="microseconds")
        head = {"timestamp": stamp, "level": event_dict.pop("level", None),
                "event": event_dict.pop("event", None)}
        return self._render(head | event_dict)

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            self.written += len(lines)
        except (OSError, ValueError):  # a closed or broken stream: count, keep running
            self.write_errors += len(lines)
        lines.clear()

    def _drain(self) -> None:
        queue, lines = self._queue, []
        while queue:
            if len(lines) == _SLICE:
                # Hand the GIL back to the loop thread: rendering a long backlog in one go
                # would keep it waiting up to the 5 ms switch interval.
                self._write(lines)
                time.sleep(_PAUSE)
            item = queue.popleft()
            if isinstance(item, threading.Event):  # a flush() marker: all before it is out
                self._write(lines)
                item.set()
                continue
            try:
                lines.append(self._format(item))
            except Exception as exc:  # a value that cannot be rendered loses that record only
                lines.append(self._render({"event": "log.render_error", "error": repr(exc),
                                           "dropped_event": str(item.get("event"))}))
        if self.dropped != self._reported_drops:
            lines.append(self._format({"event": "log.dropped", "level": "warning",
                                       "count": self.dropped - self._reported_drops,
                                       "total": self.dropped, "timestamp": time.time_ns()}))
            self._reported_drops = self.dropped
        self._write(lines)

    def _run(self) -> None:
        # Polls on a timer: the hot path only appends, it never signals this thread.
        while not self._closing:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything queued before this call is written; False on timeout."""
        if not self._thread.is_alive():
            return not self._queue
        done = threading.Event()
        self._queue.append(done)  # not bounded: a marker, not a record
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued, stop the thread and undo ``setup_logging``'s configuration."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        restore, self._restore = self._restore, None
        if restore is not None:
            restore()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _StdlibBridge(logging.Handler):
    """Sends stdlib ``logging`` records (asyncio's, libraries') through the same queue."""

    def __init__(self, writer: LogWriter, level: int):
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        event = {"event": record.getMessage(), "level": record.levelname.lower(),
                 "logger": record.name, "timestamp": int(record.created * 1e9)}
        if record.exc_info:
            event["exception"] = logging.Formatter().formatException(record.exc_info)
        self.writer.put(event)

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the writer's queue append is already thread-safe.
        if self.filter(record):
            self.emit(record)
        return True


def setup_logging(renderer: Literal["json", "console"] = "json", *, level: str = "info",
                  stream: IO[str] | None = None, queue_size: int = 10_000,
                  capture_stdlib: bool = True, flush_interval: float = 0.02) -> LogWriter:
    """Configure structlog (and, with ``capture_stdlib``, stdlib logging) to log off-thread.

    Returns the ``LogWriter``; ``writer.close()`` writes what is left and restores the
    previous structlog and logging configuration.
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {sorted(_LEVELS)}, not {level!r}")
    writer = LogWriter(renderer, stream=stream, queue_size=queue_size,
                       flush_interval=flush_interval)
    previous = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,
            # Tracebacks are thread-local: format them here, on the (rare) error path.
            structlog.processors.format_exc_info,
            writer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    bridge, root_level = None, root.level
    if capture_stdlib:
        bridge = _StdlibBridge(writer, _LEVELS[level])
        root.addHandler(bridge)
        root.setLevel(_LEVELS[level])

    def restore() -> None:
        if bridge is not None:
            root.removeHandler(bridge)
            root.setLevel(root_level)
        structlog.configure(**previous)

    writer._restore = restore
    return writer
