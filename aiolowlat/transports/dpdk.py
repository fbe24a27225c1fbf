"""The dpdk transport: a DPDK port (virtual device) polled by a pinned engine thread.

    transport, protocol = await open_datagram_endpoint(
        Handler, transport="dpdk", local_addr=("10.0.0.5", 30001),
        engine=EngineConfig(interface="eth1", core=1, busy_poll=True))

Defaults need no hugepages or PCI device: EAL "--no-huge --no-pci --no-shconf -m 256"
and the vdev "net_af_xdp,iface=<interface>" (an XSK in copy mode; busy_budget=0 unless
busy_poll), or "net_af_packet,iface=<interface>,framecnt=4096" when the interface takes no
XDP program (stats()["xdp_mode"] is then 0). Any other vdev, net_tap say, through
EngineConfig.vdev. DPDK's EAL is initialised once per process, by the
first engine, with its eal_args; each engine then hot-plugs and removes its own port,
so engines start and stop freely, but later engines cannot change the EAL arguments.
As with af_xdp, endpoints on the same interface and queue share one engine and port.
"""

from __future__ import annotations

from . import _engine
from ._engine import EngineConfig


async def open_endpoint(protocol_factory, **kwargs):
    return await _engine.open_endpoint("dpdk", protocol_factory, **kwargs)


__all__ = ["EngineConfig", "open_endpoint"]
