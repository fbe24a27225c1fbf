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
from .itch_publisher import ItchPublisher, RetransmissionServer

__all__ = [
    "Datagram",
    "ItchFeed",
    "ItchPublisher",
    "LineImpairment",
    "LineReport",
    "RetransmissionServer",
    "RetransmissionStore",
    "generate_session",
    "merge_lines",
    "packetize",
    "schedule_line",
]
