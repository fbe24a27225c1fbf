"""Market-data datagram endpoints on swappable transports, picked by one config value.

    transport, protocol = await open_datagram_endpoint(
        Handler, transport="uring", local_addr=("239.1.1.1", 30001),
        groups=["239.1.1.1"], interface="eth1", rcvbuf=8 << 20)

Every transport returns an asyncio DatagramTransport driving an asyncio
DatagramProtocol, so strategy code runs unchanged on each. A protocol that
defines ``datagrams_received(batch)`` gets a list of (data, addr, rx_ns) per
loop iteration instead of one ``datagram_received`` call per datagram; rx_ns is
the kernel's receive time (CLOCK_REALTIME ns; hardware when the NIC stamps).
"""

from __future__ import annotations

import asyncio

from . import af_xdp, dpdk, kernel, uring
from ._engine import EngineConfig
from ._socket import (
    SocketBufferWarning,
    enable_nic_timestamps,
    join_group,
    leave_group,
    nic_timestamping,
    open_udp_socket,
)
from .errors import TransportUnavailableError

TRANSPORTS = ("kernel", "uring", "af_xdp", "dpdk")

_FACTORIES = {
    "kernel": lambda loop, sock, protocol, extra: kernel.KernelDatagramTransport(
        loop, sock, protocol, extra),
    "uring": uring.make_transport,
    # Kernel-bypass engines own a NIC queue instead of a socket: async openers.
    "af_xdp": af_xdp.open_endpoint,
    "dpdk": dpdk.open_endpoint,
}
_ENGINES = ("af_xdp", "dpdk")


async def open_datagram_endpoint(protocol_factory, *, transport: str = "kernel", local_addr=None,
                                 groups=(), interface: str | None = None,
                                 source: str | None = None, reuse_port: bool = True,
                                 rcvbuf: int | None = None, rcvbuf_force: bool = False,
                                 timestamps: bool = True, sock=None, remote_addr=None,
                                 engine: EngineConfig | dict | None = None):
    """Open a market-data datagram endpoint on ``transport``; returns (transport, protocol).

    ``sock``: a socket already set up by open_udp_socket (e.g. in another network
    namespace), instead of local_addr and the options. ``remote_addr``: the one peer
    (a retransmission server, say): ``sendto(data)`` goes there, and a socket is
    connected to it, so it hears from no one else. ``engine``: the options of
    the af_xdp and dpdk engines (EngineConfig: queue, core, local IP/MAC, EAL args,
    static ARP, ...); ``interface`` is the NIC they own.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r}: choose one of {', '.join(TRANSPORTS)}")
    factory = _FACTORIES.get(transport)
    if factory is None:
        raise TransportUnavailableError(
            f"transport {transport!r} is not available in this build yet; "
            "use 'kernel' (any loop) or 'uring' (the aiolowlat loop)")
    if transport in _ENGINES:
        return await factory(protocol_factory, local_addr=local_addr, groups=groups,
                             interface=interface, remote_addr=remote_addr, engine=engine)
    loop = asyncio.get_running_loop()
    if sock is None:
        sock, extra = open_udp_socket(local_addr, groups=groups, interface=interface,
                                      source=source, reuse_port=reuse_port, rcvbuf=rcvbuf,
                                      rcvbuf_force=rcvbuf_force, timestamps=timestamps)
    else:
        sock.setblocking(False)
        extra = {"timestamps": timestamps}  # the caller set the socket up accordingly
    try:
        if remote_addr is not None:
            sock.connect(remote_addr)
            extra["peername"] = sock.getpeername()
        protocol = protocol_factory()
        endpoint = factory(loop, sock, protocol, extra)
    except BaseException:
        sock.close()
        raise
    await asyncio.sleep(0)  # connection_made runs before the caller sees the endpoint
    return endpoint, protocol


__all__ = ["TRANSPORTS", "EngineConfig", "SocketBufferWarning", "TransportUnavailableError",
           "enable_nic_timestamps", "join_group", "leave_group", "nic_timestamping",
           "open_datagram_endpoint", "open_udp_socket"]
