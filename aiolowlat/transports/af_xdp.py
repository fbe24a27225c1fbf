"""The af_xdp transport: an AF_XDP socket (libxdp, copy mode) on a pinned engine thread.

    transport, protocol = await open_datagram_endpoint(
        Handler, transport="af_xdp", local_addr=("239.1.1.1", 30001), groups=["239.1.1.1"],
        engine=EngineConfig(interface="eth1", local_ip="10.0.0.5", core=1, busy_poll=True))

The XSK takes every packet of its queue, ARP included: the engine answers ARP for
local_ip and resolves destinations itself. Every endpoint opened on the same interface
and queue (a feed's A and B lines, its request socket) shares that one engine and
core; each gets the datagrams for its (address or group, port). A leftover libxdp program from a process
that died is detached at start; stop detaches ours.
"""

from __future__ import annotations

from . import _engine
from ._engine import EngineConfig


async def open_endpoint(protocol_factory, **kwargs):
    return await _engine.open_endpoint("af_xdp", protocol_factory, **kwargs)


__all__ = ["EngineConfig", "open_endpoint"]
