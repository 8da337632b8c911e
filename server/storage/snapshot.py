"""Checksummed snapshots of a collection, one generation at a time.

Generation g is the files ``vectors-g.npy``, ``items-g.msgpack`` (ids and payloads), ``joint-g.npy`` (for
collections with a joint space), the saved index (``ann-g.json``, ``hnsw-g.usearch``) and ``manifest-g.json``,
which names every one of them with its size and crc32 (arrays also per 1 MiB block, so that a repair can tell
which rows a damaged block holds), the collection's settings, and the last log record the snapshot holds.
The log of changes after it is ``wal-g.log``.

A snapshot is written as: data files (each fsynced), then the manifest (fsynced), then ``CURRENT`` is
replaced atomically (write, fsync, rename, fsync the folder). A crash or a full disk at any point leaves the
previous generation in force. The previous generation and its log are kept, so that a snapshot found damaged
at open can be replaced by its predecessor plus both logs; older ones are deleted.

Files written by earlier versions (no manifest) are still read, unchecked, and replaced at the next snapshot.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

FORMAT = 2
BLOCK = 1 << 20
_GENERATION_FILE = re.compile(
    r"^(vectors|joint|items|ann|hnsw|manifest|wal)-(\d+)\.(npy|msgpack|json|usearch|log)$"
)


class SnapshotDamaged(Exception):
    """A file of a snapshot generation is missing or fails its checksum."""

    def __init__(self, folder: Path, generation: int, detail: str) -> None:
        self.generation, self.detail = generation, detail
        super().__init__(f"snapshot {generation}: {detail}")


@dataclass
class SnapshotData:
    ids: list[str]
    payloads: list[dict[str, Any]]
    vectors: np.ndarray  # (len(ids), dim) float32, already normalised for cosine collections
    joint: np.ndarray | None = None  # (len(ids), joint_dim) unit rows, for collections with a joint space


@dataclass
class Manifest:
    generation: int
    last_seq: int  # the last log record this snapshot holds (its log's records start at last_seq + 1)
    count: int
    settings: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "crc32", "blocks"?}
    legacy: bool = False  # written by an earlier version: no checksums to verify

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "generation": self.generation,
            "last_seq": self.last_seq,
            "count": self.count,
            "settings": self.settings,
            "files": self.files,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return json.dumps({**body, "crc32": zlib.crc32(canonical.encode())}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        doc = json.loads(raw)
        crc = doc.pop("crc32")
        if zlib.crc32(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()) != crc:
            raise ValueError("checksum mismatch")
        if doc["format"] != FORMAT:
            raise ValueError(f"format {doc['format']} is not {FORMAT}")
        return cls(doc["generation"], doc["last_seq"], doc["count"], doc["settings"], doc["files"])


# ------------------------------------------------------------------ small file helpers


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class _Summer:
    """crc32 of a whole file and of each 1 MiB block, fed as it is written or read."""

    def __init__(self) -> None:
        self.size = 0
        self.crc = 0
        self.blocks: list[int] = []
        self._block_crc = 0

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        while view:
            room = BLOCK - self.size % BLOCK
            part, view = view[:room], view[room:]
            self._block_crc = zlib.crc32(part, self._block_crc)
            self.size += len(part)
            if self.size % BLOCK == 0:
                self.blocks.append(self._block_crc)
                self._block_crc = 0

    def result(self, blocks: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes": self.size, "crc32": self.crc}
        if blocks:
            out["blocks"] = self.blocks + ([self._block_crc] if self.size % BLOCK else [])
        return out


def file_sum(path: Path, blocks: bool = False) -> dict[str, Any]:
    s = _Summer()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            s.feed(chunk)
    return s.result(blocks)


def _write_synced(path: Path, chunks: Iterable[bytes | memoryview], blocks: bool = False) -> dict[str, Any]:
    s = _Summer()
    try:
        with open(path, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                s.feed(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return s.result(blocks)


def _array_chunks(array: np.ndarray) -> Iterable[bytes | memoryview]:
    array = np.ascontiguousarray(array)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(array))
    yield head.getvalue()
    flat = memoryview(array.reshape(-1).view(np.uint8).data)
    for start in range(0, len(flat), 8 * BLOCK):
        yield flat[start : start + 8 * BLOCK]


def verify_file(folder: Path, name: str, expected: dict[str, Any]) -> str | None:
    """None when ``name`` matches its manifest entry, else what is wrong with it."""
    path = folder / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{name} is missing"
    if size != expected["bytes"]:
        return f"{name} has {size:,} bytes, the manifest says {expected['bytes']:,}"
    if file_sum(path)["crc32"] != expected["crc32"]:
        return f"{name} fails its checksum"
    return None


def bad_blocks(folder: Path, name: str, expected: dict[str, Any]) -> list[int]:
    """Indexes of the 1 MiB blocks of ``name`` whose checksum fails (all of them if the size differs)."""
    path = folder / name
    want = expected.get("blocks") or []
    if not path.exists() or path.stat().st_size != expected["bytes"]:
        return list(range(len(want)))
    got = file_sum(path, blocks=True)["blocks"]
    return [n for n, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]


# ------------------------------------------------------------------ generations


def manifest_path(folder: Path, generation: int) -> Path:
    return folder / f"manifest-{generation}.json"


def wal_path(folder: Path, generation: int) -> Path:
    return folder / f"wal-{generation}.log"


def read_current(folder: Path) -> tuple[int | None, str]:
    """The generation ``CURRENT`` names, or None with what is wrong with it."""
    try:
        raw = (folder / "CURRENT").read_bytes()
    except FileNotFoundError:
        return None, "CURRENT is missing"
    text = raw.decode("ascii", "replace").strip()
    if not text.isdigit():
        return None, f"CURRENT holds {text[:40]!r}, not a generation number"
    return int(text), ""


def write_current(folder: Path, generation: int) -> None:
    write_atomic(folder / "CURRENT", f"{generation}\n".encode())


def generations(folder: Path) -> dict[int, set[str]]:
    """Every generation that has files in ``folder``, with the kinds of file it has."""
    found: dict[int, set[str]] = {}
    for p in folder.iterdir():
        m = _GENERATION_FILE.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), set()).add(m.group(1))
    return found


def read_manifest(folder: Path, generation: int, *, legacy: bool = False) -> Manifest:
    """The manifest of ``generation``; with ``legacy`` (a folder of an earlier version, which has no
    manifests at all), one synthesised, unchecked, for its snapshot files."""
    path = manifest_path(folder, generation)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if generation == 0:
            return Manifest(0, 0, 0, {})  # written by an earlier version: generation 0 has no files
        files = (folder / f"vectors-{generation}.npy", folder / f"items-{generation}.msgpack")
        if legacy and all(p.exists() for p in files):
            return Manifest(generation, 0, -1, {}, legacy=True)
        raise SnapshotDamaged(folder, generation, f"{path.name} is missing") from None
    try:
        return Manifest.from_json(raw)
    except (ValueError, KeyError, TypeError) as e:
        if generation == 0:
            return Manifest(0, 0, 0, {})  # holds nothing but a copy of the settings
        raise SnapshotDamaged(folder, generation, f"{path.name} is damaged ({e})") from None


def verify(folder: Path, manifest: Manifest, names: Iterable[str] | None = None) -> None:
    """Raise ``SnapshotDamaged`` naming the first file that does not match the manifest."""
    if manifest.legacy:
        return
    for name in names if names is not None else manifest.files:
        if name not in manifest.files:
            raise SnapshotDamaged(folder, manifest.generation, f"the manifest does not list {name}")
        problem = verify_file(folder, name, manifest.files[name])
        if problem:
            raise SnapshotDamaged(folder, manifest.generation, problem)


def load(folder: Path, manifest: Manifest, dim: int, joint_dim: int = 0) -> SnapshotData:
    """The data of a snapshot, each file verified against the manifest before it is used."""
    g = manifest.generation
    if g == 0:
        return SnapshotData([], [], np.zeros((0, dim), np.float32), np.zeros((0, joint_dim), np.float32))
    names = [f"vectors-{g}.npy", f"items-{g}.msgpack"] + ([f"joint-{g}.npy"] if joint_dim else [])
    verify(folder, manifest, names)
    try:
        vectors = np.load(folder / f"vectors-{g}.npy")
        joint = np.load(folder / f"joint-{g}.npy") if joint_dim else None
        with open(folder / f"items-{g}.msgpack", "rb") as f:
            items = msgpack.unpackb(f.read(), raw=False)
        ids, payloads = items["ids"], items["payloads"]
    except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise SnapshotDamaged(folder, g, f"does not load ({type(e).__name__}: {str(e)[:100]})") from None
    shapes_ok = vectors.ndim == 2 and vectors.shape == (len(ids), dim) and len(payloads) == len(ids)
    if joint is not None:
        shapes_ok = shapes_ok and joint.shape == (len(ids), joint_dim)
    if not shapes_ok:
        raise SnapshotDamaged(
            folder, g, f"holds arrays of shape {vectors.shape} for {len(ids)} ids of dim {dim}"
        )
    return SnapshotData(ids, payloads, np.ascontiguousarray(vectors, dtype=np.float32), joint)


def write_data(folder: Path, generation: int, data: SnapshotData) -> dict[str, dict[str, Any]]:
    """Write a generation's data files (not yet in force); returns their manifest entries."""
    files: dict[str, dict[str, Any]] = {}
    arrays = {"vectors": data.vectors} | ({"joint": data.joint} if data.joint is not None else {})
    for stem, array in arrays.items():
        name = f"{stem}-{generation}.npy"
        files[name] = _write_synced(folder / name, _array_chunks(array), blocks=True)
    name = f"items-{generation}.msgpack"
    items = msgpack.packb({"ids": data.ids, "payloads": data.payloads}, use_bin_type=True)
    files[name] = _write_synced(folder / name, [items])
    return files


def commit(folder: Path, manifest: Manifest) -> None:
    """Put a generation whose files are written in force: its manifest, then ``CURRENT``."""
    path = manifest_path(folder, manifest.generation)
    _write_synced(path, [manifest.to_json()])
    write_current(folder, manifest.generation)


def remove_generation_files(folder: Path, generation: int) -> None:
    """Delete whatever a failed snapshot of ``generation`` left."""
    for p in folder.glob(f"*-{generation}.*"):
        m = _GENERATION_FILE.match(p.name.removesuffix(".tmp"))
        if m and int(m.group(2)) == generation and m.group(1) != "wal":
            p.unlink(missing_ok=True)


def quarantine(folder: Path, damaged: Iterable[int]) -> Path:
    """Move the snapshot files (not the logs) of ``damaged`` generations to ``quarantine/<time>/``, kept for
    a post-mortem but out of the way of recovery."""
    target = folder / "quarantine" / time.strftime("%Y%m%dT%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    bad = set(damaged)
    for p in folder.iterdir():
        m = _GENERATION_FILE.match(p.name)
        if m and int(m.group(2)) in bad and m.group(1) != "wal":
            os.replace(p, target / p.name)
    fsync_dir(folder)
    return target


def remove_older_than(folder: Path, generation: int) -> None:
    """Delete every generation's files (log included) below ``generation``."""
    for p in folder.iterdir():
        m = _GENERATION_FILE.match(p.name)
        if m and int(m.group(2)) < generation:
            p.unlink(missing_ok=True)
