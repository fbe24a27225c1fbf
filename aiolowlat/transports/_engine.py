"""What the af_xdp and dpdk transports share: engine config, start/stop, the datagram transport.

An engine (csrc/bypass_core.c) owns one NIC queue on a thread of its own, parses and
filters UDP/IPv4 in C and exchanges datagrams with the loop through two SPSC rings.
The loop learns of datagrams from the engine's eventfd (add_reader: any loop) or, with
``EngineConfig(poll=True)``, by draining the ring on every loop iteration.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
from asyncio import transports

from .._datagram import call_protocol
from .errors import TransportUnavailableError

try:
    from .._native._bypass import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    ffi = lib = None
    _IMPORT_ERROR = exc

_BATCH = 64
_ROUNDS = 16  # batches per wake-up, so one busy feed cannot starve the loop
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
    initialised once per process, with the first engine's eal_args.
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


def _mac(text: str) -> bytes:
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


def _c_config(cfg: EngineConfig, local_ip: str, port: int, groups):
    c = ffi.new("struct bp_config *")
    lib.bp_config_init(c)
    c.ifname = cfg.interface.encode()
    if cfg.netns:
        c.netns = (cfg.netns if "/" in cfg.netns else f"/run/netns/{cfg.netns}").encode()
    c.queue, c.vlan, c.ip, c.port = cfg.queue, cfg.vlan, _ip(local_ip), port
    c.core = -1 if cfg.core is None else cfg.core
    c.fifo_priority, c.busy_poll, c.threaded = cfg.fifo_priority, cfg.busy_poll, cfg.threaded
    c.ring_slots, c.slot_size = cfg.ring_slots, cfg.slot_size
    c.xdp_mode = _XDP_MODES[cfg.xdp_mode]
    c.verify_udp_checksum = cfg.verify_udp_checksum
    if cfg.local_mac:
        c.mac = _mac(cfg.local_mac)
    if len(groups) > len(c.groups) or len(cfg.static_arp) > lib.BP_MAX_STATIC_ARP:
        raise ValueError(f"at most {len(c.groups)} groups and {lib.BP_MAX_STATIC_ARP} "
                         "static ARP entries per engine")
    c.ngroups = len(groups)
    for i, group in enumerate(groups):
        if not ipaddress.IPv4Address(group).is_multicast:
            raise ValueError(f"not an IPv4 multicast group: {group}")
        c.groups[i] = _ip(group)
    c.narp = len(cfg.static_arp)
    for i, (ip, mac) in enumerate(cfg.static_arp.items()):
        c.arp_ip[i], c.arp_mac[i] = _ip(ip), _mac(mac)
    c.eal_args, c.vdev = cfg.eal_args.encode(), cfg.vdev.encode()
    return c


class Engine:
    """A started engine: stats, local address, stop. Start blocks until the queue is ours."""

    def __init__(self, kind: str, cfg: EngineConfig, local_ip: str, port: int, groups=()):
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
        self._c_config = _c_config(cfg, local_ip, port, groups)
        error = ffi.new(f"char[{lib.BP_ERROR_LEN}]")
        engine_kind = lib.BP_KIND_XSK if kind == "af_xdp" else lib.BP_KIND_DPDK
        handle = lib.bp_start(engine_kind, self._c_config, error)
        if handle == ffi.NULL:
            raise TransportUnavailableError(
                f"{kind} engine on {cfg.interface}: {ffi.string(error).decode()}")
        self._handle = handle
        self._stats = ffi.new("struct bp_stats *")
        mac, ip = ffi.new("uint8_t[6]"), ffi.new("uint32_t *")
        lib.bp_local(handle, mac, ip)
        self.mac = bytes(ffi.buffer(mac)).hex(":")
        self.local_ip, self.port = str(ipaddress.IPv4Address(ip[0])), port
        self.max_payload = lib.bp_max_payload(handle)

    @property
    def running(self) -> bool:
        return self._handle is not None

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

    def stop(self) -> None:
        """Stop the thread; release the queue, XDP program or DPDK port, and memory."""
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.bp_stop(handle)

    def __del__(self):
        self.stop()  # an engine must not outlive its owner: it holds a NIC queue


class EngineDatagramTransport(transports._FlowControlMixin, transports.DatagramTransport):
    """asyncio's DatagramTransport on a bypass engine: the same interface as 'kernel'."""

    def __init__(self, loop, engine: Engine, protocol, extra=None):
        super().__init__(extra, loop)
        self._engine, self._h = engine, engine._handle
        self._extra.update(sockname=(engine.local_ip, engine.port), peername=None,
                           engine=engine, interface=engine.config.interface, mac=engine.mac,
                           timestamps=True)
        self._slot = engine.max_payload
        self._buf = ffi.new(f"uint8_t[{self._slot * _BATCH}]")
        self._view = memoryview(ffi.buffer(self._buf))
        self._lens = ffi.new(f"int32_t[{_BATCH}]")
        self._ips = ffi.new(f"uint32_t[{_BATCH}]")
        self._ports = ffi.new(f"uint16_t[{_BATCH}]")
        self._stamps = ffi.new(f"int64_t[{_BATCH}]")
        self._peers = {}  # (ip, port) -> ("a.b.c.d", port)
        self._packed = {}  # address -> (ip, port) for sendto
        self._efd = lib.bp_eventfd(self._h)
        self._poll_mode, self._inline = engine.config.poll, not engine.config.threaded
        self._poll_handle = None
        self._closing = self._reading = self._lost = False
        self.set_protocol(protocol)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self.resume_reading)

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._batched = callable(getattr(protocol, "datagrams_received", None))

    def get_protocol(self):
        return self._protocol

    def stats(self) -> dict:
        return self._engine.stats()

    # -- reading --

    def is_reading(self):
        return self._reading

    def pause_reading(self):
        if not self._reading:
            return
        self._reading = False
        if self._poll_mode:
            if self._poll_handle is not None:
                self._poll_handle.cancel()
                self._poll_handle = None
        else:
            self._loop.remove_reader(self._efd)

    def resume_reading(self):
        if self._reading or self._closing:
            return
        self._reading = True
        if self._poll_mode:
            self._poll_handle = self._loop.call_soon(self._poll)
        else:
            self._loop.add_reader(self._efd, self._wake)
            self._rearm()

    def _poll(self):
        """Busy-poll mode: drain on every loop iteration (the loop never sleeps)."""
        if self._inline:
            lib.bp_poll(self._h)
            if self._drain():  # answers sent from the callbacks leave now, not next iteration
                lib.bp_poll(self._h)
        else:
            self._drain()
        if self._reading:
            self._poll_handle = self._loop.call_soon(self._poll)

    def _wake(self):
        try:
            os.read(self._efd, 8)
        except BlockingIOError:
            pass
        self._drain()
        if self._reading:
            self._rearm()

    def _rearm(self):
        # Arm, and drain once more if a datagram slipped in before the arm was seen.
        while self._reading and lib.bp_arm(self._h):
            if not self._drain():
                break

    def _drain(self) -> int:
        batch = []
        total = 0
        for _ in range(_ROUNDS):
            n = lib.bp_recv(self._h, self._buf, self._slot, _BATCH, self._lens, self._ips,
                            self._ports, self._stamps)
            total += n
            self._collect(n, batch)
            if n < _BATCH:
                break
        if batch:
            if self._batched:
                call_protocol(self, self._protocol.datagrams_received, batch)
            else:
                for data, addr, _ in batch:
                    call_protocol(self, self._protocol.datagram_received, data, addr)
        return total

    def _collect(self, n, batch):
        if not n:
            return
        lens, ips = ffi.unpack(self._lens, n), ffi.unpack(self._ips, n)
        ports, stamps = ffi.unpack(self._ports, n), ffi.unpack(self._stamps, n)
        view, slot, peers = self._view, self._slot, self._peers
        for i in range(n):
            key = (ips[i], ports[i])
            addr = peers.get(key)
            if addr is None:
                if len(peers) > 4096:
                    peers.clear()
                addr = peers[key] = (str(ipaddress.IPv4Address(ips[i])), ports[i])
            batch.append((view[i * slot:i * slot + lens[i]].tobytes(), addr, stamps[i]))

    # -- writing --

    def sendto(self, data, addr=None):
        if addr is None:
            raise ValueError("a bypass transport is not connected: sendto needs addr")
        if self._closing:
            return
        packed = self._packed.get(addr)
        if packed is None:
            packed = self._packed[addr] = (_ip(addr[0]), int(addr[1]))
        rc = lib.bp_send(self._h, packed[0], packed[1], self._engine.port, data, len(data))
        if rc < 0:  # -EMSGSIZE, or -ENOBUFS: the engine's TX ring is full (counted)
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
        self.pause_reading()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._call_connection_lost)

    abort = close

    def _call_connection_lost(self):
        try:
            self._protocol.connection_lost(None)
        finally:
            self._engine.stop()


def _local_address(kind, local_addr, groups, cfg: EngineConfig):
    if not local_addr or not local_addr[1]:
        raise ValueError(f"transport {kind!r} needs local_addr with a fixed port (no ephemeral "
                         "ports without a kernel stack)")
    host, port = local_addr[0], int(local_addr[1])
    if ipaddress.IPv4Address(host).is_multicast:
        groups = tuple(dict.fromkeys((*groups, host)))
        host = cfg.local_ip
        if not host:
            raise ValueError(f"transport {kind!r} with a multicast local_addr needs "
                             "EngineConfig(local_ip=...): the engine's own address, for ARP")
    elif cfg.local_ip and cfg.local_ip != host:
        raise ValueError(f"local_addr {host} and EngineConfig.local_ip {cfg.local_ip} differ")
    return host, port, groups


async def open_endpoint(kind, protocol_factory, *, local_addr, groups=(), interface=None,
                        engine: EngineConfig | dict | None = None):
    """Start a ``kind`` engine ("af_xdp" | "dpdk") and return (transport, protocol)."""
    cfg = engine if isinstance(engine, EngineConfig) else EngineConfig(**(engine or {}))
    if interface and not cfg.interface:
        cfg = dataclasses.replace(cfg, interface=interface)
    host, port, groups = _local_address(kind, local_addr, tuple(groups), cfg)
    loop = asyncio.get_running_loop()
    started = await loop.run_in_executor(None, Engine, kind, cfg, host, port, groups)
    try:
        protocol = protocol_factory()
        transport = EngineDatagramTransport(loop, started, protocol)
    except BaseException:
        started.stop()
        raise
    await asyncio.sleep(0)  # connection_made runs before the caller sees the endpoint
    return transport, protocol


__all__ = ["Engine", "EngineConfig", "EngineDatagramTransport", "open_endpoint"]
