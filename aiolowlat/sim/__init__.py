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


def __getattr__(name):
    # The WebSocket and FIX exchanges pull in their servers: imported on first use.
    if name == "WsExchange":
        from .ws_exchange import WsExchange

        return WsExchange
    if name in ("FixExchange", "MatchingEngine"):
        from . import fix_exchange

        return getattr(fix_exchange, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Datagram",
    "FixExchange",
    "MatchingEngine",
    "WsExchange",
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
