"""Append-only log of a collection's changes since its last snapshot.

Format 2 (``wal-G.log``): a 16-byte file header (magic, first sequence number), then frames of

    <u32 body length> <u32 crc32(body)> <u64 seq> <u32 crc32 of the 16 bytes before>  <msgpack body>

Sequence numbers run on across generations without gaps, so replay can check that nothing is missing and a
snapshot's manifest can say which records it already holds.

Replay tells a torn tail from corruption, because only one of them may be cut:

- *torn*: the last frame is incomplete (its header is short, or its body runs past the end of the file), or
  everything from the bad frame to the end is zero bytes (space a filesystem allocated but never wrote after
  a power cut). A write that was interrupted was never acknowledged, so it is cut.
- *corrupt*: anything else, e.g. a checksum that fails on a complete frame. Replay raises ``WalCorrupt``
  with the file, the byte offset and the sequence number, and truncates nothing; ``visionsearch-admin`` can
  repair it offline.

An append that fails (ENOSPC, EIO, ...) rolls the file back to the end of the last good frame before it
raises, so later appends land on a sound log. If the rollback itself fails the log is ``broken``: each
later append first retries the rollback, and is refused until it succeeds.

Format 1 (no header, ``<u32 length><u32 crc32><body>`` frames) is still read, by the same rules, so data
folders written by earlier versions open; they are rewritten in format 2 by the next snapshot.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

MAGIC = b"VSWAL\x002\n"
_FILE_HEADER = struct.Struct("<8sQ")  # magic, first sequence number
_FRAME = struct.Struct("<IIQI")  # body length, body crc32, seq, header crc32
_LEGACY_FRAME = struct.Struct("<II")  # format 1: body length, body crc32
# A frame longer than this is not a frame: the largest record is one request's worth of items.
MAX_RECORD_BYTES = 1 << 31


class WalCorrupt(Exception):
    """A damaged record with intact data after it: replaying past it, or cutting it, would lose writes."""

    def __init__(self, path: Path, offset: int, seq: int, detail: str) -> None:
        self.path, self.offset, self.seq, self.detail = path, offset, seq, detail
        super().__init__(f"{path.name}: record {seq} at byte {offset:,} {detail}")


class WalWriteError(Exception):
    """An append could not be made durable; the log is back at its last good record (unless ``broken``)."""

    def __init__(self, path: Path, err: OSError, *, broken: bool) -> None:
        self.path, self.errno, self.broken = path, err.errno, broken
        self.disk_full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "the disk is full" if self.disk_full else f"the disk failed ({os.strerror(err.errno or 0)})"
        super().__init__(f"writing {path.name}: {what}")


@dataclass
class Replay:
    """What replaying one log file found."""

    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (seq, record)
    end: int = 0  # byte offset just past the last good frame
    torn_bytes: int = 0  # bytes after ``end`` that were an interrupted append
    legacy: bool = False
    first_seq: int = 1  # the seq the file's header promises for its first record


def _is_zero(data: bytes | memoryview) -> bool:
    return not any(data) if len(data) < 4096 else bytes(data).count(0) == len(data)


def replay(path: Path, first_seq: int = 1) -> Replay:
    """Read a log; raise ``WalCorrupt`` for damage that is not a torn tail. Nothing is modified.

    ``first_seq`` is the sequence number a format-1 log's first record stands for (format 2 says it)."""
    data = path.read_bytes() if path.exists() else b""
    if not data:
        return Replay(first_seq=first_seq)
    if data[: len(MAGIC)] == MAGIC[: min(len(MAGIC), len(data))] and len(data) < _FILE_HEADER.size:
        return Replay(torn_bytes=len(data), first_seq=first_seq)  # the header itself was being written
    if data.startswith(MAGIC):
        return _replay_v2(path, memoryview(data))
    return _replay_v1(path, memoryview(data), first_seq)


def _replay_v2(path: Path, data: memoryview) -> Replay:
    _, first = _FILE_HEADER.unpack_from(data, 0)
    out = Replay(first_seq=first)
    pos, expect = _FILE_HEADER.size, first
    while pos < len(data):
        rest = len(data) - pos
        if rest < _FRAME.size:  # a header cut short can only be an interrupted append
            out.torn_bytes = rest
            break
        length, body_crc, seq, head_crc = _FRAME.unpack_from(data, pos)
        if zlib.crc32(data[pos : pos + 16]) != head_crc:
            if _is_zero(data[pos:]):
                out.torn_bytes = rest
                break
            raise WalCorrupt(path, pos, expect, "has a damaged header (checksum mismatch)")
        if seq != expect:
            raise WalCorrupt(path, pos, expect, f"is numbered {seq}: a record is missing or out of order")
        start = pos + _FRAME.size
        if start + length > len(data):
            out.torn_bytes = rest  # the header is intact, the body was cut: an interrupted append
            break
        body = data[start : start + length]
        if zlib.crc32(body) != body_crc:
            if _is_zero(data[start:]):
                out.torn_bytes = rest
                break
            raise WalCorrupt(path, pos, seq, "has a damaged body (checksum mismatch)")
        try:
            record = msgpack.unpackb(body, raw=False)
        except Exception as e:  # a body that passes its checksum but does not decode was written wrong
            raise WalCorrupt(path, pos, seq, f"does not decode ({type(e).__name__})") from None
        out.records.append((seq, record))
        pos, expect = start + length, expect + 1
    out.end = pos if not out.torn_bytes else len(data) - out.torn_bytes
    return out


def _replay_v1(path: Path, data: memoryview, first_seq: int) -> Replay:
    out = Replay(legacy=True, first_seq=first_seq)
    pos, seq = 0, first_seq
    while pos < len(data):
        rest = len(data) - pos
        if rest < _LEGACY_FRAME.size:
            out.torn_bytes = rest
            break
        length, crc = _LEGACY_FRAME.unpack_from(data, pos)
        start = pos + _LEGACY_FRAME.size
        if start + length > len(data) and length <= MAX_RECORD_BYTES:
            # Format 1 has no header checksum: a damaged length can look like a cut body. Only a cut body
            # with nothing decodable after it is an interrupted append.
            if _resyncs_v1(data, pos + 1):
                raise WalCorrupt(path, pos, seq, "has a damaged length and intact records follow it")
            out.torn_bytes = rest
            break
        body = data[start : start + length]
        if zlib.crc32(body) != crc:
            if _is_zero(data[pos:]):
                out.torn_bytes = rest
                break
            raise WalCorrupt(path, pos, seq, "has a damaged body (checksum mismatch)")
        try:
            record = msgpack.unpackb(body, raw=False)
        except Exception as e:
            raise WalCorrupt(path, pos, seq, f"does not decode ({type(e).__name__})") from None
        out.records.append((seq, record))
        pos, seq = start + length, seq + 1
    out.end = len(data) - out.torn_bytes
    return out


def _resyncs_v1(data: memoryview, start: int) -> bool:
    """Whether a valid format-1 frame begins at or after ``start`` (within 4 MiB: this is only for logs of
    earlier versions, and a scan of every offset is quadratic)."""
    for pos in range(start, min(len(data) - _LEGACY_FRAME.size, start + (4 << 20))):
        length, crc = _LEGACY_FRAME.unpack_from(data, pos)
        end = pos + _LEGACY_FRAME.size + length
        if length > 0 and end <= len(data) and zlib.crc32(data[pos + _LEGACY_FRAME.size : end]) == crc:
            return True
    return False


def salvage(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Every intact record of a damaged format-2 log, in order, skipping damaged stretches: ((seq, record)
    pairs, what was skipped). For offline repair only: a skipped record is lost."""
    data = memoryview(path.read_bytes())
    if not bytes(data[: len(MAGIC)]) == MAGIC:
        raise ValueError(f"{path.name} is not a format-2 log")
    first = _FILE_HEADER.unpack_from(data, 0)[1] if len(data) >= _FILE_HEADER.size else 1
    records: list[tuple[int, dict[str, Any]]] = []
    skipped: list[str] = []
    pos, bad_from = _FILE_HEADER.size, -1
    while pos + _FRAME.size <= len(data):
        length, body_crc, seq, head_crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        ok = zlib.crc32(data[pos : pos + 16]) == head_crc and start + length <= len(data)
        if ok and zlib.crc32(data[start : start + length]) == body_crc:
            try:
                record = msgpack.unpackb(data[start : start + length], raw=False)
            except Exception:
                ok = False
            else:
                if bad_from >= 0:
                    skipped.append(f"bytes {bad_from:,}-{pos:,}")
                    bad_from = -1
                records.append((seq, record))
                pos = start + length
                continue
        if bad_from < 0:
            bad_from = pos
        pos += 1
    if bad_from >= 0 or pos < len(data):
        skipped.append(f"bytes {bad_from if bad_from >= 0 else pos:,}-{len(data):,} (the tail)")
    seqs = [s for s, _ in records]
    expected = set(range(first, (max(seqs) + 1) if seqs else first))
    lost = sorted(expected - set(seqs))
    if lost:
        skipped.append(f"records {', '.join(map(str, lost[:20]))}{' ...' if len(lost) > 20 else ''} are lost")
    return records, skipped


def encode(seq: int, record: dict[str, Any]) -> bytes:
    body = msgpack.packb(record, use_bin_type=True)
    head = struct.pack("<IIQ", len(body), zlib.crc32(body), seq)
    return head + struct.pack("<I", zlib.crc32(head)) + body


def header(first_seq: int) -> bytes:
    return _FILE_HEADER.pack(MAGIC, first_seq)


class WriteAheadLog:
    """The open log of the generation in force. Not thread-safe: the collection's lock serialises appends."""

    def __init__(self, path: Path, *, next_seq: int, end: int | None, fsync: bool) -> None:
        """Open ``path`` for appending at byte ``end`` (from ``replay``), or create it when ``end`` is None.

        A torn tail past ``end`` is cut here, which is the one truncation replay allows."""
        self.path = path
        self.next_seq = next_seq
        self._fsync = fsync
        self.broken: str | None = None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if end is None or end == 0:
                os.ftruncate(self._fd, 0)
                self._write_all(header(next_seq), 0)
                self._end = _FILE_HEADER.size
            else:
                self._end = end
                if os.fstat(self._fd).st_size != end:
                    os.ftruncate(self._fd, end)
            self._sync()
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def size(self) -> int:
        """Bytes of records (the file header is not counted)."""
        return self._end - _FILE_HEADER.size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def append(self, record: dict[str, Any]) -> int:
        """Write one record durably (with fsync on) and return its sequence number."""
        if self.broken:
            self._heal()
        frame = encode(self.next_seq, record)
        try:
            self._write_all(frame, self._end)
            self._sync()
        except OSError as e:
            self._roll_back(e)
        self._end += len(frame)
        self.next_seq += 1
        return self.next_seq - 1

    def _heal(self) -> None:
        """Retry the rollback that failed: once the disk answers again, the log is sound from ``_end``."""
        try:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
        except OSError as e:
            raise WalWriteError(self.path, e, broken=True) from e
        self.broken = None

    def _write_all(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def _sync(self) -> None:
        if self._fsync:
            os.fsync(self._fd)

    def _roll_back(self, err: OSError) -> None:
        try:
            os.ftruncate(self._fd, self._end)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as again:
            # After a failed fsync Linux may have dropped the dirty pages: the file's state is unknown.
            self.broken = f"rolling back a failed append also failed ({os.strerror(again.errno or 0)})"
            raise WalWriteError(self.path, err, broken=True) from err
        raise WalWriteError(self.path, err, broken=False) from err

    def close(self) -> None:
        if self._fd >= 0:
            try:
                if not self.broken:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
