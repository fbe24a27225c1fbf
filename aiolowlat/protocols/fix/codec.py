"""FIX tag=value codec, sans-I/O: framing, BodyLength and CheckSum, fields, groups, data fields.

A message is kept as the bytes it came in and one list of ``(tag, value)`` pairs (``int``,
``bytes``): decoding is one ``split`` on SOH plus a ``partition`` per field, with no per-field
objects beyond the pair. ``FrameReader`` cuts a byte stream into whole frames and reports
garbled ones (bad BodyLength, bad CheckSum, garbage between messages) as ``Garbled`` values,
which a session ignores as the FIX spec says.
"""

from __future__ import annotations

import calendar
import time
import zlib
from collections.abc import Iterable, Iterator
from decimal import Decimal

__all__ = [
    "SOH",
    "FixMessage",
    "FixDecodeError",
    "FrameReader",
    "Garbled",
    "checksum",
    "decode",
    "encode",
    "encode_value",
    "format_utc",
    "parse_utc",
]

SOH = b"\x01"
MAX_MESSAGE_SIZE = 1 << 20  # a claimed BodyLength beyond this is garbage, not a wait

# Length tag -> data tag whose value may contain SOH (FIX 4.2/4.4 LENGTH/DATA pairs).
DATA_FIELDS = {
    90: 91, 93: 89, 95: 96, 212: 213, 348: 349, 350: 351, 352: 353, 354: 355, 356: 357,
    358: 359, 360: 361, 362: 363, 364: 365, 445: 446, 618: 619, 621: 622,
}  # fmt: skip
_DATA_LENGTH_TAGS = frozenset(DATA_FIELDS)
_PREFIX: dict[int, bytes] = {t: b"%d=" % t for t in range(1, 1000)}


class FixDecodeError(ValueError):
    """A frame whose fields cannot be read (a tag that is not a number, no '=')."""

    def __init__(self, reason: str, tag: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.tag = tag


class Garbled:
    """A frame that failed BodyLength/CheckSum checks or bytes that were not a frame."""

    __slots__ = ("data", "reason")

    def __init__(self, data: bytes, reason: str):
        self.data = data
        self.reason = reason

    def __repr__(self) -> str:
        return f"Garbled({self.reason!r}, {len(self.data)} bytes)"


def checksum(data) -> int:
    """The FIX CheckSum of ``data``: the byte sum modulo 256.

    Adler-32's low half is 1 + the byte sum modulo 65521, exact for up to 256 bytes (at most
    65,281): one C call per 256 bytes instead of a Python-level sum.
    """
    if len(data) <= 256:
        return (zlib.adler32(data) - 1) & 0xFF
    view = memoryview(data)
    total = 0
    for i in range(0, len(view), 256):
        total += (zlib.adler32(view[i : i + 256]) & 0xFFFF) - 1
    return total & 0xFF


class FixMessage:
    """A decoded message: ``tags`` and ``values`` in wire order; ``msg[tag]`` is bytes."""

    __slots__ = ("tags", "values", "raw", "_index")

    def __init__(self, tags: list[int], values: list[bytes], raw: bytes = b""):
        self.tags = tags
        self.values = values
        self.raw = raw
        # A tag repeated outside a group keeps its last value here; validation reports it.
        self._index = dict(zip(tags, values))

    @classmethod
    def from_fields(cls, fields: Iterable[tuple[int, object]]) -> FixMessage:
        tags, values = [], []
        for tag, value in fields:
            if value is not None:
                tags.append(tag)
                values.append(encode_value(value))
        return cls(tags, values)

    @property
    def fields(self) -> list[tuple[int, bytes]]:
        return list(zip(self.tags, self.values))

    def __getitem__(self, tag: int) -> bytes:
        return self._index[tag]

    def __contains__(self, tag: int) -> bool:
        return tag in self._index

    def get(self, tag: int, default=None):
        return self._index.get(tag, default)

    def get_str(self, tag: int, default: str | None = None) -> str | None:
        value = self._index.get(tag)
        return default if value is None else value.decode("latin-1")

    def get_int(self, tag: int, default: int | None = None) -> int | None:
        value = self._index.get(tag)
        return default if value is None else int(value)

    @property
    def msg_type(self) -> bytes:
        return self._index.get(35, b"")

    @property
    def seq_num(self) -> int:
        return int(self._index.get(34, b"0"))

    def group(self, count_tag: int, spec: tuple) -> list[FixMessage]:
        """Entries of the repeating group ``count_tag`` described by ``spec`` (a dictionary's
        ``(delimiter, members, required, nested)``); each entry is a FixMessage."""
        tags = self.tags
        if count_tag not in self._index:
            return []
        start = tags.index(count_tag) + 1
        return _read_group(tags, self.values, start, spec)[0]

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, FixMessage) and self.tags == other.tags and self.values == other.values
        )

    def __repr__(self) -> str:
        text = "|".join(f"{t}={v.decode('latin-1')}" for t, v in zip(self.tags, self.values))
        return f"FixMessage({text})"


def _read_group(tags, values, i, spec) -> tuple[list[FixMessage], int]:
    """Read entries from position i on; returns (entries, index after the group)."""
    delim, members, _required, nested = spec
    member_set = set(members)
    entries = []
    n = len(tags)
    while i < n and tags[i] == delim:
        start = i
        i += 1
        while i < n and tags[i] in member_set and tags[i] != delim:
            i += 1
            if tags[i - 1] in nested:
                i = _read_group(tags, values, i, nested[tags[i - 1]])[1]
        entries.append(FixMessage(tags[start:i], values[start:i]))
    return entries, i


def _split_fields(frame: bytes) -> tuple[list[int], list[bytes]]:
    """``frame`` (whole fields, each ending in SOH) as parallel tag and value lists."""
    parts = frame.replace(b"=", SOH).split(SOH)
    # Exactly one '=' per field and no data fields: tags and values alternate.
    if frame.count(SOH) * 2 + 1 == len(parts) and parts[-1] == b"":
        try:
            tags = list(map(int, parts[0:-1:2]))
        except ValueError:
            pass
        else:
            if _DATA_LENGTH_TAGS.isdisjoint(tags):
                return tags, parts[1::2]
    return _split_slow(frame.split(SOH))


def _split_slow(parts: list[bytes]) -> tuple[list[int], list[bytes]]:
    """Field by field: '=' inside values, data fields holding SOH, and names a bad field."""
    tags, values = [], []
    i, n = 0, len(parts) - 1
    if parts[-1] != b"":
        raise FixDecodeError("message does not end with SOH")
    data_len = None
    while i < n:
        tag_b, eq, value = parts[i].partition(b"=")
        if not eq or not tag_b.isdigit():
            raise FixDecodeError(f"invalid field {parts[i][:32]!r}")
        tag = int(tag_b)
        if data_len is not None and tag == data_len[0]:
            # The data value may hold SOH bytes: rejoin parts until its declared length.
            while len(value) < data_len[1] and i + 1 < n:
                i += 1
                value += SOH + parts[i]
            if len(value) != data_len[1]:
                raise FixDecodeError(f"data field {tag} length does not match", tag)
        data_len = None
        if tag in DATA_FIELDS:
            if not value.isdigit():
                raise FixDecodeError(f"length field {tag} is not a number", tag)
            data_len = (DATA_FIELDS[tag], int(value))
        tags.append(tag)
        values.append(value)
        i += 1
    return tags, values


def decode(frame: bytes) -> FixMessage:
    """A whole frame (as FrameReader returns it) as a FixMessage; checks nothing but syntax."""
    tags, values = _split_fields(frame)
    return FixMessage(tags, values, frame)


class FrameReader:
    """Cuts a byte stream into FIX frames, checking BodyLength and CheckSum.

    ``feed(data)`` then iterate ``frames()``: each item is a frame (bytes) or a ``Garbled``
    for bytes the reader dropped. Dropped bytes are counted in ``garbled_bytes``.
    """

    __slots__ = ("_buf", "garbled_bytes", "garbled_frames", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE):
        self._buf = b""
        self.garbled_bytes = 0
        self.garbled_frames = 0
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else bytes(data)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def frames(self) -> Iterator[bytes | Garbled]:
        buf = self._buf
        pos = 0
        end = len(buf)
        try:
            while pos < end:
                if not buf.startswith(b"8=", pos):
                    nxt = buf.find(b"8=FIX", pos)
                    cut = end if nxt < 0 else nxt
                    if nxt < 0:
                        # Keep a tail that may be the start of the next "8=FIX".
                        cut = max(pos, end - 4)
                        if cut == pos:
                            break
                    yield self._drop(buf[pos:cut], "garbage before BeginString")
                    pos = cut
                    continue
                soh1 = buf.find(SOH, pos)
                if soh1 < 0:
                    if end - pos > 64:
                        nxt = yield from self._resync(buf, pos, "BeginString too long")
                        if nxt is None:
                            break
                        pos = nxt
                        continue
                    break
                if not buf.startswith(b"9=", soh1 + 1):
                    if end - soh1 < 3:
                        break
                    nxt = yield from self._resync(buf, pos, "BodyLength(9) not second")
                    if nxt is None:
                        break
                    pos = nxt
                    continue
                soh2 = buf.find(SOH, soh1 + 3)
                if soh2 < 0:
                    if end - soh1 > 16:
                        nxt = yield from self._resync(buf, pos, "BodyLength(9) unreadable")
                        if nxt is None:
                            break
                        pos = nxt
                        continue
                    break
                length_b = buf[soh1 + 3 : soh2]
                if not length_b.isdigit() or int(length_b) > self.max_size:
                    nxt = yield from self._resync(buf, pos, "BodyLength(9) unreadable")
                    if nxt is None:
                        break
                    pos = nxt
                    continue
                body_end = soh2 + 1 + int(length_b)
                if body_end + 7 > end:
                    if buf.find(b"\x0110=", soh2, body_end) < 0 or buf.find(
                        b"\x018=FIX", soh2, end
                    ) < 0:
                        break  # the rest is still to come
                    # A whole next message inside the claimed body: the length is wrong.
                    nxt = yield from self._resync(buf, pos, "BodyLength(9) does not match")
                    if nxt is None:
                        break
                    pos = nxt
                    continue
                trailer = buf[body_end : body_end + 7]
                if not (trailer.startswith(b"10=") and trailer[6] == 1 and buf[body_end - 1] == 1):
                    nxt = yield from self._resync(buf, pos, "BodyLength(9) does not match")
                    if nxt is None:
                        break
                    pos = nxt
                    continue
                frame = buf[pos : body_end + 7]
                if not trailer[3:6].isdigit() or checksum(frame[:-7]) != int(trailer[3:6]):
                    yield self._drop(frame, "CheckSum(10) does not match")
                else:
                    yield frame
                pos = body_end + 7
        finally:
            self._buf = buf[pos:]

    def _resync(self, buf: bytes, pos: int, reason: str):
        """Drop a frame whose header or length is wrong: through its CheckSum field if one is
        in the buffer, else up to the next BeginString."""
        nxt = buf.find(b"8=FIX", pos + 1)
        trailer = buf.find(b"\x0110=", pos)
        if 0 <= trailer and (nxt < 0 or trailer < nxt):
            term = buf.find(SOH, trailer + 1)
            if term >= 0:
                nxt = term + 1
        if nxt < 0:
            if len(buf) - pos <= self.max_size:
                return None  # wait for the rest of the frame
            nxt = len(buf)
        yield self._drop(buf[pos:nxt], reason)
        return nxt

    def _drop(self, data: bytes, reason: str) -> Garbled:
        self.garbled_bytes += len(data)
        self.garbled_frames += 1
        return Garbled(data, reason)


def encode_value(value) -> bytes:
    """One field value on the wire: bytes as is, bool as Y/N, numbers in plain notation."""
    kind = type(value)
    if kind is bytes:
        return value
    if kind is str:
        return value.encode("latin-1")
    if kind is int:
        return b"%d" % value
    if kind is bool:
        return b"Y" if value else b"N"
    if kind is float:
        text = repr(value)
        if "e" in text or "E" in text:
            text = format(Decimal(text), "f")
        return text[:-2].encode() if text.endswith(".0") else text.encode()
    if kind is Decimal:
        return format(value, "f").encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"cannot encode {kind.__name__} as a FIX value")


def encode(begin: bytes, msg_type: bytes, fields: Iterable[tuple[int, object]]) -> bytes:
    """A whole frame: BeginString, BodyLength, MsgType, ``fields`` in order, CheckSum."""
    prefix = _PREFIX
    parts = [b"35=", msg_type, SOH]
    for tag, value in fields:
        if value is None:
            continue
        if type(value) is not bytes:
            value = encode_value(value)
        parts += (prefix.get(tag) or b"%d=" % tag, value, SOH)
    body = b"".join(parts)
    head = b"8=%s\x019=%d\x01" % (begin, len(body))
    frame = head + body
    return frame + b"10=%03d\x01" % checksum(frame)


_last_second = [-1, b""]


def format_utc(ts: float, millis: bool = True) -> bytes:
    """UTCTimestamp ``YYYYMMDD-HH:MM:SS.sss`` for a Unix time."""
    sec, ms = divmod(round(ts * 1000), 1000)  # round: 0.123 is 0.12299.. as a float
    if sec != _last_second[0]:
        _last_second[0] = sec
        _last_second[1] = time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(sec)).encode()
    if not millis:
        return _last_second[1]
    return _last_second[1] + b".%03d" % ms


_day_cache: dict[bytes, int] = {}


def parse_utc(value: bytes) -> float:
    """A UTCTimestamp (seconds, optional .sss/.ssssss) as a Unix time; ValueError if bad."""
    if (
        len(value) < 17
        or value[8] != 0x2D  # '-'
        or value[11] != 0x3A
        or value[14] != 0x3A
        or not (value[:8] + value[9:11] + value[12:14] + value[15:17]).isdigit()
    ):
        raise ValueError(f"not a UTCTimestamp: {value!r}")
    day = value[:8]
    base = _day_cache.get(day)
    if base is None:
        base = calendar.timegm((int(day[:4]), int(day[4:6]), int(day[6:8]), 0, 0, 0))
        if len(_day_cache) > 64:
            _day_cache.clear()
        _day_cache[day] = base
    hh, mm, ss = int(value[9:11]), int(value[12:14]), int(value[15:17])
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"not a UTCTimestamp: {value!r}")
    frac = 0.0
    if len(value) > 17:
        if value[17] != 0x2E or not value[18:].isdigit():
            raise ValueError(f"not a UTCTimestamp: {value!r}")
        frac = int(value[18:]) / 10 ** (len(value) - 18)
    return base + hh * 3600 + mm * 60 + ss + frac
