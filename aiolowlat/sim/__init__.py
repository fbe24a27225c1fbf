"""Local exchange simulators for the demo, the examples and the tests."""

from .itch_feed import (
    Datagram,
    ItchFeed,
    LineImpairment,
    LineReport,
    RetransmissionStore,
    generate_session,
    merge_lines,
    packetize,
    schedule_line,
)

__all__ = [
    "Datagram",
    "ItchFeed",
    "LineImpairment",
    "LineReport",
    "RetransmissionStore",
    "generate_session",
    "merge_lines",
    "packetize",
    "schedule_line",
]
