"""Small helpers shared by the venue adapters and the simulator."""

from __future__ import annotations

import zlib
from datetime import date

__all__ = ["crc32_signed", "kraken_checksum", "okx_checksum", "rfc3339_ns"]

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def rfc3339_ns(text: str) -> int:
    """'2023-02-09T20:32:50.714964855Z' -> ns since the epoch (UTC only, as the
    venues send it; any digits of fraction). Raises ValueError on anything else."""
    if len(text) < 20 or text[4] != "-" or text[10] not in "T " or text[13] != ":":
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    days = date(int(text[0:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_ORDINAL
    secs = days * 86400 + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
    rest = text[19:]
    if rest.endswith("Z"):
        rest = rest[:-1]
    elif rest.endswith("+00:00"):
        rest = rest[:-6]
    else:
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}")
    frac = 0
    if rest:
        if rest[0] != "." or not rest[1:].isdigit():
            raise ValueError(f"bad fraction in {text!r}")
        frac = int(rest[1:10].ljust(9, "0"))
    return secs * 1_000_000_000 + frac


def crc32_signed(text: str) -> int:
    """CRC32 of ``text`` as a signed 32-bit integer (OKX's checksum type)."""
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def okx_checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX books checksum: the best 25 bids and asks interleaved as
    bid:size:ask:size:... (the longer side continues alone), wire strings, CRC32
    signed. Rule: OKX API v5 docs, "Order book channel", checksum section."""
    parts: list[str] = []
    for i in range(max(len(bids[:25]), len(asks[:25]))):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    return crc32_signed(":".join(parts))


def _kraken_digits(value: str) -> str:
    return value.replace(".", "").lstrip("0")


def kraken_checksum(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """Kraken v2 book checksum: the best 10 asks (low to high) then the best 10 bids
    (high to low), each price and qty with the '.' and leading zeros removed,
    concatenated; CRC32 unsigned. Rule: Kraken docs, "Book checksum (WebSocket v2)"."""
    text = "".join(_kraken_digits(p) + _kraken_digits(q) for p, q in asks[:10])
    text += "".join(_kraken_digits(p) + _kraken_digits(q) for p, q in bids[:10])
    return zlib.crc32(text.encode())
