"""The uring transport: multishot recvmsg into provided buffers, on the aiolowlat loop."""

from __future__ import annotations

from .._datagram import UringDatagramTransport
from ..loop import Loop
from .errors import TransportUnavailableError


def make_transport(loop, sock, protocol, extra):
    if not isinstance(loop, Loop):
        raise TransportUnavailableError(
            f"transport 'uring' needs the aiolowlat loop, not {type(loop).__module__}."
            f"{type(loop).__name__}: run with aiolowlat.run() or aiolowlat.install(), "
            "or use transport='kernel'")
    return UringDatagramTransport(loop, sock, protocol, address=extra.get("peername"),
                                  extra=extra, timestamps=extra["timestamps"])
