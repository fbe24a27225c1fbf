"""Test hosts: network namespaces joined by a veth pair, made and removed by the tests.

Sockets are created inside a namespace by a helper thread that entered it with
setns(2) (namespaces are per thread); the socket stays in that namespace and the
test's event loop uses it from the main thread.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import subprocess
import uuid

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _enter(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
    finally:
        os.close(fd)


def in_netns(name: str, fn, *args):
    """Run ``fn(*args)`` in network namespace ``name`` (in a thread that entered it)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_enter, name).result(timeout=10)
        return pool.submit(fn, *args).result(timeout=30)


class VethPair:
    """Namespaces ``a`` and ``b`` joined by veth ``dev_a`` (192.0.2.1 and .3) <-> ``dev_b``
    (192.0.2.2).

    Addresses are from TEST-NET-1 and exist only inside these namespaces; both have
    loopback up with multicast on.
    """

    addr_a, addr_b, addr_a2 = "192.0.2.1", "192.0.2.2", "192.0.2.3"

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"al-a-{tag}", f"al-b-{tag}"
        self.dev_a, self.dev_b = f"al{tag}a", f"al{tag}b"

    def __enter__(self):
        ip("netns", "add", self.a)
        try:
            ip("netns", "add", self.b)
            ip("link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b)
            ip("link", "set", self.dev_a, "netns", self.a)
            ip("link", "set", self.dev_b, "netns", self.b)
            for ns, dev, addr in ((self.a, self.dev_a, self.addr_a),
                                  (self.b, self.dev_b, self.addr_b)):
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                ip("-n", ns, "link", "set", dev, "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "link", "set", "lo", "multicast", "on")
            ip("-n", self.a, "addr", "add", f"{self.addr_a2}/24", "dev", self.dev_a)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for ns in (self.a, self.b):  # deleting a namespace removes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
