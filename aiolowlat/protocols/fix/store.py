"""Message stores: sequence numbers and sent messages, in memory or in an append-only file.

File format (little-endian), one file per session:

    file    := MAGIC record*
    MAGIC   := b"ALFIXST1\\n"
    record  := kind:u8 seq:u64 length:u32 payload[length] crc32:u32   (CRC over kind..payload)
    kind 1  SENT    seq = MsgSeqNum of the sent frame in payload (written before it is sent)
    kind 2  TARGET  seq = next MsgSeqNum expected from the counterparty
    kind 3  SENDER  seq = next MsgSeqNum we will send (after a SequenceReset / reset)
    kind 4  RESET   payload = session creation time, ASCII seconds since the epoch

Loading replays records in order; a record cut short or failing its CRC (a crash while
writing) ends the log, and the file is truncated there. A frame is recorded before it
reaches the socket, so after ``kill -9`` the next MsgSeqNum is one past the last frame that
could have been sent: no number is lost or used twice. Writes go straight to the file
descriptor (no user-space buffer), so a killed process loses nothing the kernel has; the
``fsync`` policy covers power loss: "always" (every record), "never", or a number of
seconds between fdatasync calls. A reset writes a new file and renames it over the old one.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
import zlib

__all__ = ["FileStore", "MemoryStore", "StoreError"]

MAGIC = b"ALFIXST1\n"
_HEAD = struct.Struct("<BQI")
_CRC = struct.Struct("<I")
SENT, TARGET, SENDER, RESET = 1, 2, 3, 4


class StoreError(RuntimeError):
    """The store file cannot be used (locked by another process, not a store file)."""


class MemoryStore:
    """Sequence numbers and sent frames in memory (lost with the process)."""

    def __init__(self):
        self.next_sender_seq = 1
        self.next_target_seq = 1
        self.creation_time = time.time()
        self._sent: dict[int, bytes] = {}

    def save_sent(self, seq: int, frame: bytes) -> None:
        self._sent[seq] = frame
        self.next_sender_seq = seq + 1

    def set_next_target(self, seq: int) -> None:
        self.next_target_seq = seq

    def set_next_sender(self, seq: int) -> None:
        self.next_sender_seq = seq

    def get_sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        """Stored frames with begin <= seq <= end, in order."""
        return [(s, self._read(s)) for s in self._seqs_between(self._sent, begin, end)]

    def _seqs_between(self, stored: dict, begin: int, end: int) -> list[int]:
        end = min(end, self.next_sender_seq - 1)
        if end - begin < len(stored):  # a short range: look the numbers up
            return [s for s in range(begin, end + 1) if s in stored]
        return sorted(s for s in stored if begin <= s <= end)

    def _read(self, seq: int) -> bytes:
        return self._sent[seq]

    def reset(self, now: float | None = None) -> None:
        self.next_sender_seq = self.next_target_seq = 1
        self.creation_time = time.time() if now is None else now
        self._sent.clear()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FileStore(MemoryStore):
    """Append-only file store (format in the module docstring); one process at a time."""

    def __init__(self, path: str | os.PathLike, fsync: str | float = "always"):
        super().__init__()
        if fsync not in ("always", "never") and not isinstance(fsync, (int, float)):
            raise ValueError(f"fsync must be 'always', 'never' or seconds, not {fsync!r}")
        self.path = os.fspath(path)
        self.fsync = fsync
        self._last_sync = time.monotonic()
        self._offsets: dict[int, tuple[int, int]] = {}
        self.truncated_bytes = 0  # bytes of a torn last record dropped at load
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(f"{self.path} is in use by another process") from None
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            self._write_fresh(self._fd, self.creation_time)
            return
        data = os.pread(self._fd, size, 0)
        if not data.startswith(MAGIC):
            raise StoreError(f"{self.path} is not a FIX store file (bad magic)")
        pos = len(MAGIC)
        while pos + _HEAD.size <= size:
            kind, seq, length = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if end + _CRC.size > size:
                break
            (crc,) = _CRC.unpack_from(data, end)
            if crc != zlib.crc32(data[pos:end]):
                break
            payload_at = pos + _HEAD.size
            if kind == SENT:
                self._offsets[seq] = (payload_at, length)
                self.next_sender_seq = seq + 1
            elif kind == TARGET:
                self.next_target_seq = seq
            elif kind == SENDER:
                self.next_sender_seq = seq
            elif kind == RESET:
                self.creation_time = float(data[payload_at:end])
            pos = end + _CRC.size
        if pos < size:
            self.truncated_bytes = size - pos
            os.ftruncate(self._fd, pos)
            os.fsync(self._fd)

    @staticmethod
    def _record(kind: int, seq: int, payload: bytes = b"") -> bytes:
        body = _HEAD.pack(kind, seq, len(payload)) + payload
        return body + _CRC.pack(zlib.crc32(body))

    def _write_fresh(self, fd: int, created: float) -> None:
        os.write(fd, MAGIC + self._record(RESET, 0, repr(created).encode()))
        os.fsync(fd)

    def _append(self, record: bytes) -> int:
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        os.write(self._fd, record)
        if self.fsync == "always":
            os.fdatasync(self._fd)
        elif self.fsync != "never" and time.monotonic() - self._last_sync >= self.fsync:
            self.flush()
        return offset

    def save_sent(self, seq: int, frame: bytes) -> None:
        offset = self._append(self._record(SENT, seq, frame))
        self._offsets[seq] = (offset + _HEAD.size, len(frame))
        self.next_sender_seq = seq + 1

    def set_next_target(self, seq: int) -> None:
        if seq != self.next_target_seq:
            self._append(self._record(TARGET, seq))
            self.next_target_seq = seq

    def set_next_sender(self, seq: int) -> None:
        self._append(self._record(SENDER, seq))
        self.next_sender_seq = seq

    def get_sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        return [(s, self._read(s)) for s in self._seqs_between(self._offsets, begin, end)]

    def _read(self, seq: int) -> bytes:
        offset, length = self._offsets[seq]
        return os.pread(self._fd, length, offset)

    def reset(self, now: float | None = None) -> None:
        created = time.time() if now is None else now
        tmp = self.path + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._write_fresh(fd, created)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = fd
        self._offsets.clear()
        self.next_sender_seq = self.next_target_seq = 1
        self.creation_time = created

    def flush(self) -> None:
        os.fdatasync(self._fd)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            if self.fsync != "always":
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
