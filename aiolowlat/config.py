"""One TOML file for a strategy: loop, tuning, feeds and their transports, venues, FIX.

    loop = "uring"              # uring | uvloop | asyncio
    busy_poll = false
    [tuning]                    # aiolowlat.tuning: applied by aiolowlat.run(config=...)
    cpus = [1]
    gc = "freeze"
    [feeds.itch]
    transport = "af_xdp"        # kernel | uring | af_xdp | dpdk: one word swaps it
    interface = "eth1"
    lines = { A = "239.1.1.1:30001", B = "239.1.1.2:30002" }
    [feeds.itch.engine]         # aiolowlat.transports.EngineConfig, for af_xdp and dpdk
    local_ip = "10.0.0.2"
    core = 1

Decoded and validated by msgspec into typed settings; a bad key or type raises
ConfigError naming the key and what was expected. Environment variables
(``AIOLOWLAT_FEEDS__ITCH__TRANSPORT=uring``) and ``key.path=value`` overrides (the
command line's ``--set``) take precedence over the file, in that order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from .transports import EngineConfig
from .tuning import TuningSettings

ENV_PREFIX = "AIOLOWLAT_"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the fix."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class FeedSettings(_Section):
    """A multicast feed: its lines and the transport that carries them."""

    transport: Literal["kernel", "uring", "af_xdp", "dpdk"] = "kernel"
    lines: dict[str, str] = {}  # line name -> "group:port"
    interface: str | None = None
    source: str | None = None  # source-specific joins
    rcvbuf: int | None = 8 << 20
    timestamps: bool = True
    request_server: str | None = None  # MoldUDP64 retransmissions, "host:port"
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)  # af_xdp, dpdk

    def line_addresses(self) -> dict[str, tuple[str, int]]:
        return {name: parse_address(text) for name, text in self.lines.items()}

    def endpoint_options(self, line: str) -> dict:
        """open_datagram_endpoint's keywords for one line of this feed."""
        group, port = parse_address(self.lines[line])
        multicast = ipaddress.ip_address(group).is_multicast
        options = {"transport": self.transport, "local_addr": (group, port),
                   "groups": [group] if multicast else [], "interface": self.interface}
        if self.transport in ("af_xdp", "dpdk"):
            options["engine"] = self.engine
        else:
            options.update(source=self.source, rcvbuf=self.rcvbuf, timestamps=self.timestamps)
        return options


class VenueSettings(_Section):
    symbols: list[str] = []
    url: str | None = None  # None: the embedded simulator, unless live
    live: bool = False  # the venue's real URL


class FixSettings(_Section):
    settings: str | None = None  # a QuickFIX-style session file


class LogSettings(_Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsSettings(_Section):
    summary_interval: float = 10.0  # seconds between logged summaries (0: none)
    prometheus_port: int | None = None  # serve /metrics on 127.0.0.1:PORT


class Settings(_Section):
    """Everything one strategy process is configured by."""

    loop: Literal["uring", "uvloop", "asyncio"] = "uring"
    busy_poll: bool = False
    sqpoll: bool = False
    tuning: TuningSettings = msgspec.field(default_factory=TuningSettings)
    feeds: dict[str, FeedSettings] = {}
    venues: dict[str, VenueSettings] = {}
    fix: FixSettings = msgspec.field(default_factory=FixSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)

    def __post_init__(self):
        if self.busy_poll and self.loop != "uring":
            raise ValueError(f"busy_poll needs loop = \"uring\", not {self.loop!r}")


def parse_address(text: str) -> tuple[str, int]:
    """ "host:port" -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{text!r} is not an address of the form host:port")
    return host, int(port)


def _value(text: str):
    """A TOML value (number, bool, array, quoted string); anything else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set(tree: dict, path: str, value, origin: str) -> None:
    keys = path.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {path}: {key} is a value, not a table")
        node = child
    node[keys[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> Iterable[tuple[str, str, str]]:
    for name, text in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            path = name[len(ENV_PREFIX):].lower().replace("__", ".")
            yield path, text, f"environment variable {name}"


def load(path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
         overrides: Iterable[str] = ()) -> Settings:
    """Settings from a TOML file (or defaults), then ``AIOLOWLAT_*`` variables, then
    ``key.path=value`` overrides."""
    origin = os.fspath(path) if path is not None else "defaults"
    tree: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {origin} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
    for key, text, where in _env_overrides(os.environ if env is None else env):
        _set(tree, key, _value(text), where)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        _set(tree, key.strip(), _value(text.strip()), f"override {item!r}")
    _refuse_unknown_engine_keys(tree, origin)
    try:
        return msgspec.convert(tree, Settings)
    except msgspec.ValidationError as exc:
        # msgspec's error path elides dict keys (feeds[...]): name the entry at fault.
        for section, kind in (("feeds", FeedSettings), ("venues", VenueSettings)):
            for name, entry in _entries(tree, section):
                _convert(entry, kind, origin, f"{section}.{name}")
        raise ConfigError(f"{origin}: {_explain(str(exc))}") from None


def _entries(tree: dict, section: str):
    entries = tree.get(section)
    return entries.items() if isinstance(entries, dict) else ()


def _refuse_unknown_engine_keys(tree: dict, origin: str) -> None:
    """msgspec ignores a dataclass's unknown fields (EngineConfig is one): we don't."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    for name, feed in _entries(tree, "feeds"):
        engine = feed.get("engine") if isinstance(feed, dict) else None
        for key in engine if isinstance(engine, dict) else ():
            if key not in known:
                raise ConfigError(f"{origin}: feeds.{name}.engine.{key}: unknown key; expected "
                                  f"one of {', '.join(sorted(known))}")


def _convert(tree, kind, origin: str, prefix: str):
    try:
        return msgspec.convert(tree, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(str(exc), prefix)}") from None


def _explain(message: str, prefix: str = "") -> str:
    """msgspec's "Expected `int`, got `str` - at `$.tuning.loop_core`" as
    "tuning.loop_core: expected int, got str"; enum and unknown-key errors list the choices."""
    text, _, where = message.partition(" - at `$")
    key = ".".join(part for part in (prefix, where.rstrip("`").lstrip(".")) if part)
    unknown = re.match(r"Object contains unknown field `(.+)`", text)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        text = f"unknown key; expected one of {', '.join(_choices(key, fields=True))}"
    elif text.startswith("Invalid enum value"):
        text += f"; expected one of {', '.join(_choices(key))}"
    text = text.replace("`", "").replace(" | null", "")
    return f"{key}: {text[:1].lower()}{text[1:]}" if key else text


def _choices(key: str, fields: bool = False) -> list[str]:
    """The allowed values at ``key`` (a Literal's), or with ``fields`` its table's keys."""
    kind = Settings
    parts = key.split(".")
    for part in parts[:-1] if fields else parts:
        if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            found = {f.name: f.type for f in msgspec.structs.fields(kind)}.get(part)
        else:  # dict[str, X]: any name
            found = typing.get_args(kind)[-1] if typing.get_args(kind) else None
        if found is None:
            return []
        kind = found
    if fields and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        return [f.name for f in msgspec.structs.fields(kind)]
    return [repr(v) for v in typing.get_args(kind)] if typing.get_origin(kind) is Literal else []


def add_arguments(parser) -> None:
    """``--config FILE`` and repeatable ``--set key.path=value`` on an argparse parser."""
    parser.add_argument("--config", default=None, help="a strategy TOML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides", help="override a setting, e.g. "
                        "--set feeds.itch.transport=uring (repeatable)")


def from_args(args) -> Settings:
    """The settings ``add_arguments``' options name: file, environment, then --set."""
    return load(args.config, overrides=args.overrides)


def loop_factory(settings: Settings):
    """A callable making the event loop ``settings.loop`` names."""
    if settings.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError('loop = "uvloop" needs the uvloop package: pip install uvloop') \
                from None
        return uvloop.new_event_loop
    if settings.loop == "asyncio":
        return asyncio.new_event_loop
    from .loop import new_event_loop

    return functools.partial(new_event_loop, busy_poll=settings.busy_poll,
                             sqpoll=settings.sqpoll)


_current: Settings | None = None


def current() -> Settings:
    """The settings aiolowlat.run(config=...) applied (the defaults outside such a run)."""
    return _current if _current is not None else Settings()


def _make_current(settings: Settings | None) -> None:
    global _current
    _current = settings
