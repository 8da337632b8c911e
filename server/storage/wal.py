"""Append-only log of collection changes since the last snapshot.

Each record is framed as ``<u32 length><u32 crc32><msgpack body>``. A crash can leave a torn last record;
replay stops at the first frame that is short or fails its checksum and truncates the file there, so only
records whose append completed (and, with fsync on, reached the disk) are ever applied.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

_HEADER = struct.Struct("<II")


class WriteAheadLog:
    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._file = open(path, "ab")  # noqa: SIM115 - held open for the life of the collection

    @property
    def size(self) -> int:
        return self._file.tell()

    def append(self, record: dict[str, Any]) -> None:
        body = msgpack.packb(record, use_bin_type=True)
        self._file.write(_HEADER.pack(len(body), zlib.crc32(body)) + body)
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    @staticmethod
    def replay(path: Path) -> Iterator[dict[str, Any]]:
        """Yield the complete records of a log, truncating a torn tail."""
        if not path.exists():
            return
        good = 0
        with open(path, "rb") as f:
            data = f.read()
        while good + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, good)
            start = good + _HEADER.size
            body = data[start : start + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            yield msgpack.unpackb(body, raw=False)
            good = start + length
        if good < len(data):
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
