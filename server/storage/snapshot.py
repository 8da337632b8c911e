"""Write-then-rename snapshots of a collection.

A snapshot of generation g is two files, ``vectors-g.npy`` and ``items-g.msgpack`` (ids and payloads),
and the log of changes after it is ``wal-g.log``. The file ``CURRENT`` names the generation in force and is
replaced atomically (write a temporary file, fsync, rename, fsync the folder) only after the new snapshot is
on disk, so a crash at any point leaves either the old generation or the new one complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np


@dataclass
class SnapshotData:
    ids: list[str]
    payloads: list[dict[str, str]]
    vectors: np.ndarray  # (len(ids), dim) float32, already normalised for cosine collections
    joint: np.ndarray | None = None  # (len(ids), joint_dim) unit rows, for collections with a joint space


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def current_generation(folder: Path) -> int:
    try:
        return int((folder / "CURRENT").read_text().strip())
    except FileNotFoundError:
        return 0


def wal_path(folder: Path, generation: int) -> Path:
    return folder / f"wal-{generation}.log"


def load(folder: Path, generation: int, dim: int, joint_dim: int = 0) -> SnapshotData:
    if generation == 0:
        return SnapshotData([], [], np.zeros((0, dim), np.float32), np.zeros((0, joint_dim), np.float32))
    vectors = np.load(folder / f"vectors-{generation}.npy")
    joint = np.load(folder / f"joint-{generation}.npy") if joint_dim else None
    with open(folder / f"items-{generation}.msgpack", "rb") as f:
        items = msgpack.unpackb(f.read(), raw=False)
    return SnapshotData(
        items["ids"], items["payloads"], np.ascontiguousarray(vectors, dtype=np.float32), joint
    )


def write(folder: Path, generation: int, data: SnapshotData) -> None:
    """Write generation ``generation`` and make it current; older generations' files are removed."""
    arrays = {"vectors": data.vectors} | ({"joint": data.joint} if data.joint is not None else {})
    for stem, array in arrays.items():
        with open(folder / f"{stem}-{generation}.npy", "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
    items = msgpack.packb({"ids": data.ids, "payloads": data.payloads}, use_bin_type=True)
    items_path = folder / f"items-{generation}.msgpack"
    with open(items_path, "wb") as f:
        f.write(items)
        f.flush()
        os.fsync(f.fileno())
    wal_path(folder, generation).touch()
    write_atomic(folder / "CURRENT", f"{generation}\n".encode())
    for old in folder.iterdir():
        stem = old.name.split(".")[0]
        if "-" in stem and stem.rsplit("-", 1)[1].isdigit() and int(stem.rsplit("-", 1)[1]) < generation:
            old.unlink()
