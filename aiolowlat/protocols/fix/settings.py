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

TLS takes QuickFIX C++'s SSL keys (``_TLS_KEYS``) and is on when SocketUseSSL=Y (QuickFIX/J's
switch) or any of them is set. Unlike QuickFIX, an initiator always verifies the server's
certificate and its name (SocketConnectHost, or SSLServerName) unless CertificateVerifyLevel=0.
"""

from __future__ import annotations

import os
import ssl
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
# QuickFIX C++ 1.16's SSL keys (spelled as in its SessionSettings.h), SocketUseSSL as in
# QuickFIX/J, and SSLServerName (ours: the name checked when it is not SocketConnectHost).
_TLS_FILES = {
    "ServerCertificateFile", "ServerCertificateKeyFile", "ClientCertificateFile",
    "ClientCertificateKeyFile", "CertificationAuthoritiesFile",
    "CertificationAuthoritiesDirectory",
}
_TLS_KEYS = _TLS_FILES | {"SSLProtocol", "SSLCipherSuite", "CertificateVerifyLevel",
                          "SSLServerName"}
_KNOWN |= _TLS_KEYS | {"SocketUseSSL"}
_NO_SCHEDULE = "sessions run whenever connected"
_NO_CRL = "certificate revocation lists are not checked"
_UNSUPPORTED = {
    "StartTime": _NO_SCHEDULE, "EndTime": _NO_SCHEDULE, "StartDay": _NO_SCHEDULE,
    "EndDay": _NO_SCHEDULE, "DataDictionary": "the FIX 4.2/4.4 dictionaries are built in",
    "TLSCipherSuites": "Python's ssl module cannot choose TLS 1.3 suites",
    "CertificateRevocationListFile": _NO_CRL, "CertificateRevocationListDirectory": _NO_CRL,
}
_MISSPELT = {"CertificateAuthoritiesFile": "CertificationAuthoritiesFile",
             "CertificateAuthoritiesDirectory": "CertificationAuthoritiesDirectory"}


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
    ssl: ssl.SSLContext | None = None  # from the TLS keys; None: plain TCP
    server_hostname: str | None = None  # the name an initiator checks (None: host)

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


_TLS_VERSIONS = {"TLSV1": ssl.TLSVersion.TLSv1, "TLSV1_1": ssl.TLSVersion.TLSv1_1,
                 "TLSV1_2": ssl.TLSVersion.TLSv1_2, "TLSV1_3": ssl.TLSVersion.TLSv1_3}


def _protocols(value: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """QuickFIX's SSLProtocol ("all -SSLv2", "+TLSv1_2 +TLSv1_3", ...) as (min, max).

    SSLv2/SSLv3 are accepted and ignored (OpenSSL here has neither); the TLS versions left
    must be a contiguous range, as OpenSSL's min/max version can only express that."""
    enabled: set[str] = set()
    for word in value.split():
        action, name = (word[0], word[1:]) if word[0] in "+-" else ("", word)
        name = name.upper()
        names = set(_TLS_VERSIONS) if name == "ALL" else {name} & set(_TLS_VERSIONS)
        if not names and name not in ("SSLV2", "SSLV3"):
            raise SettingsError(f"SSLProtocol={value!r}: unknown protocol {word!r} "
                                "(expected SSLv2, SSLv3, TLSv1, TLSv1_1, TLSv1_2, TLSv1_3, all)")
        if action == "-":
            enabled -= names
        elif action == "+":
            enabled |= names
        else:
            enabled = set(names)
    order = list(_TLS_VERSIONS)
    picked = sorted(order.index(n) for n in enabled)
    if not picked or picked != list(range(picked[0], picked[-1] + 1)):
        raise SettingsError(f"SSLProtocol={value!r}: needs one TLS version or a contiguous "
                            "range of them")
    return _TLS_VERSIONS[order[picked[0]]], _TLS_VERSIONS[order[picked[-1]]]


def _readable(values: dict[str, str], key: str) -> str | None:
    """The path under ``key``, checked now so a bad one is named before any connection."""
    path = values.get(key)
    if path is None:
        return None
    is_dir = key.endswith("Directory")
    if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
        raise SettingsError(f"{key}={path}: no such {'directory' if is_dir else 'file'}")
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{key}={path}: not readable")
    return path


def _verify_level(values: dict[str, str]) -> int | None:
    if "CertificateVerifyLevel" not in values:
        return None
    level = _number(values["CertificateVerifyLevel"], "CertificateVerifyLevel", int)
    if level not in (0, 1, 2):
        raise SettingsError(f"CertificateVerifyLevel={level}: expected 0 (none), "
                            "1 (require) or 2 (optional)")
    return level


def _tls_context(values: dict[str, str], initiator: bool) -> ssl.SSLContext | None:
    """An SSLContext from QuickFIX's SSL keys, or None if the session is plain TCP."""
    use = values.get("SocketUseSSL")
    if use is not None and not _flag(use, "SocketUseSSL"):
        return None
    if use is None and not _TLS_KEYS & values.keys():
        return None
    level = _verify_level(values)
    ca_file = _readable(values, "CertificationAuthoritiesFile")
    ca_dir = _readable(values, "CertificationAuthoritiesDirectory")
    role = "Client" if initiator else "Server"
    cert = _readable(values, f"{role}CertificateFile")
    key = _readable(values, f"{role}CertificateKeyFile")
    if initiator:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file, capath=ca_dir)
        if level == 0:  # explicitly asked for: no check of the server at all
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    else:
        if cert is None:
            raise SettingsError("an acceptor with TLS needs ServerCertificateFile")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if level in (1, 2):
            if ca_file is None and ca_dir is None:
                raise SettingsError(f"CertificateVerifyLevel={level} needs "
                                    "CertificationAuthoritiesFile to check clients against")
            ctx.load_verify_locations(cafile=ca_file, capath=ca_dir)
            ctx.verify_mode = ssl.CERT_REQUIRED if level == 1 else ssl.CERT_OPTIONAL
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            names = f"{role}CertificateFile={cert}" + (
                f", {role}CertificateKeyFile={key}" if key else "")
            raise SettingsError(f"{names}: not a certificate and its key ({exc})") from None
    elif key is not None:
        raise SettingsError(f"{role}CertificateKeyFile needs {role}CertificateFile")
    if "SSLProtocol" in values:
        ctx.minimum_version, ctx.maximum_version = _protocols(values["SSLProtocol"])
    if "SSLCipherSuite" in values:
        try:
            ctx.set_ciphers(values["SSLCipherSuite"])
        except ssl.SSLError:
            raise SettingsError(f"SSLCipherSuite={values['SSLCipherSuite']!r}: no cipher "
                                "OpenSSL knows") from None
    return ctx


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
        ssl=_tls_context(values, config.initiator),
        server_hostname=values.get("SSLServerName"),
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
            raise SettingsError(f"line {lineno}: {key} is not supported ({_UNSUPPORTED[key]})")
        if key in _MISSPELT:
            raise SettingsError(f"line {lineno}: unknown key {key!r} (QuickFIX spells it "
                                f"{_MISSPELT[key]})")
        if key not in _KNOWN:
            raise SettingsError(f"line {lineno}: unknown key {key!r}")
        current[key] = value
    if not sessions:
        raise SettingsError("no [SESSION] section")
    built = [_build({**default, **s}) for s in sessions]
    _share_contexts(built, [{**default, **s} for s in sessions])
    return built


def _share_contexts(built: list[SessionSettings], values: list[dict[str, str]]) -> None:
    """Sessions with the same TLS keys share one SSLContext (an acceptor port needs one)."""
    seen: dict[tuple, ssl.SSLContext] = {}
    for settings, v in zip(built, values, strict=True):
        if settings.ssl is not None:
            tls = (settings.connection_type, *sorted((k, v[k]) for k in _TLS_KEYS & v.keys()))
            settings.ssl = seen.setdefault(tls, settings.ssl)


def load_settings(path: str | os.PathLike) -> list[SessionSettings]:
    with open(path, encoding="utf-8") as f:
        return parse_settings(f.read())
