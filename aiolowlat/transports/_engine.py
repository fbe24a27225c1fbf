"""What the af_xdp and dpdk transports share: engine config, start/stop, the datagram transport.

An engine (csrc/bypass_core.c) owns one NIC queue on a thread of its own, parses and
filters UDP/IPv4 in C and routes each datagram by (address, port) to one of its
endpoints' SPSC rings; one TX ring carries what they send. Every endpoint opened on
the same (transport, interface, namespace, queue) shares that engine, as sockets share
a NIC: the A and B lines of a feed and its request socket run on one engine and one core.
The loop learns of datagrams from an endpoint's eventfd (add_reader: any loop) or, with
``EngineConfig(poll=True)``, by draining the rings on every loop iteration.
Per datagram no Python frame and no cffi call runs: EngineEndpoint (csrc/evloop.c)
takes datagrams from the ring to protocol.datagram_received (or datagrams_received)
and is the transport's sendto(); EnginePoller is busy-poll mode's per-iteration
callback. Both call bp_recv/bp_send/bp_poll/bp_spin by pointer; Python keeps the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import os
from asyncio import transports

from .._native._evloop import EngineEndpoint, EnginePoller
from .errors import TransportUnavailableError

try:
    from .._native._bypass import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    ffi = lib = None
    _IMPORT_ERROR = exc
else:  # the per-datagram path (csrc/evloop.c) calls these without a cffi round trip
    _BP = {name: int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
           for name in ("bp_recv", "bp_send", "bp_poll", "bp_spin")}

_BATCH = 64  # datagrams per bp_recv; at most 16 batches per wake-up (csrc/evloop.c), so
# one busy feed cannot starve the loop
# Busy-poll mode spins this long in C between loop iterations (each iteration costs a
# system call in the loop): I/O on other descriptors of the loop waits at most this.
_SPIN_NS = 20_000
_XDP_MODES = {"auto": 0, "skb": 1, "native": 2}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Options of a kernel-bypass engine (af_xdp or dpdk); ``interface`` is required.

    local_ip/local_mac: the engine's own address (it answers ARP for local_ip; the MAC
    defaults to the interface's). static_arp: {ip: "aa:bb:..."} neighbours never asked.
    core: the CPU the engine thread is pinned to. busy_poll: the engine spins (else it
    sleeps in poll() when idle). poll: the loop drains the ring on every iteration
    instead of waiting for the eventfd. threaded=False: no engine thread, the loop
    runs the engine itself (needs poll=True). eal_args/vdev: DPDK only; the EAL is
    initialised once per process, with the first engine's eal_args; vdev "" is
    net_af_xdp on the interface, else net_af_packet (see transports/dpdk.py). Endpoints on the
    same (interface, netns, queue) share one engine, so they must agree on these options.
    """

    interface: str | None = None
    queue: int = 0
    netns: str | None = None
    local_ip: str | None = None
    local_mac: str | None = None
    vlan: int = 0
    static_arp: dict = dataclasses.field(default_factory=dict)
    core: int | None = None
    fifo_priority: int = 0
    busy_poll: bool = False
    poll: bool = False
    threaded: bool = True
    ring_slots: int = 4096
    slot_size: int = 2048
    xdp_mode: str = "auto"
    verify_udp_checksum: bool = True
    eal_args: str = ""
    vdev: str = ""


def _ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _packed_address(addr) -> int:
    """("a.b.c.d", port) as the key the C path sends to: ip << 16 | port."""
    port = int(addr[1])
    if not 0 <= port < 65536:
        raise OverflowError(f"port must be 0-65535, not {port}")
    return _ip(addr[0]) << 16 | port


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


def _c_config(cfg: EngineConfig, local_ip: str):
    c = ffi.new("struct bp_config *")
    lib.bp_config_init(c)
    c.ifname = cfg.interface.encode()
    if cfg.netns:
        c.netns = (cfg.netns if "/" in cfg.netns else f"/run/netns/{cfg.netns}").encode()
    c.queue, c.vlan, c.ip = cfg.queue, cfg.vlan, _ip(local_ip)
    c.core = -1 if cfg.core is None else cfg.core
    c.fifo_priority, c.busy_poll, c.threaded = cfg.fifo_priority, cfg.busy_poll, cfg.threaded
    c.ring_slots, c.slot_size = cfg.ring_slots, cfg.slot_size
    c.xdp_mode = _XDP_MODES[cfg.xdp_mode]
    c.verify_udp_checksum = cfg.verify_udp_checksum
    if cfg.local_mac:
        c.mac = _mac(cfg.local_mac)
    if len(cfg.static_arp) > lib.BP_MAX_STATIC_ARP:
        raise ValueError(f"at most {lib.BP_MAX_STATIC_ARP} static ARP entries per engine")
    c.narp = len(cfg.static_arp)
    for i, (ip, mac) in enumerate(cfg.static_arp.items()):
        c.arp_ip[i], c.arp_mac[i] = _ip(ip), _mac(mac)
    c.eal_args, c.vdev = cfg.eal_args.encode(), cfg.vdev.encode()
    return c


class Engine:
    """A started engine: endpoints, stats, local address, stop. Start blocks until the
    queue is ours."""

    def __init__(self, kind: str, cfg: EngineConfig, local_ip: str):
        self._handle = None
        if lib is None:
            raise TransportUnavailableError(
                f"transport {kind!r} needs aiolowlat's bypass module, which is not built: "
                "install libxdp-dev libbpf-dev libdpdk-dev dpdk pkg-config (Debian) and "
                f"reinstall aiolowlat. Cause: {_IMPORT_ERROR}")
        if not cfg.interface:
            raise ValueError(f"transport {kind!r} needs interface= (the NIC or veth to own)")
        if cfg.xdp_mode not in _XDP_MODES:
            raise ValueError(f"xdp_mode must be one of {', '.join(_XDP_MODES)}")
        if not cfg.threaded and not cfg.poll:
            raise ValueError("threaded=False needs poll=True: the loop then runs the engine")
        self.kind, self.config = kind, cfg
        self._c_config = _c_config(cfg, local_ip)
        self._error = ffi.new(f"char[{lib.BP_ERROR_LEN}]")
        engine_kind = lib.BP_KIND_XSK if kind == "af_xdp" else lib.BP_KIND_DPDK
        handle = lib.bp_start(engine_kind, self._c_config, self._error)
        if handle == ffi.NULL:
            raise TransportUnavailableError(
                f"{kind} engine on {cfg.interface}: {ffi.string(self._error).decode()}")
        self._handle = handle
        self._stats = ffi.new("struct bp_stats *")
        self._ep_stats = ffi.new("struct bp_ep_stats *")
        mac, ip = ffi.new("uint8_t[6]"), ffi.new("uint32_t *")
        lib.bp_local(handle, mac, ip)
        self.mac = bytes(ffi.buffer(mac)).hex(":")
        self.local_ip = str(ipaddress.IPv4Address(ip[0]))
        self.max_payload = lib.bp_max_payload(handle)
        self.endpoints: set[int] = set()
        self._transports: set = set()  # open EngineDatagramTransports: closed by stop()
        self._poller = _Poller(self)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def open(self, address: str, port: int, groups=()) -> int:
        """Route UDP to address:port (and to each group on port) to a new endpoint; its id."""
        if self._handle is None:
            raise RuntimeError("the engine is stopped")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a fixed UDP port")
        for group in groups:
            if not ipaddress.IPv4Address(group).is_multicast:
                raise ValueError(f"not an IPv4 multicast group: {group}")
        packed = [_ip(g) for g in groups]
        ep = lib.bp_open(self._handle, _ip(address), port, packed, len(packed), self._error)
        if ep < 0:
            raise OSError(errno.EADDRINUSE if "already" in ffi.string(self._error).decode()
                          else errno.ENOSPC, ffi.string(self._error).decode())
        self.endpoints.add(ep)
        return ep

    def close_endpoint(self, ep: int) -> None:
        if self._handle is not None and ep in self.endpoints:
            self.endpoints.discard(ep)
            lib.bp_close(self._handle, ep)

    def stats(self) -> dict:
        """Counters: rx/tx frames, ring overflows, ARP, and drops by reason."""
        if self._handle is None:
            return {}
        s = self._stats
        lib.bp_read_stats(self._handle, s)
        out = {name: getattr(s, name) for name in dir(s) if name != "drops"}
        reasons = ("short", "mac", "ethertype", "ip_header", "ip_checksum", "fragment",
                   "protocol", "ip_dst", "udp_length", "udp_checksum", "port", "arp", "vlan")
        out["drops"] = dict(zip(reasons, s.drops, strict=True))
        return out

    def endpoint_stats(self, ep: int) -> dict:
        """One endpoint's counters: datagrams routed to it, ring overflows, oversize."""
        if self._handle is None or ep not in self.endpoints:
            return {}
        lib.bp_read_ep_stats(self._handle, ep, self._ep_stats)
        return {name: getattr(self._ep_stats, name) for name in dir(self._ep_stats)}

    def stop(self) -> None:
        """Stop the thread; release the queue, XDP program or DPDK port, and memory."""
        handle, self._handle = self._handle, None
        if handle is not None:
            for transport in list(self._transports):  # while their eventfds still exist
                try:
                    transport.close()
                except RuntimeError:  # its loop is closed: nothing left to tell
                    pass
            self._poller.stop()
            self.endpoints.clear()
            for key, engine in list(_SHARED.items()):
                if engine is self:
                    del _SHARED[key]
            lib.bp_stop(handle)

    def __del__(self):
        self.stop()  # an engine must not outlive its owner: it holds a NIC queue


class _Poller:
    """Busy-poll mode: one C callback per loop iteration for all of an engine's endpoints
    (EnginePoller.run in csrc/evloop.c: spin, run the engine when it has no thread of its
    own, deliver, run it again); it puts its Handle back in the ready queue itself."""

    def __init__(self, engine: Engine):
        self._engine, self._transports, self._c, self._loop = engine, [], None, None

    def add(self, transport) -> None:
        self._transports.append(transport)
        if self._c is None or self._c.handle is None and self._loop is not transport._loop:
            engine, self._loop = self._engine, transport._loop
            self._c = EnginePoller(int(ffi.cast("uintptr_t", engine._handle)),
                                   engine.config.threaded, _SPIN_NS, _BP["bp_poll"],
                                   _BP["bp_spin"], transport._loop)
        self._c.endpoints = tuple(t._c for t in self._transports)
        if self._c.handle is None:
            self._c.handle = transport._loop.call_soon(self._c.run)

    def remove(self, transport) -> None:
        if transport in self._transports:
            self._transports.remove(transport)
        if self._c is not None:
            self._c.endpoints = tuple(t._c for t in self._transports)
        if not self._transports:
            self.cancel()

    def cancel(self) -> None:
        if self._c is not None:
            if self._c.handle is not None:
                self._c.handle.cancel()
                self._c.handle = None
            self._c.endpoints = ()

    def stop(self) -> None:
        """The engine is going: the C side must never touch it again."""
        self.cancel()
        if self._c is not None:
            self._c.h = 0


class EngineDatagramTransport(transports._FlowControlMixin, transports.DatagramTransport):
    """asyncio's DatagramTransport on one endpoint of a bypass engine: the same interface
    as 'kernel'. remote_addr: the default destination of sendto(data), as when connected."""

    def __init__(self, loop, engine: Engine, ep: int, protocol, port: int, remote_addr=None,
                 extra=None):
        super().__init__(extra, loop)
        self._engine, self._h, self._ep, self._port = engine, engine._handle, ep, port
        self._remote = (str(remote_addr[0]), int(remote_addr[1])) if remote_addr else None
        self._extra.update(sockname=(engine.local_ip, port), peername=self._remote,
                           engine=engine, interface=engine.config.interface, mac=engine.mac,
                           timestamps=True)
        self._slot = engine.max_payload
        self._buf = ffi.new(f"uint8_t[{self._slot * _BATCH}]")
        self._view = memoryview(ffi.buffer(self._buf))
        self._peers = {}  # ip << 16 | port -> ("a.b.c.d", port)
        self._packed = {}  # address -> ip << 16 | port, for sendto
        remote = _packed_address(self._remote) if self._remote else -1
        # The receive path and sendto() in C (csrc/evloop.c); Python below takes the rest.
        self._c = EngineEndpoint(self, int(ffi.cast("uintptr_t", self._h)), ep, port,
                                 int(ffi.cast("uintptr_t", self._buf)), self._slot,
                                 _BP["bp_recv"], _BP["bp_send"], remote, self._peers,
                                 self._packed)
        self.sendto = self._c  # an instance attribute: protocols call straight into C
        self._drain = self._c.drain
        self._efd = lib.bp_eventfd(self._h, ep)
        self._poll_mode = engine.config.poll
        self._closing = self._reading = self._lost = False
        engine._transports.add(self)
        self.set_protocol(protocol)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self.resume_reading)

    def set_protocol(self, protocol):
        self._protocol = self._c.protocol = protocol
        self._c.batched = callable(getattr(protocol, "datagrams_received", None))

    @property
    def truncated(self) -> int:
        """Datagrams longer than max_payload (a wider ring slot_size), dropped."""
        return self._c.truncated

    def get_protocol(self):
        return self._protocol

    def stats(self) -> dict:
        """The engine's counters, with this endpoint's own under "endpoint"."""
        return {**self._engine.stats(), "endpoint": self._engine.endpoint_stats(self._ep)}

    # -- reading --

    def is_reading(self):
        return self._reading

    def pause_reading(self):
        if not self._reading:
            return
        self._reading = self._c.reading = False
        if self._poll_mode:
            self._engine._poller.remove(self)
        else:
            self._loop.remove_reader(self._efd)

    def resume_reading(self):
        if self._reading or self._closing:
            return
        self._reading = self._c.reading = True
        if self._poll_mode:
            self._engine._poller.add(self)
        else:
            self._loop.add_reader(self._efd, self._wake)
            self._rearm()

    def _wake(self):
        try:
            os.read(self._efd, 8)
        except BlockingIOError:
            pass
        try:
            self._drain()
        finally:  # SystemExit from a callback: the loop may run on, so stay armed
            if self._reading:
                self._rearm()

    def _rearm(self):
        # Arm, and drain once more if a datagram slipped in before the arm was seen.
        while self._reading and self._engine._handle is not None and \
                lib.bp_arm(self._h, self._ep):
            if not self._drain():
                break

    def _peer(self, key):
        """The address for a sender ip << 16 | port, decoded once and cached (called from C)."""
        if len(self._peers) > 4096:
            self._peers.clear()
        addr = self._peers[key] = (str(ipaddress.IPv4Address(key >> 16)), key & 0xFFFF)
        return addr

    def _dgram_failed(self, protocol, method, exc):
        """A callback, called from C, raised: report it as call_protocol does."""
        callback = getattr(protocol, method, None)
        self._loop.call_exception_handler({
            "message": f"Exception in {getattr(callback, '__qualname__', method)}",
            "exception": exc, "transport": self, "protocol": self._protocol})

    # -- writing --

    def _sendto(self, data, addr=None):
        """sendto() for what the C path (self.sendto) does not take: other types, a new
        address, no address, a closing endpoint."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if addr is None:
            addr = self._remote
            if addr is None:
                raise ValueError("this endpoint has no remote_addr: sendto needs addr")
        if self._closing or self._engine._handle is None:
            return
        packed = self._packed.get(addr)
        if packed is None:
            if len(self._packed) > 4096:
                self._packed.clear()
            packed = self._packed[addr] = _packed_address(addr)
        if type(data) is not bytes:  # bytearray, memoryview: as asyncio's transports take
            data = ffi.from_buffer(data)
        rc = lib.bp_send(self._h, packed >> 16, packed & 0xFFFF, self._port, data, len(data))
        if rc < 0:
            self._send_failed(rc)

    def _send_failed(self, rc):
        # -EMSGSIZE, or -ENOBUFS: the engine's TX ring is full (counted)
        self._protocol.error_received(OSError(-rc, os.strerror(-rc)))

    def get_write_buffer_size(self):
        return 0  # queued in the engine's ring; a full ring is reported, never buffered

    # -- closing --

    def is_closing(self):
        return self._closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self._c.h = 0  # sendto and the receive path take the Python path, which stops
        self.pause_reading()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._call_connection_lost)

    abort = close

    def _call_connection_lost(self):
        try:
            self._protocol.connection_lost(None)
        finally:
            self._engine._transports.discard(self)
            self._c.protocol = None  # the protocol is gone: hold no reference to it
            _release(self._engine, self._ep)


# Engines shared by the endpoints of one (kind, interface, netns, queue), as a NIC queue is.
_SHARED: dict[tuple, Engine] = {}


def _release(engine: Engine, ep: int) -> None:
    """Close an endpoint; the engine stops with its last one."""
    engine.close_endpoint(ep)
    if not engine.endpoints:
        engine.stop()


def _endpoint_address(kind, local_addr, groups, cfg: EngineConfig):
    """(engine IP, bound address, port, groups) for local_addr on an engine."""
    if not local_addr or not local_addr[1]:
        raise ValueError(f"transport {kind!r} needs local_addr with a fixed port (no ephemeral "
                         "ports without a kernel stack)")
    host, port = local_addr[0], int(local_addr[1])
    if ipaddress.IPv4Address(host).is_multicast:
        groups = tuple(dict.fromkeys((*groups, host)))
        if not cfg.local_ip:
            raise ValueError(f"transport {kind!r} with a multicast local_addr needs "
                             "EngineConfig(local_ip=...): the engine's own address, for ARP")
        return cfg.local_ip, host, port, groups
    if cfg.local_ip and cfg.local_ip != host:
        raise ValueError(f"local_addr {host} and EngineConfig.local_ip {cfg.local_ip} differ")
    return host, host, port, groups


async def _shared_engine(kind, cfg: EngineConfig, local_ip: str) -> Engine:
    key = (kind, cfg.interface, cfg.netns, cfg.queue)
    engine = _SHARED.get(key)
    if engine is not None and engine.running:
        if dataclasses.replace(engine.config, local_ip=None) != \
                dataclasses.replace(cfg, local_ip=None):
            raise ValueError(f"{kind} engine on {cfg.interface} queue {cfg.queue} already runs "
                             f"with other options ({engine.config}): its endpoints share it, "
                             "so give them the same EngineConfig")
        if engine.local_ip != local_ip:
            raise ValueError(f"{kind} engine on {cfg.interface} queue {cfg.queue} has the "
                             f"address {engine.local_ip}, not {local_ip}")
        return engine
    loop = asyncio.get_running_loop()
    engine = await loop.run_in_executor(None, Engine, kind, cfg, local_ip)
    other = _SHARED.get(key)
    if other is not None and other.running:  # another task started one meanwhile
        engine.stop()
        return other
    _SHARED[key] = engine
    return engine


async def open_endpoint(kind, protocol_factory, *, local_addr, groups=(), interface=None,
                        remote_addr=None, engine: EngineConfig | dict | None = None):
    """Open an endpoint on the ``kind`` engine ("af_xdp" | "dpdk") of the configured queue
    (started with the first endpoint, stopped with the last); returns (transport, protocol)."""
    cfg = engine if isinstance(engine, EngineConfig) else EngineConfig(**(engine or {}))
    if interface and not cfg.interface:
        cfg = dataclasses.replace(cfg, interface=interface)
    local_ip, address, port, groups = _endpoint_address(kind, local_addr, tuple(groups), cfg)
    started = await _shared_engine(kind, cfg, local_ip)
    ep = None
    try:
        ep = started.open(address, port, groups)
        protocol = protocol_factory()
        transport = EngineDatagramTransport(asyncio.get_running_loop(), started, ep, protocol,
                                            port, remote_addr)
    except BaseException:
        if ep is None and not started.endpoints:
            started.stop()
        elif ep is not None:
            _release(started, ep)
        raise
    await asyncio.sleep(0)  # connection_made runs before the caller sees the endpoint
    return transport, protocol


__all__ = ["Engine", "EngineConfig", "EngineDatagramTransport", "open_endpoint"]
