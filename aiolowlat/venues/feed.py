"""The runner: keeps a venue adapter connected and fed, and hands its events on.

``run_feed(adapter, symbols, on_event)`` (callbacks, the low-latency style) and
``async for event in venue_feed(adapter, symbols)`` connect, subscribe, answer the
adapter's requests (resubscriptions, Binance's REST snapshots, application pings),
close a connection that has gone silent for ``stale_after`` seconds, and reconnect
with exponential backoff and jitter; the adapter drops its books on every
disconnect, so no level of an old connection survives into the new one.

The REST snapshot is one small HTTPS GET, done here on asyncio streams rather than
with aiohttp: it runs on any loop (the aiolowlat loop included) and keeps an HTTP
client library out of the runtime dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from ._base import VenueAdapter
from .events import Event

__all__ = ["HttpError", "https_get", "run_feed", "venue_feed"]

log = logging.getLogger("aiolowlat.venues")

ConnectFn = Callable[..., Awaitable[Any]]
_MAX_BODY = 64 << 20


class HttpError(Exception):
    """A REST request answered with a status other than 200, or malformed."""


async def https_get(
    url: str, *, ssl: _ssl.SSLContext | None = None, timeout: float = 10.0
) -> bytes:
    """GET ``url`` (https or http) and return the body of a 200 answer."""
    return await asyncio.wait_for(_get(url, ssl), timeout)


async def _get(url: str, ssl_ctx: _ssl.SSLContext | None) -> bytes:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    if not secure and parts.scheme != "http":
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    if secure and ssl_ctx is None:
        ssl_ctx = _ssl.create_default_context()
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl_ctx if secure else None, server_hostname=host if secure else None
    )
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: aiolowlat\r\n"
            "Accept: application/json\r\nConnection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[1].isdigit():
            raise HttpError(f"bad status line {status_line!r} from {url}")
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length > _MAX_BODY:
                raise HttpError(f"body of {length} bytes from {url} is too large")
            body = await reader.readexactly(length)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await _read_chunked(reader)
        else:
            body = await reader.read(_MAX_BODY)
        if fields[1] != "200":
            raise HttpError(f"{url}: HTTP {fields[1]} {body[:200]!r}")
        return body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        if len(body) + size > _MAX_BODY:
            raise HttpError("chunked body is too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _default_connect() -> ConnectFn:
    from aiolowlat import ws  # lazily: the client is optional for sans-I/O users

    return ws.connect


async def run_feed(
    adapter: VenueAdapter,
    symbols: list[str],
    on_event: Callable[[Event], object],
    *,
    connect: ConnectFn | None = None,
    ssl: _ssl.SSLContext | None = None,
    stale_after: float = 30.0,
    backoff: tuple[float, float] = (0.05, 5.0),
    snapshot_retries: int = 3,
    connect_kwargs: dict[str, Any] | None = None,
) -> None:
    """Run ``adapter`` on ``symbols`` until cancelled, calling ``on_event`` for each
    event. ``connect`` defaults to aiolowlat.ws.connect (same shape as
    websockets.asyncio.client.connect); ``ssl`` is used for wss and for REST."""
    connect = connect or _default_connect()
    adapter.start(symbols)
    kwargs = {"max_size": 1 << 24, **(connect_kwargs or {})}
    failures = 0
    while True:
        url = adapter.connect_url()
        try:
            ws = await connect(url, ssl=ssl, **kwargs) if ssl else await connect(url, **kwargs)
        except Exception as exc:  # every client raises its own types
            failures += 1
            delay = min(backoff[1], backoff[0] * 2 ** min(failures, 16))
            log.warning(
                "%s: connect to %s failed (%r); retry in %.2fs", adapter.venue, url, exc, delay
            )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            continue
        failures = 0
        reason = await _serve_connection(adapter, ws, on_event, ssl, stale_after, snapshot_retries)
        for event in adapter.on_close(reason):
            on_event(event)
        await asyncio.sleep(backoff[0] * random.uniform(0.5, 1.0))


async def _serve_connection(
    adapter: VenueAdapter,
    ws: Any,
    on_event: Callable[[Event], object],
    ssl_ctx: _ssl.SSLContext | None,
    stale_after: float,
    snapshot_retries: int,
) -> str:
    """Subscribe and pump one connection until it closes; returns why it closed."""
    tasks: set[asyncio.Task] = set()
    last_rx = time.monotonic()
    reason = "closed by peer"

    def spawn(coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def pump() -> None:
        for message in adapter.take_outgoing():
            await ws.send(message)
        for symbol, url in adapter.take_snapshot_requests():
            spawn(fetch_snapshot(symbol, url))

    async def fetch_snapshot(symbol: str, url: str) -> None:
        nonlocal reason
        for attempt in range(snapshot_retries):
            try:
                body = await https_get(url, ssl=ssl_ctx)
                break
            except (
                OSError,
                ValueError,
                HttpError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:  # TimeoutError is an OSError
                log.warning("%s: snapshot %s failed (%r)", adapter.venue, url, exc)
                await asyncio.sleep(0.1 * 2**attempt)
        else:
            reason = "snapshot unavailable"
            await ws.close()  # a fresh connection starts the sync over
            return
        for event in adapter.on_snapshot(symbol, body, time.time_ns()):
            on_event(event)
        await pump()

    async def heartbeat(interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            message = adapter.heartbeat()
            if message is not None:
                await ws.send(message)

    async def watchdog() -> None:
        nonlocal reason
        while time.monotonic() - last_rx < stale_after:
            await asyncio.sleep(min(1.0, stale_after / 4))
        adapter.counters.stalls += 1
        reason = f"stalled: nothing for {stale_after}s"
        await ws.close()

    try:
        for message in adapter.on_open():
            await ws.send(message)
        spawn(watchdog())
        if adapter.heartbeat_interval:
            spawn(heartbeat(adapter.heartbeat_interval))
        while True:
            data = await ws.recv()
            last_rx = time.monotonic()
            rx_ns = getattr(ws, "rx_ns", 0) or time.time_ns()
            for event in adapter.on_message(data, rx_ns):
                on_event(event)
            if adapter.has_requests():
                await pump()
    except asyncio.CancelledError:
        reason = "cancelled"
        raise
    except Exception as exc:  # the client's ConnectionClosed and transport errors
        if reason == "closed by peer":
            reason = f"closed: {exc!r}"
        return reason
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2.0)


async def venue_feed(
    adapter: VenueAdapter, symbols: list[str], **options: Any
) -> AsyncIterator[Event]:
    """``async for event in venue_feed(adapter, ["BTCUSDT"])``: run_feed as an
    iterator; the books are ``adapter.books``. Options as for run_feed."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    task = asyncio.ensure_future(run_feed(adapter, symbols, queue.put_nowait, **options))
    task.add_done_callback(lambda _: queue.put_nowait(done))
    try:
        while True:
            event = await queue.get()
            if event is done:
                task.result()
                return
            yield event
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
