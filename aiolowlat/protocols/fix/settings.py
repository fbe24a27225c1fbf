"""QuickFIX-style session settings files: a [DEFAULT] section and one [SESSION] per session.

    [DEFAULT]
    ConnectionType=initiator
    SocketConnectHost=127.0.0.1
    SocketConnectPort=9876
    HeartBtInt=30
    FileStorePath=/var/lib/fix
    ResetOnLogon=N

    [SESSION]
    BeginString=FIX.4.4
    SenderCompID=CLIENT
    TargetCompID=EXCH

Keys are QuickFIX's names (the subset in ``_KNOWN``, plus FileStoreSync: always, never or
seconds between fsyncs); a [SESSION] key overrides [DEFAULT]. Unknown keys raise, so a typo
does not pass silently, and so do QuickFIX keys this engine does not honour (schedules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .session import SessionConfig
from .store import FileStore, MemoryStore

__all__ = ["SessionSettings", "SettingsError", "load_settings", "parse_settings"]

_KNOWN = {
    "ConnectionType", "BeginString", "SenderCompID", "TargetCompID", "HeartBtInt",
    "SocketConnectHost", "SocketConnectPort", "SocketAcceptHost", "SocketAcceptPort",
    "FileStorePath", "FileStoreSync", "ResetOnLogon", "ResetOnLogout", "ResetOnDisconnect",
    "ReconnectInterval", "MaxReconnectInterval", "UseDataDictionary", "CheckLatency",
    "MaxLatency", "LogonTimeout", "LogoutTimeout",
}
_UNSUPPORTED = {"StartTime", "EndTime", "StartDay", "EndDay", "DataDictionary"}


class SettingsError(ValueError):
    """A settings file that cannot be used: names the line or key and what is wrong."""


@dataclass
class SessionSettings:
    """One [SESSION]: the session rules plus where to connect and where to store."""

    config: SessionConfig
    connection_type: str = "initiator"
    host: str = "127.0.0.1"
    port: int = 0
    store_path: str | None = None  # a directory; None keeps sequence numbers in memory
    store_sync: str | float = "always"
    reconnect_interval: float = 5.0
    max_reconnect_interval: float = 60.0

    def open_store(self):
        """A FileStore under ``store_path`` named after the session, or a MemoryStore."""
        if not self.store_path:
            return MemoryStore()
        os.makedirs(self.store_path, exist_ok=True)
        begin, sender, target = self.config.key
        return FileStore(os.path.join(self.store_path, f"{begin}-{sender}-{target}.store"),
                         fsync=self.store_sync)


def _flag(value: str, key: str) -> bool:
    if value.upper() in ("Y", "YES", "TRUE", "1"):
        return True
    if value.upper() in ("N", "NO", "FALSE", "0"):
        return False
    raise SettingsError(f"{key}={value!r}: expected Y or N")


def _number(value: str, key: str, kind=float):
    try:
        return kind(value)
    except ValueError:
        raise SettingsError(f"{key}={value!r}: expected a number") from None


def _build(values: dict[str, str]) -> SessionSettings:
    for key in ("BeginString", "SenderCompID", "TargetCompID"):
        if key not in values:
            raise SettingsError(f"[SESSION] needs {key}")
    kind = values.get("ConnectionType", "initiator").lower()
    if kind not in ("initiator", "acceptor"):
        raise SettingsError(f"ConnectionType={kind!r}: expected initiator or acceptor")
    config = SessionConfig(
        sender_comp_id=values["SenderCompID"],
        target_comp_id=values["TargetCompID"],
        begin_string=values["BeginString"],
        heartbeat_interval=_number(values.get("HeartBtInt", "30"), "HeartBtInt", int),
        initiator=kind == "initiator",
        reset_on_logon=_flag(values.get("ResetOnLogon", "N"), "ResetOnLogon"),
        reset_on_logout=_flag(values.get("ResetOnLogout", "N"), "ResetOnLogout"),
        reset_on_disconnect=_flag(values.get("ResetOnDisconnect", "N"), "ResetOnDisconnect"),
        validate=_flag(values.get("UseDataDictionary", "Y"), "UseDataDictionary"),
        check_latency=_flag(values.get("CheckLatency", "Y"), "CheckLatency"),
        max_latency=_number(values.get("MaxLatency", "120"), "MaxLatency"),
        logon_timeout=_number(values.get("LogonTimeout", "10"), "LogonTimeout"),
        logout_timeout=_number(values.get("LogoutTimeout", "2"), "LogoutTimeout"),
    )
    if config.begin_string not in ("FIX.4.2", "FIX.4.4"):
        raise SettingsError(f"BeginString={config.begin_string!r}: supported FIX.4.2, FIX.4.4")
    port_key = "SocketConnectPort" if config.initiator else "SocketAcceptPort"
    host_key = "SocketConnectHost" if config.initiator else "SocketAcceptHost"
    if port_key not in values:
        raise SettingsError(f"{kind} session {config.key} needs {port_key}")
    sync = values.get("FileStoreSync", "always")
    if sync not in ("always", "never"):
        sync = _number(sync, "FileStoreSync")
    return SessionSettings(
        config=config,
        connection_type=kind,
        host=values.get(host_key, "127.0.0.1"),
        port=_number(values[port_key], port_key, int),
        store_path=values.get("FileStorePath"),
        store_sync=sync,
        reconnect_interval=_number(values.get("ReconnectInterval", "5"), "ReconnectInterval"),
        max_reconnect_interval=_number(values.get("MaxReconnectInterval", "60"),
                                       "MaxReconnectInterval"),
    )


def parse_settings(text: str) -> list[SessionSettings]:
    """Every [SESSION] in ``text``, with [DEFAULT] values filled in."""
    default: dict[str, str] = {}
    sessions: list[dict[str, str]] = []
    current = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            name = line.strip("[]").strip().upper()
            if name == "DEFAULT":
                current = default
            elif name == "SESSION":
                current = {}
                sessions.append(current)
            else:
                raise SettingsError(f"line {lineno}: unknown section {line!r}")
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or current is None:
            raise SettingsError(f"line {lineno}: expected Key=Value inside a section")
        if key in _UNSUPPORTED:
            raise SettingsError(f"line {lineno}: {key} is not supported (sessions run whenever "
                                "connected; the FIX 4.2/4.4 dictionaries are built in)")
        if key not in _KNOWN:
            raise SettingsError(f"line {lineno}: unknown key {key!r}")
        current[key] = value
    if not sessions:
        raise SettingsError("no [SESSION] section")
    return [_build({**default, **s}) for s in sessions]


def load_settings(path: str | os.PathLike) -> list[SessionSettings]:
    with open(path, encoding="utf-8") as f:
        return parse_settings(f.read())
