"""MoldUDP64 framing (NASDAQ): downstream packets and retransmission requests, sans-I/O.

A downstream packet is a 20-byte header (Session: 10 bytes ASCII, SequenceNumber: u64,
MessageCount: u16, all big-endian) followed by MessageCount blocks of u16 length +
payload. Count 0 is a heartbeat and count 0xFFFF marks the end of the session; both
carry the next sequence number the server will send. A request packet is the same
20 bytes with the count read as RequestedMessageCount.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import msgspec

__all__ = [
    "END_OF_SESSION_COUNT",
    "HEADER_SIZE",
    "MAX_MESSAGES_PER_PACKET",
    "MoldError",
    "MoldPacket",
    "MoldRequest",
    "decode_packet",
    "decode_request",
    "encode_packet",
    "encode_request",
]

_HEADER = struct.Struct(">10sQH")
_BLOCK_LENGTH = struct.Struct(">H")
HEADER_SIZE = _HEADER.size
SESSION_SIZE = 10
END_OF_SESSION_COUNT = 0xFFFF
# A packet's count is u16 and 0xFFFF is reserved for end of session.
MAX_MESSAGES_PER_PACKET = 0xFFFE
_MAX_SEQUENCE = (1 << 64) - 1


class MoldError(ValueError):
    """A MoldUDP64 packet or request that does not follow the framing."""


class MoldPacket(msgspec.Struct, frozen=True, gc=False):
    """A decoded downstream packet; ``messages`` are zero-copy views into the input."""

    session: bytes
    sequence: int
    messages: tuple = ()
    end_of_session: bool = False

    @property
    def is_heartbeat(self) -> bool:
        return not self.messages and not self.end_of_session


class MoldRequest(msgspec.Struct, frozen=True, gc=False):
    """A retransmission request for ``count`` messages starting at ``sequence``."""

    session: bytes
    sequence: int
    count: int


def _session_bytes(session: bytes | str) -> bytes:
    raw = session.encode("ascii") if isinstance(session, str) else bytes(session)
    if len(raw) > SESSION_SIZE:
        raise MoldError(f"session {raw!r} is longer than {SESSION_SIZE} bytes")
    return raw.ljust(SESSION_SIZE, b" ")


def encode_packet(
    session: bytes | str,
    sequence: int,
    messages: Iterable[bytes] = (),
    *,
    end_of_session: bool = False,
) -> bytes:
    """Frame ``messages`` (none: a heartbeat) as one downstream packet."""
    messages = list(messages)
    if end_of_session and messages:
        raise MoldError("an end-of-session packet carries no messages")
    if len(messages) > MAX_MESSAGES_PER_PACKET:
        raise MoldError(f"{len(messages)} messages exceed {MAX_MESSAGES_PER_PACKET} per packet")
    if not 0 <= sequence <= _MAX_SEQUENCE - len(messages):
        raise MoldError(f"sequence {sequence} out of range")
    count = END_OF_SESSION_COUNT if end_of_session else len(messages)
    parts = [_HEADER.pack(_session_bytes(session), sequence, count)]
    for message in messages:
        if len(message) > 0xFFFF:
            raise MoldError(f"message of {len(message)} bytes exceeds 65535")
        parts.append(_BLOCK_LENGTH.pack(len(message)))
        parts.append(message)
    return b"".join(parts)


def decode_packet(data: bytes | bytearray | memoryview) -> MoldPacket:
    """Parse one downstream packet; raise MoldError on any framing fault."""
    view = memoryview(data)
    if view.format != "B":
        view = view.cast("B")
    size = len(view)
    if size < HEADER_SIZE:
        raise MoldError(f"packet of {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    session, sequence, count = _HEADER.unpack_from(view, 0)
    if count == END_OF_SESSION_COUNT:
        if size != HEADER_SIZE:
            raise MoldError(f"end-of-session packet has {size - HEADER_SIZE} trailing bytes")
        return MoldPacket(session, sequence, (), True)
    if sequence > _MAX_SEQUENCE - count:
        raise MoldError(f"sequence {sequence} + count {count} overflows 64 bits")
    messages = []
    offset = HEADER_SIZE
    for _ in range(count):
        if offset + 2 > size:
            raise MoldError(f"block {len(messages)} of {count} length runs past the packet end")
        (length,) = _BLOCK_LENGTH.unpack_from(view, offset)
        offset += 2
        end = offset + length
        if end > size:
            raise MoldError(f"block {len(messages)} of {length} bytes runs past the packet end")
        messages.append(view[offset:end])
        offset = end
    if offset != size:
        raise MoldError(f"{size - offset} trailing bytes after {count} message blocks")
    return MoldPacket(session, sequence, tuple(messages), False)


def encode_request(session: bytes | str, sequence: int, count: int) -> bytes:
    """Frame a retransmission request for ``count`` messages from ``sequence``."""
    if not 1 <= count <= MAX_MESSAGES_PER_PACKET:
        raise MoldError(f"requested count {count} not in 1..{MAX_MESSAGES_PER_PACKET}")
    if not 0 <= sequence <= _MAX_SEQUENCE - count:
        raise MoldError(f"sequence {sequence} out of range")
    return _HEADER.pack(_session_bytes(session), sequence, count)


def decode_request(data: bytes | bytearray | memoryview) -> MoldRequest:
    """Parse a retransmission request; raise MoldError unless it is well formed."""
    if len(data) != HEADER_SIZE:
        raise MoldError(f"request of {len(data)} bytes, expected {HEADER_SIZE}")
    session, sequence, count = _HEADER.unpack_from(data, 0)
    if not 1 <= count <= MAX_MESSAGES_PER_PACKET:
        raise MoldError(f"requested count {count} not in 1..{MAX_MESSAGES_PER_PACKET}")
    if sequence > _MAX_SEQUENCE - count:
        raise MoldError(f"sequence {sequence} + count {count} overflows 64 bits")
    return MoldRequest(session, sequence, count)
