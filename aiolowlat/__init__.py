"""aiolowlat: asyncio for low-latency trading I/O on io_uring.

The loop is here; the parts are submodules, imported on first use:
``aiolowlat.ws`` (WebSocket client), ``aiolowlat.fix`` (FIX engine),
``aiolowlat.venues`` (exchange adapters), ``aiolowlat.transports`` (market-data
endpoints: kernel, uring, af_xdp, dpdk), ``aiolowlat.config``, ``aiolowlat.metrics``,
``aiolowlat.tuning``, ``aiolowlat.record``, ``aiolowlat.sim`` (exchange simulators).
"""

import importlib

from ._ring import UringUnavailableError
from .loop import EventLoopPolicy, Loop, install, new_event_loop, run

_SUBMODULES = frozenset({"config", "doctor", "fix", "log", "metrics", "protocols", "record",
                         "sim", "transports", "tuning", "venues", "ws"})


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EventLoopPolicy", "Loop", "UringUnavailableError", "install", "new_event_loop", "run"]
__version__ = "0.1.0"
