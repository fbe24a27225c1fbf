"""Histogram accuracy against exact sorted values, merge, counters, registry, summaries
through structlog, and the Prometheus endpoint over real loopback HTTP."""

import asyncio
import io
import json
import math
import random

import aiohttp
import pytest
from conftest import run
from prometheus_client.parser import text_string_to_metric_families

import aiolowlat
from aiolowlat.log import setup_logging
from aiolowlat.metrics import Histogram, MetricsRegistry, log_summaries, serve_prometheus

PERCENTS = (0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100)


def exact_percentile(sorted_values, percent):
    """Nearest rank, the definition HdrHistogram uses."""
    rank = max(1, math.ceil(round(percent * len(sorted_values) / 100, 6)))
    return sorted_values[rank - 1]


def datasets():
    rnd = random.Random(7)
    yield "lognormal_ns", [int(rnd.lognormvariate(9, 1.5)) + 1 for _ in range(20_000)]
    yield "uniform", [rnd.randrange(1, 10**9) for _ in range(20_000)]
    yield "powers_of_two_edges", [v for k in range(40) for v in ((1 << k) - 1, 1 << k, (1 << k) + 1)
                                  if v > 0]
    yield "constant", [123_456] * 1000
    yield "tiny", [1, 2, 3]


@pytest.mark.parametrize("digits", [1, 2, 3, 4])
@pytest.mark.parametrize("name,values", list(datasets()), ids=[n for n, _ in datasets()])
def test_percentiles_within_stated_relative_error(digits, name, values):
    hist = Histogram(1, 10**13, digits)
    for v in values:
        hist.record(v)
    ordered = sorted(values)
    bound = 10.0**-digits
    got = hist.percentiles(*PERCENTS)
    for percent, value in zip(PERCENTS, got):
        exact = exact_percentile(ordered, percent)
        assert exact <= value <= exact * (1 + bound), (percent, exact, value)
    assert (hist.count, hist.min, hist.max) == (len(values), ordered[0], ordered[-1])
    assert hist.mean == pytest.approx(sum(values) / len(values))
    assert hist.percentile(50) == got[PERCENTS.index(50)]


def test_coarse_lowest_is_the_resolution():
    # lowest=1000: values are told apart to 1000 (a power of two at most), and large
    # values keep the relative error of their digits.
    hist = Histogram(lowest=1000, highest=10**10, significant_digits=2)
    values = [1000 + 37 * i for i in range(5000)] + [10**6 + 7919 * i for i in range(5000)]
    for v in values:
        hist.record(v)
    for percent in PERCENTS:
        exact = exact_percentile(values, percent)
        assert exact <= hist.percentile(percent) <= max(exact * 1.01, exact + 1000)
        if exact >= 10**6:
            assert hist.percentile(percent) <= exact * 1.01


def test_out_of_range_values_are_counted_not_recorded():
    hist = Histogram(1, 1000, 2)
    for v in (-5, 1001, 10**18):
        hist.record(v)
    assert (hist.count, hist.out_of_range) == (0, 3)
    assert hist.percentiles(50, 99) == [0, 0]
    hist.record(0)
    hist.record(1000)
    assert (hist.count, hist.min, hist.max, hist.percentile(100)) == (2, 0, 1000, 1000)


def test_invalid_configuration_and_queries_raise():
    with pytest.raises(ValueError, match="significant_digits"):
        Histogram(significant_digits=6)
    with pytest.raises(ValueError, match="lowest"):
        Histogram(lowest=10, highest=15)
    with pytest.raises(ValueError, match="0..100"):
        Histogram().percentile(101)


def test_merge_equals_recording_everything_in_one():
    rnd = random.Random(3)
    values = [int(rnd.paretovariate(1.2) * 1000) for _ in range(10_000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    for i, v in enumerate(values):
        whole.record(v)
        (a if i % 3 else b).record(v)
    a.record(-1)
    a.merge(b)
    assert a._counts == whole._counts
    assert (a.count, a.min, a.max, a.total, a.out_of_range) == (
        whole.count, whole.min, whole.max, whole.total, 1)
    assert a.percentiles(*PERCENTS) == whole.percentiles(*PERCENTS)
    with pytest.raises(ValueError, match="same"):
        a.merge(Histogram(significant_digits=2))


def test_merge_into_empty_and_reset():
    full, empty = Histogram(), Histogram()
    for v in (5, 50, 500):
        full.record(v)
    empty.merge(full)
    assert (empty.min, empty.max, empty.count) == (5, 500, 3)
    full.reset()
    assert (full.count, full.min, full.max, full.total) == (0, 0, 0, 0)
    assert not any(full._counts)
    full.record(7)
    assert (full.min, full.max, full.percentile(50)) == (7, 7, 7)


def test_recording_reuses_the_preallocated_counts():
    hist = Histogram()
    counts, size = hist._counts, len(hist._counts)
    for v in range(1, 3_600_000_000_000, 7_777_777_777):
        hist.record(v)
    hist.record_since(0)
    assert hist._counts is counts and len(counts) == size and sum(counts) == hist.count


def test_registry_returns_one_object_per_name_and_labels():
    reg = MetricsRegistry()
    drops = reg.counter("feed_drops_total", "datagrams dropped", labels={"line": "A"})
    assert reg.counter("feed_drops_total", labels={"line": "A"}) is drops
    assert reg.counter("feed_drops_total", labels={"line": "B"}) is not drops
    rtt = reg.histogram("order_rtt_ns", "order round trip", significant_digits=2)
    assert reg.histogram("order_rtt_ns") is rtt and rtt.significant_digits == 2
    with pytest.raises(ValueError, match="is a histogram"):
        reg.counter("order_rtt_ns")
    with pytest.raises(ValueError, match="invalid metric name"):
        reg.counter("bad-name")
    with pytest.raises(ValueError, match="invalid label name"):
        reg.counter("x_total", labels={"bad-label": "1"})
    gaps = [0]
    reg.counter_fn("feed_gaps_total", lambda: gaps[0], "gaps seen by the sequencer")
    with pytest.raises(ValueError, match="already registered"):
        reg.counter_fn("feed_gaps_total", lambda: 0)
    drops.inc()
    drops.inc(2)
    gaps[0] = 5
    rtt.record(1000)
    snap = reg.snapshot()
    assert snap["feed_drops_total{line=A}"] == 3 and snap["feed_drops_total{line=B}"] == 0
    assert snap["feed_gaps_total"] == 5
    assert snap["order_rtt_ns"]["count"] == 1 and snap["order_rtt_ns"]["p99"] == 1000


def test_prometheus_text_parses_with_the_reference_parser():
    reg = MetricsRegistry()
    reg.counter("ring_overflows_total", 'overflows of the "rx" ring\nper engine',
                labels={"engine": 'a"b\\c'}).inc(4)
    hist = reg.histogram("rx_to_callback_ns", "receive to callback")
    for v in range(1, 1001):
        hist.record(v)
    families = {f.name: f for f in text_string_to_metric_families(reg.render_prometheus())}
    overflow = families["ring_overflows"]
    assert overflow.type == "counter"
    assert overflow.documentation == 'overflows of the "rx" ring\nper engine'
    [sample] = overflow.samples
    assert sample.labels == {"engine": 'a"b\\c'} and sample.value == 4
    summary = families["rx_to_callback_ns"]
    assert summary.type == "summary"
    values = {(s.name, s.labels.get("quantile")): s.value for s in summary.samples}
    assert values[("rx_to_callback_ns", "0.5")] == 500
    assert values[("rx_to_callback_ns", "0.999")] == 999
    assert values[("rx_to_callback_ns_count", None)] == 1000
    assert values[("rx_to_callback_ns_sum", None)] == sum(range(1, 1001))


def test_prometheus_endpoint_serves_http_on_loopback(loop):
    reg = MetricsRegistry()
    reg.counter("reconnects_total", "reconnects").inc(2)
    reg.histogram("tick_to_trade_ns").record(4200)

    async def main():
        server = await serve_prometheus(reg, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == (
                        "text/plain; version=0.0.4; charset=utf-8")
                    text = await resp.text()
                async with http.get(f"http://127.0.0.1:{port}/other") as resp:
                    assert resp.status == 404
                async with http.post(f"http://127.0.0.1:{port}/metrics") as resp:
                    assert resp.status == 405
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"garbage\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()
        return text

    text = run(loop, main())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["reconnects"].samples[0].value == 2
    quantiles = {s.labels.get("quantile"): s.value for s in families["tick_to_trade_ns"].samples}
    assert 4200 <= quantiles["0.99"] <= 4200 * 1.001


def test_periodic_summaries_go_through_structlog(loop):
    reg = MetricsRegistry()
    hist = reg.histogram("rtt_ns")
    reg.counter("drops_total").inc(3)
    stream = io.StringIO()

    async def main():
        task = asyncio.ensure_future(log_summaries(reg, 0.02))
        for v in (10, 20, 30):
            hist.record(v)
        for _ in range(500):  # until two summaries are written (the writer polls every 20 ms)
            if stream.getvalue().count("\n") >= 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with setup_logging("json", stream=stream, capture_stdlib=False) as writer:
        run(loop, main())
        assert writer.flush()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) >= 2 and all(r["event"] == "metrics" for r in records)
    first = records[0]
    assert first["drops_total"] == 3
    assert first["rtt_ns"]["count"] == 3 and first["rtt_ns"]["max"] == 30
    assert records[1]["rtt_ns"]["count"] == 0  # reset after each summary


def test_counter_groups_expose_a_real_loops_ring_counters():
    reg = MetricsRegistry()
    lp = aiolowlat.new_event_loop()
    reg.counter_group("aiolowlat_ring", lp.ring_stats, "io_uring core counters")

    async def echo_once():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    try:
        run(lp, echo_once())
        stats = lp.ring_stats()
        families = {f.name: f for f in text_string_to_metric_families(reg.render_prometheus())}
    finally:
        lp.close()
    assert stats["cqes"] > 0 and stats["recv_arms"] > 0
    for key in ("cqes", "recv_arms", "enobufs", "sq_full"):
        [sample] = families[f"aiolowlat_ring_{key}"].samples
        assert sample.value >= (1 if key in ("cqes", "recv_arms") else 0)
    # The loop is closed: its stats raise; the scrape goes on and counts the failed read.
    reg.counter("drops_total").inc()
    families = {f.name: f for f in text_string_to_metric_families(reg.render_prometheus())}
    assert "aiolowlat_ring_cqes" not in families and families["drops"].samples[0].value == 1
    assert families["metrics_read_errors"].samples[0].value == 1


def test_counter_groups_with_labels_share_one_family():
    reg = MetricsRegistry()
    feeds = {"A": {"gaps": 2, "drops": 0}, "B": {"gaps": 5, "drops": 1, "bad-key": 3}}
    for line, counts in feeds.items():
        reg.counter_group("feed", lambda c=counts: c, "feed handler counters", {"line": line})
    reg.counter_fn("broken_total", lambda: 1 // 0)
    text = reg.render_prometheus()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {(s.labels["line"], s.value) for s in families["feed_gaps"].samples} == {
        ("A", 2), ("B", 5)}
    assert families["feed_bad_key"].samples[0].labels == {"line": "B"}
    assert "broken" not in families  # not reported as 0
    assert text.count("# TYPE feed_gaps counter") == 1
    snap = reg.snapshot()
    assert snap["feed_gaps{line=B}"] == 5 and snap["metrics_read_errors_total"] == 2
    with pytest.raises(ValueError, match="invalid metric prefix"):
        reg.counter_group("bad prefix", dict)
