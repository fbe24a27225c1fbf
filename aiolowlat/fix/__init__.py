"""FIX order entry: the public API (``python -m aiolowlat.fix`` runs sessions from a file)."""

from ..protocols.fix.codec import FixDecodeError, FixMessage, FrameReader, decode, encode
from ..protocols.fix.dictionary import DataDictionary, FieldReject, RejectReason
from ..protocols.fix.engine import FixAcceptor, FixInitiator, Session
from ..protocols.fix.messages import (
    BusinessMessageReject,
    ExecutionReport,
    FixStruct,
    NewOrderSingle,
    OrderCancelReject,
    OrderCancelReplaceRequest,
    OrderCancelRequest,
    from_fix,
)
from ..protocols.fix.orders import Order, OrderState, OrderTracker
from ..protocols.fix.session import FixSession, SessionConfig, SessionNotReady
from ..protocols.fix.settings import SessionSettings, SettingsError, load_settings
from ..protocols.fix.store import FileStore, MemoryStore, StoreError

__all__ = [
    "BusinessMessageReject",
    "DataDictionary",
    "ExecutionReport",
    "FieldReject",
    "FileStore",
    "FixAcceptor",
    "FixDecodeError",
    "FixInitiator",
    "FixMessage",
    "FixSession",
    "FixStruct",
    "FrameReader",
    "MemoryStore",
    "NewOrderSingle",
    "Order",
    "OrderCancelReject",
    "OrderCancelReplaceRequest",
    "OrderCancelRequest",
    "OrderState",
    "OrderTracker",
    "RejectReason",
    "Session",
    "SessionConfig",
    "SessionNotReady",
    "SessionSettings",
    "SettingsError",
    "StoreError",
    "decode",
    "encode",
    "from_fix",
    "load_settings",
]
