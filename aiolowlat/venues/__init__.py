"""Exchange adapters: venue messages in, common typed events out, validated books.

Each adapter is sans-I/O (see _base.VenueAdapter); ``venue_feed`` / ``run_feed`` in
feed.py connect one to the venue (or to the simulator) and keep it fed.
"""

from ._base import Counters, VenueAdapter
from .binance import BinanceAdapter
from .book import OrderBook
from .bybit import BybitAdapter
from .coinbase import CoinbaseAdapter
from .events import BookDelta, BookSnapshot, BookTicker, Event, Resync, Trade
from .feed import https_get, run_feed, venue_feed
from .kraken import KrakenAdapter
from .okx import OkxAdapter

ADAPTERS: dict[str, type[VenueAdapter]] = {
    a.venue: a for a in (BinanceAdapter, CoinbaseAdapter, BybitAdapter, OkxAdapter, KrakenAdapter)
}

__all__ = [
    "ADAPTERS",
    "BinanceAdapter",
    "BookDelta",
    "BookSnapshot",
    "BookTicker",
    "BybitAdapter",
    "CoinbaseAdapter",
    "Counters",
    "Event",
    "KrakenAdapter",
    "OkxAdapter",
    "OrderBook",
    "Resync",
    "Trade",
    "VenueAdapter",
    "https_get",
    "run_feed",
    "venue_feed",
]
