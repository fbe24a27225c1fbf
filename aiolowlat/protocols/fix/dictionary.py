"""FIX 4.2 / 4.4 data dictionaries: required fields, field types, enums, repeating groups.

Tables come from QuickFIX's FIX42.xml / FIX44.xml through gen_dictionary.py. ``validate``
walks a decoded message once and raises ``FieldReject`` with the SessionRejectReason that a
session Reject must carry, as QuickFIX's DataDictionary does.
"""

from __future__ import annotations

import importlib
import re

from .codec import FixMessage

__all__ = ["DataDictionary", "FieldReject", "RejectReason"]


class RejectReason:
    """SessionRejectReason (373) values."""

    INVALID_TAG_NUMBER = 0
    REQUIRED_TAG_MISSING = 1
    TAG_NOT_DEFINED_FOR_MESSAGE = 2
    UNDEFINED_TAG = 3
    TAG_WITHOUT_VALUE = 4
    VALUE_INCORRECT = 5
    INCORRECT_DATA_FORMAT = 6
    DECRYPTION_PROBLEM = 7
    SIGNATURE_PROBLEM = 8
    COMPID_PROBLEM = 9
    SENDING_TIME_ACCURACY = 10
    INVALID_MSGTYPE = 11
    TAG_APPEARS_MORE_THAN_ONCE = 13
    TAG_OUT_OF_ORDER = 14
    GROUP_FIELDS_OUT_OF_ORDER = 15
    INCORRECT_NUMINGROUP = 16
    OTHER = 99


class FieldReject(ValueError):
    """A message that breaks the dictionary: carries the Reject's reason and RefTagID."""

    def __init__(self, reason: int, tag: int | None, text: str):
        super().__init__(text)
        self.reason = reason
        self.tag = tag
        self.text = text


_INT_TYPES = {"INT", "SEQNUM", "LENGTH", "NUMINGROUP", "DAYOFMONTH", "TAGNUM"}
_FLOAT_TYPES = {"PRICE", "QTY", "FLOAT", "AMT", "PERCENTAGE", "PRICEOFFSET"}
_FORMATS = {
    "UTCTIMESTAMP": re.compile(rb"\d{8}-\d\d:\d\d:\d\d(\.\d{1,9})?\Z"),
    "UTCTIMEONLY": re.compile(rb"\d\d:\d\d:\d\d(\.\d{1,9})?\Z"),
    "UTCDATE": re.compile(rb"\d{8}\Z"),
    "UTCDATEONLY": re.compile(rb"\d{8}\Z"),
    "LOCALMKTDATE": re.compile(rb"\d{8}\Z"),
    "MONTHYEAR": re.compile(rb"\d{6}(\d\d|w\d)?\Z"),
}
_INT = re.compile(rb"-?\d+\Z")
_FLOAT = re.compile(rb"-?(\d+\.?\d*|\.\d+)\Z")
_MULTI = {"MULTIPLEVALUESTRING", "MULTIPLESTRINGVALUE", "MULTIPLECHARVALUE"}
USER_DEFINED_MIN = 5000  # tags from here on are user-defined and pass unchecked
_VERSIONS = {"FIX.4.2": "_spec_fix42", "FIX.4.4": "_spec_fix44"}
_loaded: dict[str, DataDictionary] = {}


def _checker(ftype: str, enums):
    """A function value -> reason code or None for one field type; None if any value goes."""
    enum_set = frozenset(e.encode() for e in enums) if enums else None
    if ftype in _INT_TYPES:
        fmt = _INT.match
    elif ftype in _FLOAT_TYPES:
        fmt = _FLOAT.match
    else:
        fmt = _FORMATS[ftype].match if ftype in _FORMATS else None
    if enum_set is not None:
        if ftype in _MULTI:
            return lambda v: None if all(x in enum_set for x in v.split()) else 5
        if fmt is not None:
            return lambda v: 6 if fmt(v) is None else (None if v in enum_set else 5)
        return lambda v: None if v in enum_set else 5
    if fmt is not None:
        return lambda v: None if fmt(v) is not None else 6
    if ftype == "CHAR":
        return lambda v: None if len(v) == 1 else 6
    if ftype == "BOOLEAN":
        return lambda v: None if v in (b"Y", b"N") else 5
    return None


class DataDictionary:
    """One FIX version's dictionary; ``DataDictionary.load("FIX.4.4")`` is cached."""

    def __init__(self, spec):
        self.begin_string: str = spec.BEGIN_STRING
        self.fields: dict[int, tuple] = spec.FIELDS
        self.messages: dict[str, tuple] = spec.MESSAGES
        self.header_members, self.header_required, self.header_groups = spec.HEADER
        self.trailer_members, self.trailer_required, _ = spec.TRAILER
        self.tag_by_name = {name: tag for tag, (name, _, _) in self.fields.items()}
        checks = {tag: _checker(t, enums) for tag, (_, t, enums) in self.fields.items()}
        self._checks = {tag: check for tag, check in checks.items() if check is not None}
        self._header_set = frozenset(self.header_members)
        self._trailer_set = frozenset(self.trailer_members)
        self._msg_types = {k.encode(): k for k in self.messages}
        self._layouts: dict[str, tuple] = {}

    @classmethod
    def load(cls, begin_string: str) -> DataDictionary:
        if begin_string not in _loaded:
            if begin_string not in _VERSIONS:
                raise ValueError(f"no data dictionary for {begin_string!r} (have FIX.4.2, FIX.4.4)")
            spec = importlib.import_module(f".{_VERSIONS[begin_string]}", __package__)
            _loaded[begin_string] = cls(spec)
        return _loaded[begin_string]

    def is_admin(self, msg_type: bytes) -> bool:
        spec = self.messages.get(self._msg_types.get(msg_type, ""))
        return spec is not None and spec[1] == "admin"

    def group_spec(self, msg_type: bytes, count_tag: int) -> tuple:
        """(delimiter, members, required, nested) of a message's repeating group."""
        if count_tag in self.header_groups:
            return self.header_groups[count_tag]
        return self.messages[msg_type.decode()][4][count_tag]

    def validate(self, msg: FixMessage) -> None:
        """Raise FieldReject if ``msg`` breaks this dictionary (the first problem found)."""
        tags, values = msg.tags, msg.values
        n = len(tags)
        if n < 4 or tags[0] != 8 or tags[1] != 9 or tags[2] != 35:
            bad = next((t for t, want in zip(tags, (8, 9, 35)) if t != want), 35)
            raise FieldReject(RejectReason.TAG_OUT_OF_ORDER, bad, "BeginString, BodyLength, "
                              "MsgType must come first")
        if tags[-1] != 10:
            raise FieldReject(RejectReason.TAG_OUT_OF_ORDER, 10, "CheckSum must be last")
        name = self._msg_types.get(values[2])
        if name is None:
            raise FieldReject(RejectReason.INVALID_MSGTYPE, 35, "Invalid MsgType")
        body_set, body_required, groups = self._layout(name)
        header, trailer = self._header_set, self._trailer_set
        seen = {8, 9, 35}
        in_body = in_trailer = False
        i = 3
        checks = self._checks
        while i < n:
            tag, value = tags[i], values[i]
            if not value or tag <= 0:
                self._check_value(tag, value)  # raises
            check = checks.get(tag)
            if check is not None and check(value) is not None:
                self._check_value(tag, value)  # raises with the reason
            if tag in seen:
                raise FieldReject(RejectReason.TAG_APPEARS_MORE_THAN_ONCE, tag,
                                  "Tag appears more than once")
            if tag in header:
                if in_body or in_trailer:
                    raise FieldReject(RejectReason.TAG_OUT_OF_ORDER, tag,
                                      "Tag specified out of required order")
            elif tag in trailer:
                in_trailer = True
            elif in_trailer:
                raise FieldReject(RejectReason.TAG_OUT_OF_ORDER, tag,
                                  "Tag specified out of required order")
            elif tag in body_set:
                in_body = True
            elif tag >= USER_DEFINED_MIN:
                i += 1
                continue
            elif tag in self.fields:
                raise FieldReject(RejectReason.TAG_NOT_DEFINED_FOR_MESSAGE, tag,
                                  "Tag not defined for this message type")
            else:
                raise FieldReject(RejectReason.INVALID_TAG_NUMBER, tag, "Invalid tag number")
            seen.add(tag)
            i += 1
            if tag in groups:
                i = self._check_group(tags, values, i, int(value), tag, groups[tag])
        for req in body_required:
            if req not in seen:
                raise FieldReject(RejectReason.REQUIRED_TAG_MISSING, req, "Required tag missing")

    def _layout(self, name: str) -> tuple:
        """(body tags, required tags, groups incl. the header's) of a message type, cached."""
        layout = self._layouts.get(name)
        if layout is None:
            _, _, members, required, groups = self.messages[name]
            required = (*self.header_required, *required, *self.trailer_required)
            layout = (frozenset(members), required, {**self.header_groups, **groups})
            self._layouts[name] = layout
        return layout

    def _check_value(self, tag: int, value: bytes) -> None:
        if tag <= 0:
            raise FieldReject(RejectReason.INVALID_TAG_NUMBER, tag, "Invalid tag number")
        if not value:
            raise FieldReject(RejectReason.TAG_WITHOUT_VALUE, tag, "Tag specified without a value")
        check = self._checks.get(tag)
        if check is not None:
            reason = check(value)
            if reason is not None:
                text = ("Incorrect data format for value" if reason == 6
                        else "Value is incorrect (out of range) for this tag")
                raise FieldReject(reason, tag, text)

    def _check_group(self, tags, values, i, count, count_tag, spec) -> int:
        """Check the entries after a NumInGroup field; returns the index after them."""
        delim, members, required, nested = spec
        member_set = frozenset(members)
        entries = 0
        n = len(tags)
        while i < n and tags[i] == delim:
            entries += 1
            seen = {delim}
            self._check_value(delim, values[i])
            i += 1
            while i < n and tags[i] in member_set and tags[i] != delim:
                tag = tags[i]
                if tag in seen:
                    raise FieldReject(RejectReason.GROUP_FIELDS_OUT_OF_ORDER, tag,
                                      "Repeating group fields out of order")
                self._check_value(tag, values[i])
                seen.add(tag)
                i += 1
                if tag in nested:
                    i = self._check_group(tags, values, i, int(values[i - 1]), tag, nested[tag])
            for req in required:
                if req not in seen:
                    raise FieldReject(RejectReason.REQUIRED_TAG_MISSING, req,
                                      "Required tag missing")
        if entries != count:
            raise FieldReject(RejectReason.INCORRECT_NUMINGROUP, count_tag,
                              "Incorrect NumInGroup count for repeating group")
        return i
