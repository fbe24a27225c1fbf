"""Record a feed (datagrams or WebSocket messages, with receive times) and replay it
through the same protocol classes, at recorded speed or as fast as possible: datagrams
into DatagramProtocols (``Recorder.wrap`` / ``replay``), a venue's messages into its
adapter (``tap_adapter`` / ``replay_adapter(s)``).

File format (little-endian), written append-only so a killed recorder leaves every
record before the last intact:

    header  b"ALREC\\x00\\x01\\n"                      8 bytes: magic and version 1
    record  kind u8 | channel u8 | rx_ns i64 | length u32 | payload[length]

kinds: 0 names a channel (payload: its UTF-8 name, e.g. the line "A" or a venue),
1 a datagram, 2 a text message, 3 a binary message. A datagram's payload is the
sender's address as "host:port" (u16 length first) followed by the data.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

MAGIC = b"ALREC\x00\x01\n"
_RECORD = struct.Struct("<BBqI")
_ADDR_LEN = struct.Struct("<H")
CHANNEL, DATAGRAM, TEXT, BINARY = range(4)
_MAX_CHANNELS = 256


class RecordingError(ValueError):
    """The file is not a recording, or is cut or corrupt where the message says."""


class Record(NamedTuple):
    kind: int
    channel: str
    rx_ns: int
    data: bytes | str
    addr: tuple[str, int] | None = None


class Recorder:
    """Appends records to a file through a large buffer (the hot path does no syscall
    per record); ``close`` (or the context manager) flushes it."""

    def __init__(self, path: str | os.PathLike, *, buffer_size: int = 1 << 20) -> None:
        self._file = open(path, "wb", buffering=buffer_size)
        self._file.write(MAGIC)
        self._channels: dict[str, int] = {}
        self.records = 0

    def _channel(self, name: str) -> int:
        index = self._channels.get(name)
        if index is None:
            if len(self._channels) >= _MAX_CHANNELS:
                raise ValueError(f"a recording holds at most {_MAX_CHANNELS} channels")
            index = self._channels[name] = len(self._channels)
            self._write(CHANNEL, index, 0, name.encode())
        return index

    def _write(self, kind: int, channel: int, rx_ns: int, payload: bytes) -> None:
        self._file.write(_RECORD.pack(kind, channel, rx_ns, len(payload)))
        self._file.write(payload)

    def datagram(self, channel: str, data: bytes, addr, rx_ns: int | None = None) -> None:
        host_port = b"" if addr is None else f"{addr[0]}:{addr[1]}".encode()
        self._write(DATAGRAM, self._channel(channel), rx_ns or time.time_ns(),
                    _ADDR_LEN.pack(len(host_port)) + host_port + bytes(data))
        self.records += 1

    def message(self, channel: str, message: str | bytes, rx_ns: int | None = None) -> None:
        kind, payload = (TEXT, message.encode()) if isinstance(message, str) else (BINARY, message)
        self._write(kind, self._channel(channel), rx_ns or time.time_ns(), bytes(payload))
        self.records += 1

    def wrap(self, channel: str, protocol: asyncio.DatagramProtocol) -> asyncio.DatagramProtocol:
        """A protocol that records every datagram, then hands it to ``protocol``."""
        return _RecordingProtocol(self, channel, protocol)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RecordingProtocol(asyncio.DatagramProtocol):
    """Records, then delegates; the batch path stays a batch path."""

    def __init__(self, recorder: Recorder, channel: str, inner) -> None:
        self._recorder, self._channel, self._inner = recorder, channel, inner
        if callable(getattr(inner, "datagrams_received", None)):
            self.datagrams_received = self._batch

    def connection_made(self, transport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        self._inner.connection_lost(exc)

    def error_received(self, exc) -> None:
        self._inner.error_received(exc)

    def datagram_received(self, data, addr) -> None:
        self._recorder.datagram(self._channel, data, addr)
        self._inner.datagram_received(data, addr)

    def _batch(self, batch) -> None:
        for data, addr, rx_ns in batch:
            self._recorder.datagram(self._channel, data, addr, rx_ns)
        self._inner.datagrams_received(batch)


def tap_adapter(recorder: Recorder, adapter) -> None:
    """Record everything a venue adapter is fed (messages, REST snapshots, connection
    opens and closes) under channels named after its venue, so replay_adapter can feed
    a fresh adapter the same input in the same order."""
    venue = adapter.venue
    on_message, on_snapshot = adapter.on_message, adapter.on_snapshot
    on_open, on_close = adapter.on_open, adapter.on_close

    def message(data, rx_ns):
        recorder.message(venue, data, rx_ns)
        return on_message(data, rx_ns)

    def snapshot(symbol, body, rx_ns):
        recorder.message(f"{venue}:snapshot:{symbol}", bytes(body), rx_ns)
        return on_snapshot(symbol, body, rx_ns)

    def opened():
        recorder.message(f"{venue}:open", "")
        return on_open()

    def closed(reason="disconnected"):
        recorder.message(f"{venue}:close", reason)
        return on_close(reason)

    adapter.on_message, adapter.on_snapshot = message, snapshot
    adapter.on_open, adapter.on_close = opened, closed


def replay_adapter(path: str | os.PathLike, adapter, symbols: list[str]) -> int:
    """Feed a fresh venue adapter what tap_adapter recorded for its venue; returns the
    number of events it produced (its books are then as the recorded adapter's were)."""
    return replay_adapters(path, {adapter.venue: adapter}, {adapter.venue: symbols})[
        adapter.venue]


def replay_adapters(path: str | os.PathLike, adapters: Mapping[str, object],
                    symbols: Mapping[str, list[str]]) -> dict[str, int]:
    """replay_adapter for several venues (venue -> fresh adapter) in one pass over the
    file; returns the number of events per venue."""
    events = dict.fromkeys(adapters, 0)
    for adapter in adapters.values():
        adapter.start(symbols.get(adapter.venue, []))
    for record in read(path):
        venue, _, what = record.channel.partition(":")
        adapter = adapters.get(venue)
        if adapter is None:
            continue
        if not what:
            events[venue] += len(adapter.on_message(record.data, record.rx_ns))
        elif what.startswith("snapshot:"):
            symbol = what[len("snapshot:"):]
            events[venue] += len(adapter.on_snapshot(symbol, record.data, record.rx_ns))
        elif what == "open":
            adapter.on_open()
        elif what == "close":
            events[venue] += len(adapter.on_close(record.data))
        adapter.take_outgoing()  # a replay answers nobody
        adapter.take_snapshot_requests()
    return events


def read(path: str | os.PathLike) -> Iterator[Record]:
    """Every record of a recording, in order; RecordingError names a bad or cut record."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise RecordingError(f"{path} is not an aiolowlat recording (bad magic)")
        yield from _records(f, path)


def _records(f: io.BufferedReader, path) -> Iterator[Record]:
    channels: dict[int, str] = {}
    offset = len(MAGIC)
    while header := f.read(_RECORD.size):
        at = offset  # where this record starts, for the errors
        if len(header) < _RECORD.size:
            raise RecordingError(f"{path}: record header cut short at byte {at}")
        kind, index, rx_ns, length = _RECORD.unpack(header)
        payload = f.read(length)
        if len(payload) < length:
            raise RecordingError(f"{path}: record at byte {at} cut short")
        offset += _RECORD.size + length
        if kind == CHANNEL:
            channels[index] = payload.decode()
            continue
        channel = channels.get(index)
        if channel is None or kind > BINARY:
            raise RecordingError(f"{path}: record at byte {at} has an unknown "
                                 f"{'kind' if kind > BINARY else 'channel'}")
        if kind == DATAGRAM:
            try:
                (n,) = _ADDR_LEN.unpack_from(payload)
                host, _, port = payload[2:2 + n].decode().rpartition(":")
                addr = (host, int(port)) if n else None
            except (struct.error, UnicodeDecodeError, ValueError):
                raise RecordingError(f"{path}: datagram at byte {at} has a bad sender "
                                     "address") from None
            yield Record(kind, channel, rx_ns, payload[2 + n:], addr)
        else:
            yield Record(kind, channel, rx_ns, payload.decode() if kind == TEXT else payload)


class ReplayTransport(asyncio.DatagramTransport):
    """The transport a replayed protocol is connected to: what it sends (retransmission
    requests, say) goes nowhere and is counted in ``unsent``."""

    def __init__(self, channel: str, protocol) -> None:
        super().__init__({"replay": True, "channel": channel, "sockname": None, "peername": None})
        self._protocol, self._closing, self.unsent = protocol, False, 0

    def sendto(self, data, addr=None) -> None:
        self.unsent += 1

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    abort = close


async def replay(path: str | os.PathLike, targets: Mapping[str, object], *,
                 speed: float | None = None,
                 on_message: Callable[[Record], None] | None = None) -> int:
    """Feed a recording to ``targets`` (channel -> DatagramProtocol, each first connected
    to a ReplayTransport) and messages to ``on_message``; ``speed`` 1.0 keeps the recorded gaps, None runs as fast as possible.
    Returns the number of records replayed. Channels without a target are skipped."""
    loop = asyncio.get_running_loop()
    for channel, target in targets.items():
        target.connection_made(ReplayTransport(channel, target))
    started = first_ns = None
    replayed = 0
    for record in read(path):
        if speed:
            if first_ns is None:
                started, first_ns = loop.time(), record.rx_ns
            due = started + (record.rx_ns - first_ns) / 1e9 / speed
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
        if record.kind == DATAGRAM:
            target = targets.get(record.channel)
            if target is None:
                continue
            if callable(getattr(target, "datagrams_received", None)):
                target.datagrams_received([(record.data, record.addr, record.rx_ns)])
            else:
                target.datagram_received(record.data, record.addr)
        elif on_message is not None:
            on_message(record)
        else:
            continue
        replayed += 1
        if replayed % 1024 == 0:
            await asyncio.sleep(0)  # as fast as possible, yet the loop's other work runs
    return replayed
