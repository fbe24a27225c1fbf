"""aiolowlat: asyncio for low-latency trading I/O on io_uring."""

from ._ring import UringUnavailableError
from .loop import EventLoopPolicy, Loop, install, new_event_loop, run

__all__ = ["EventLoopPolicy", "Loop", "UringUnavailableError", "install", "new_event_loop", "run"]
__version__ = "0.1.0"
