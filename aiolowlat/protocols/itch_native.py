"""ITCH 5.0 decoded in C (csrc/itch.c): one MoldUDP64 packet per call, into reusable records.

The fast path for consumers that read fields rather than keep objects: no Python
object is made per message. After ``n = decoder.decode_packet(packet)``,
``decoder.records[i]`` (i < n) has ``type`` (bytes of one), ``locate``,
``timestamp``, ``ref``, ``new_ref``, ``match``, ``shares``, ``price``, ``side``,
``flag`` and ``stock`` (see csrc/itch.h for which type sets which field).
Unknown types, malformed blocks and messages beyond ``capacity`` are counted.
"""

from __future__ import annotations

from .._native import ffi, lib

_decode = lib.al_itch_decode_packet


class NativeItchDecoder:
    """Decodes MoldUDP64 packets of ITCH messages in C; counts what it drops."""

    __slots__ = ("records", "capacity", "decoded", "_counts")

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.records = ffi.new("al_itch_msg[]", capacity)
        self.decoded = 0
        self._counts = ffi.new("uint64_t[3]")

    def decode_packet(self, packet) -> int:
        """Decode one MoldUDP64 packet; returns how many records now hold its messages."""
        if type(packet) is not bytes:
            packet = ffi.from_buffer(packet)
        n = _decode(packet, len(packet), self.records, self.capacity, self._counts)
        self.decoded += n
        return n

    @property
    def unknown(self) -> int:
        return self._counts[lib.AL_ITCH_UNKNOWN]

    @property
    def malformed(self) -> int:
        return self._counts[lib.AL_ITCH_MALFORMED]

    @property
    def overflow(self) -> int:
        return self._counts[lib.AL_ITCH_OVERFLOW]
