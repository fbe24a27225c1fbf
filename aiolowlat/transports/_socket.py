"""UDP socket set-up shared by every market-data transport: groups, buffers, timestamps."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import socket
import struct
import warnings

from .._datagram import pack_sockaddr

# Linux values; Python's socket module lacks some of them.
SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_RX_HARDWARE = 1 << 2
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_RAW_HARDWARE = 1 << 6
IP_MULTICAST_ALL = 49
MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP = 42, 45
MCAST_JOIN_SOURCE_GROUP, MCAST_LEAVE_SOURCE_GROUP = 46, 47
_SOCKADDR_STORAGE = 128


class SocketBufferWarning(RuntimeWarning):
    """The kernel gave a smaller receive buffer than asked: bursts may be dropped."""


def _storage(family: int, address) -> bytes:
    raw = pack_sockaddr(family, address)
    return raw + bytes(_SOCKADDR_STORAGE - len(raw))


def _group_request(family, group, interface, source):
    """struct group_req / group_source_req (RFC 3678): interface index, then addresses."""
    index = socket.if_nametoindex(interface) if interface else 0
    head = struct.pack("=I4x", index)  # the pad aligns sockaddr_storage to 8
    if source is None:
        return head + _storage(family, (group, 0))
    return head + _storage(family, (group, 0)) + _storage(family, (source, 0))


def join_group(sock, group: str, interface: str | None = None, source: str | None = None):
    """Join ``group`` on ``interface`` (by name); source-specific when ``source`` is given."""
    level = socket.IPPROTO_IP if sock.family == socket.AF_INET else socket.IPPROTO_IPV6
    opt = MCAST_JOIN_GROUP if source is None else MCAST_JOIN_SOURCE_GROUP
    sock.setsockopt(level, opt, _group_request(sock.family, group, interface, source))


def leave_group(sock, group: str, interface: str | None = None, source: str | None = None):
    """Leave what join_group joined."""
    level = socket.IPPROTO_IP if sock.family == socket.AF_INET else socket.IPPROTO_IPV6
    opt = MCAST_LEAVE_GROUP if source is None else MCAST_LEAVE_SOURCE_GROUP
    sock.setsockopt(level, opt, _group_request(sock.family, group, interface, source))


SO_RCVBUFFORCE = 33


def set_receive_buffer(sock, size: int, force: bool = False) -> int:
    """Ask for ``size`` bytes of receive buffer; return what the kernel granted.

    ``force``: past net.core.rmem_max with SO_RCVBUFFORCE (needs CAP_NET_ADMIN).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux doubles it
    if granted < size and force:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        except PermissionError:
            pass  # no CAP_NET_ADMIN: the warning below says what to do
    if granted < size:
        try:
            with open("/proc/sys/net/core/rmem_max") as f:
                rmem_max = int(f.read())
        except OSError:
            rmem_max = granted
        warnings.warn(
            f"SO_RCVBUF is {granted} bytes, not the {size} asked for: the kernel caps it at "
            f"net.core.rmem_max={rmem_max}. Raise it (sysctl -w net.core.rmem_max={size}) "
            f"or bursts will be dropped by the kernel.", SocketBufferWarning, stacklevel=3)
    return granted


def enable_timestamps(sock) -> None:
    """Kernel receive timestamps on every datagram: hardware ones where the NIC stamps
    packets (SO_TIMESTAMPING raw hardware), software ones always."""
    flags = (SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
             | SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)


# The NIC side of hardware stamps (linux/ethtool.h, linux/net_tstamp.h, linux/sockios.h).
SIOCETHTOOL, SIOCGHWTSTAMP, SIOCSHWTSTAMP = 0x8946, 0x89B1, 0x89B0
ETHTOOL_GET_TS_INFO = 0x41
HWTSTAMP_FILTER_NONE, HWTSTAMP_FILTER_ALL = 0, 1
_TS_INFO = struct.Struct("=IIiI3II3I")  # cmd so_timestamping phc_index tx_types .. rx_filters ..
_HWTSTAMP_CONFIG = struct.Struct("=iii")  # flags tx_type rx_filter
_HW_RX = SOF_TIMESTAMPING_RX_HARDWARE | SOF_TIMESTAMPING_RAW_HARDWARE


def _nic_ioctl(sock, request: int, interface: str, data: ctypes.Array) -> None:
    """An interface ioctl whose ifreq carries a pointer to ``data`` (filled in place)."""
    ifreq = struct.pack("16sP16x", interface.encode()[:15], ctypes.addressof(data))
    fcntl.ioctl(sock.fileno(), request, ifreq)


def nic_timestamping(interface: str) -> tuple[int, int, int]:
    """What ``ethtool -T`` shows: (SOF_TIMESTAMPING_* capabilities, PTP clock index or -1,
    bit mask of the HWTSTAMP_FILTER_* receive filters). OSError for a bad interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        info = ctypes.create_string_buffer(_TS_INFO.pack(ETHTOOL_GET_TS_INFO, *[0] * 10))
        _nic_ioctl(probe, SIOCETHTOOL, interface, info)
    _, caps, phc_index, _, _, _, _, rx_filters, *_ = _TS_INFO.unpack_from(info.raw)
    return caps, phc_index, rx_filters


def enable_nic_timestamps(interface: str) -> tuple[bool, str]:
    """Switch on the NIC's hardware receive stamps where it offers them (as ``hwstamp_ctl
    -r 1`` does); returns (on, why). SO_TIMESTAMPING then hands them up with each datagram."""
    try:
        caps, _, rx_filters = nic_timestamping(interface)
    except OSError as exc:
        return False, f"{interface}: cannot read its timestamping capabilities ({exc.strerror})"
    if caps & _HW_RX != _HW_RX or not rx_filters & (1 << HWTSTAMP_FILTER_ALL):
        return False, (f"{interface} offers no hardware receive timestamps (ethtool -T "
                       f"{interface}); software ones are used")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        config = ctypes.create_string_buffer(_HWTSTAMP_CONFIG.size)
        try:
            _nic_ioctl(probe, SIOCGHWTSTAMP, interface, config)
            flags, tx_type, rx_filter = _HWTSTAMP_CONFIG.unpack_from(config.raw)
            if rx_filter != HWTSTAMP_FILTER_NONE:
                return True, f"{interface} already stamps received packets (filter {rx_filter})"
            config.raw = _HWTSTAMP_CONFIG.pack(flags, tx_type, HWTSTAMP_FILTER_ALL)
            _nic_ioctl(probe, SIOCSHWTSTAMP, interface, config)
        except OSError as exc:
            fix = " (needs CAP_NET_ADMIN)" if exc.errno == errno.EPERM else ""
            return False, f"{interface}: enabling hardware timestamps failed: {exc.strerror}{fix}"
        return True, f"{interface} stamps every received packet in hardware"


def open_udp_socket(local_addr, *, groups=(), interface=None, source=None, reuse_port=True,
                    rcvbuf=None, rcvbuf_force=False, timestamps=True):
    """A non-blocking UDP socket bound to ``local_addr`` with the market-data options set.

    Returns (socket, extra) where extra holds what took effect (rcvbuf, groups, timestamps,
    and with an ``interface`` whether its NIC stamps in hardware, and why not).
    """
    host, port = local_addr[:2]
    family = socket.AF_INET6 if ipaddress.ip_address(host or "0.0.0.0").version == 6 \
        else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        extra = {"groups": tuple(groups), "interface": interface, "source": source}
        if family == socket.AF_INET and groups:
            # Only the groups this socket joined, not every group the host joined on the port.
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        if rcvbuf:
            extra["rcvbuf"] = set_receive_buffer(sock, rcvbuf, rcvbuf_force)
        if timestamps:
            enable_timestamps(sock)
            if interface:
                extra["hardware_timestamps"], extra["hardware_timestamps_detail"] = \
                    enable_nic_timestamps(interface)
        extra["timestamps"] = timestamps
        sock.bind((host, port))
        for group in groups:
            join_group(sock, group, interface, source)
        return sock, extra
    except BaseException:
        sock.close()
        raise
