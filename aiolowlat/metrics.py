"""Latency histograms, counters, periodic summaries and a Prometheus text endpoint.

``Histogram`` is HdrHistogram's log-linear layout in pure Python: values map to a
bucket with ``int.bit_length`` arithmetic and are counted in an ``array.array``
allocated once, so recording grows nothing. Queries walk the counts; they run off
the hot path (summaries, scrapes).
"""

from __future__ import annotations

import array
import asyncio
import math
import re
import time
from collections.abc import Callable, Iterable

import structlog

__all__ = [
    "Counter",
    "Histogram",
    "MetricsRegistry",
    "log_summaries",
    "serve_prometheus",
]

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
SUMMARY_QUANTILES = (0.5, 0.9, 0.99, 0.999)


class Histogram:
    """Counts of values up to ``highest`` kept to ``significant_digits`` decimal digits.

    A reported value is never below the recorded one and at most ``10 ** -digits`` of it
    or ``lowest`` (the resolution), whichever is larger, above it. Negative values and
    values above ``highest`` are not recorded: they are counted in ``out_of_range``.
    """

    __slots__ = ("lowest", "highest", "significant_digits", "count", "total", "_min", "max",
                 "out_of_range", "_unit_mag", "_sub_half_mag", "_sub_half", "_sub_mask",
                 "_bucket_base", "_counts")

    def __init__(self, lowest: int = 1, highest: int = 3_600_000_000_000,
                 significant_digits: int = 3):
        if not 1 <= significant_digits <= 5:
            raise ValueError(f"significant_digits must be 1..5, not {significant_digits}")
        if lowest < 1 or highest < 2 * lowest:
            raise ValueError(f"need 1 <= lowest and 2 * lowest <= highest, not {lowest}, {highest}")
        self.lowest, self.highest, self.significant_digits = lowest, highest, significant_digits
        # As HdrHistogram: 2 * 10**digits values at unit resolution in the first bucket,
        # then each bucket doubles the range with the same number of sub-buckets.
        sub_count_mag = math.ceil(math.log2(2 * 10**significant_digits))
        self._unit_mag = lowest.bit_length() - 1
        self._sub_half_mag = sub_count_mag - 1
        self._sub_half = 1 << self._sub_half_mag
        self._sub_mask = ((1 << sub_count_mag) - 1) << self._unit_mag
        self._bucket_base = self._unit_mag + self._sub_half_mag + 1
        buckets, smallest_untracked = 1, (1 << sub_count_mag) << self._unit_mag
        while smallest_untracked <= highest:
            smallest_untracked <<= 1
            buckets += 1
        self._counts = array.array("q", bytes(8 * ((buckets + 1) << self._sub_half_mag)))
        self.reset()

    def reset(self) -> None:
        """Forget every recorded value (the counts array is reused)."""
        counts = self._counts
        counts[:] = array.array("q", bytes(8 * len(counts)))
        self.count = self.total = self.out_of_range = self.max = 0
        self._min = self.highest + 1  # above any recorded value: no "first value" test

    def record(self, value: int) -> None:
        """Count one value (an int, e.g. nanoseconds); the hot-path call."""
        if value < 0 or value > self.highest:
            self.out_of_range += 1
            return
        bucket = (value | self._sub_mask).bit_length() - self._bucket_base
        sub = value >> (bucket + self._unit_mag)
        self._counts[((bucket + 1) << self._sub_half_mag) + sub - self._sub_half] += 1
        if value < self._min:
            self._min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def record_since(self, start_ns: int) -> None:
        """Record ``time.perf_counter_ns() - start_ns``."""
        self.record(time.perf_counter_ns() - start_ns)

    def _value_at(self, index: int) -> int:
        bucket = (index >> self._sub_half_mag) - 1
        sub = (index & (self._sub_half - 1)) + self._sub_half
        if bucket < 0:
            sub -= self._sub_half
            bucket = 0
        return sub << (bucket + self._unit_mag)

    def _highest_equivalent(self, index: int) -> int:
        # The last value that lands in this index: its start plus its width - 1.
        bucket = max((index >> self._sub_half_mag) - 1, 0)
        return self._value_at(index) + (1 << (bucket + self._unit_mag)) - 1

    @property
    def min(self) -> int:
        return self._min if self.count else 0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentiles(self, *percents: float) -> list[int]:
        """Values at the given percentiles (0..100), in one pass over the counts."""
        if any(not 0 <= p <= 100 for p in percents):
            raise ValueError(f"percentiles must be within 0..100, not {percents}")
        if not self.count:
            return [0] * len(percents)
        order = sorted(range(len(percents)), key=percents.__getitem__)
        out = [0] * len(percents)
        seen, k = 0, 0
        for index, n in enumerate(self._counts):
            if not n:
                continue
            seen += n
            while k < len(order) and seen >= _rank(percents[order[k]], self.count):
                # Never report past the exact extremes that were recorded.
                out[order[k]] = min(self._highest_equivalent(index), self.max)
                k += 1
            if k == len(order):
                break
        return out

    def percentile(self, percent: float) -> int:
        """The value at ``percent`` (0..100): at least that share of values are <= it."""
        return self.percentiles(percent)[0]

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this histogram (same range and digits required)."""
        if (other.lowest, other.highest, other.significant_digits) != (
                self.lowest, self.highest, self.significant_digits):
            raise ValueError("can only merge histograms of the same lowest, highest and digits")
        counts = self._counts
        for index, n in enumerate(other._counts):
            if n:
                counts[index] += n
        self._min = min(self._min, other._min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total
        self.out_of_range += other.out_of_range

    def summary(self) -> dict:
        """count, min, mean, p50, p90, p99, p99.9 and max, as a dict for logs."""
        p50, p90, p99, p999 = self.percentiles(50, 90, 99, 99.9)
        return {"count": self.count, "min": self.min, "mean": round(self.mean, 1), "p50": p50,
                "p90": p90, "p99": p99, "p999": p999, "max": self.max,
                "out_of_range": self.out_of_range}


def _rank(percent: float, count: int) -> int:
    """Nearest rank: the smallest n with n / count >= percent / 100 (float noise rounded off)."""
    return max(1, math.ceil(round(percent * count / 100, 6)))


class Counter:
    """A monotonically increasing count (drops, gaps, reconnects, ring overflows)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def _label_key(labels: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    if not labels:
        return ()
    for name in labels:
        if not _LABEL_RE.match(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


class _Family:
    __slots__ = ("kind", "help", "series")

    def __init__(self, kind: str, help: str):
        self.kind, self.help, self.series = kind, help, {}


class MetricsRegistry:
    """Named histograms and counters, each optionally split by labels.

    ``histogram``/``counter`` return the same object for the same name and labels, so
    components look theirs up once and keep the reference for the hot path.
    ``counter_fn`` and ``counter_group`` expose counts other components already keep
    (a loop's ``ring_stats()``, a feed handler's ``counters()``), read when queried.
    """

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._groups: list[tuple[str, Callable[[], dict], str, tuple]] = []
        self.read_errors = 0  # counter_fn / counter_group callables that raised when read

    def _series(self, name: str, kind: str, help: str, labels, make):
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}: use [a-zA-Z_:][a-zA-Z0-9_:]*")
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(kind, help)
        elif family.kind != kind:
            raise ValueError(f"metric {name!r} is a {family.kind}, not a {kind}")
        key = _label_key(labels)
        series = family.series.get(key)
        if series is None:
            series = family.series[key] = make()
        return series

    def histogram(self, name: str, help: str = "", labels: dict[str, str] | None = None,
                  **config) -> Histogram:
        """The histogram called ``name`` (created with ``Histogram(**config)`` on first use)."""
        return self._series(name, "histogram", help, labels, lambda: Histogram(**config))

    def counter(self, name: str, help: str = "", labels: dict[str, str] | None = None) -> Counter:
        """The counter called ``name`` (created at 0 on first use)."""
        return self._series(name, "counter", help, labels, Counter)

    def counter_fn(self, name: str, fn: Callable[[], int], help: str = "",
                   labels: dict[str, str] | None = None) -> None:
        """Expose ``fn()`` as a counter: e.g. a sequencer's gap count, read at query time."""
        family = self._families.get(name)
        if family is not None and _label_key(labels) in family.series:
            raise ValueError(f"metric {name!r} {labels or ''} is already registered")
        self._series(name, "counter", help, labels, lambda: fn)

    def counter_group(self, prefix: str, fn: Callable[[], dict[str, int]], help: str = "",
                      labels: dict[str, str] | None = None) -> None:
        """Expose every ``key: count`` of ``fn()`` as a counter ``<prefix>_<key>``."""
        if not _NAME_RE.match(prefix):
            raise ValueError(f"invalid metric prefix {prefix!r}")
        self._groups.append((prefix, fn, help, _label_key(labels)))

    def _collect(self) -> dict[str, tuple[str, str, list]]:
        """name -> (kind, help, [(label key, series or value)]) over everything registered."""
        out = {}
        for name, family in self._families.items():
            samples = []
            for key, series in family.series.items():
                if family.kind == "counter":
                    series = self._value(series)
                    if series is None:
                        continue
                samples.append((key, series))
            out[name] = (family.kind, family.help, samples)
        for prefix, fn, help, key in self._groups:
            try:
                counts = fn()
            except Exception:  # a component that is gone: the scrape goes on, and says so
                self.read_errors += 1
                continue
            for name, value in counts.items():
                full = f"{prefix}_{_INVALID_NAME_CHARS.sub('_', name)}"
                kind, _, samples = out.setdefault(full, ("counter", help, []))
                if kind == "counter":
                    samples.append((key, int(value)))
        if self.read_errors:
            out["metrics_read_errors_total"] = (
                "counter", "counter_fn/counter_group reads that raised", [((), self.read_errors)])
        return out

    def snapshot(self) -> dict:
        """Every metric as plain data: counters as ints, histograms as their summaries."""
        out = {}
        for name, (kind, _, samples) in self._collect().items():
            for key, series in samples:
                label = name + ("{" + ",".join(f"{k}={v}" for k, v in key) + "}" if key else "")
                out[label] = series.summary() if kind == "histogram" else series
        return out

    def reset_histograms(self) -> None:
        """Start a new interval for every histogram (counters keep counting)."""
        for family in self._families.values():
            if family.kind == "histogram":
                for series in family.series.values():
                    series.reset()

    def render_prometheus(self) -> str:
        """The text exposition format 0.0.4; histograms are summaries with quantiles."""
        lines = []
        for name, (kind, help, samples) in self._collect().items():
            if not samples:
                continue
            if help:
                lines.append(f"# HELP {name} {_escape_help(help)}")
            if kind == "counter":
                lines.append(f"# TYPE {name} counter")
                for key, series in samples:
                    lines.append(f"{name}{_labels(key)} {series}")
                continue
            lines.append(f"# TYPE {name} summary")
            for key, hist in samples:
                values = hist.percentiles(*(q * 100 for q in SUMMARY_QUANTILES))
                for q, value in zip(SUMMARY_QUANTILES, values):
                    lines.append(f"{name}{_labels(key + (('quantile', str(q)),))} {value}")
                lines.append(f"{name}_sum{_labels(key)} {hist.total}")
                lines.append(f"{name}_count{_labels(key)} {hist.count}")
        return "\n".join(lines) + "\n"

    def _value(self, series: Counter | Callable[[], int]) -> int | None:
        if isinstance(series, Counter):
            return series.value
        try:
            return int(series())
        except Exception:  # not reported as 0: a counter that drops reads as a reset
            self.read_errors += 1
            return None


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(key: Iterable[tuple[str, str]]) -> str:
    parts = [f'{k}="{_escape_label(v)}"' for k, v in key]
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def log_summaries(registry: MetricsRegistry, interval: float, *, logger=None,
                        reset: bool = True, event: str = "metrics") -> None:
    """Log ``registry.snapshot()`` every ``interval`` seconds until cancelled.

    With ``reset`` each summary covers one interval. Run it as a task; with
    aiolowlat.log set up, the log call only queues the record.
    """
    log = logger or structlog.get_logger("aiolowlat.metrics")
    while True:
        await asyncio.sleep(interval)
        log.info(event, **registry.snapshot())
        if reset:
            registry.reset_histograms()


_MAX_REQUEST = 8192
_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def serve_prometheus(registry: MetricsRegistry, host: str = "127.0.0.1",
                           port: int = 9464) -> asyncio.Server:
    """Serve ``GET /metrics`` (text format 0.0.4) on ``host:port``; returns the server.

    A minimal HTTP/1.1 responder: one request per connection, anything else gets
    404/405/400. Close the returned server to stop it.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status, body = _respond(head, registry)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            status, body = "400 Bad Request", b"bad request\n"
        try:
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {_CONTENT_TYPE}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST)


def _respond(head: bytes, registry: MetricsRegistry) -> tuple[str, bytes]:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return "400 Bad Request", b"bad request\n"
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return "404 Not Found", b"not found: try /metrics\n"
    if method != b"GET":
        return "405 Method Not Allowed", b"only GET\n"
    return "200 OK", registry.render_prometheus().encode()


_default_registry = MetricsRegistry()
_run_registry: MetricsRegistry | None = None


def registry() -> MetricsRegistry:
    """The registry of the running ``aiolowlat.run(config=...)``, which it logs in
    summaries and serves to Prometheus as its [metrics] say; else a process default."""
    return _run_registry if _run_registry is not None else _default_registry


async def _serve_run_metrics(main, settings):
    """Run ``main`` with the config's metrics and log services around it."""
    global _run_registry
    loop = asyncio.get_running_loop()
    _run_registry = reg = MetricsRegistry()
    if hasattr(loop, "ring_stats"):
        reg.counter_group("aiolowlat_ring", loop.ring_stats, "io_uring loop counters")
    tasks, server = [], None
    try:
        if settings.metrics.summary_interval > 0:
            tasks.append(asyncio.ensure_future(log_summaries(reg,
                                                             settings.metrics.summary_interval)))
        if settings.metrics.prometheus_port is not None:
            server = await serve_prometheus(reg, port=settings.metrics.prometheus_port)
        return await main
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()
        _run_registry = None
