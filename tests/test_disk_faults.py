"""A full disk and a failing disk, for real: a small tmpfs that fills up under a running server, and a FUSE
filesystem (tests/faultfs.py) whose write, fsync, create and rename calls fail with ENOSPC or EIO on the
files named. Every acknowledged write must survive, no refused write may appear, and no call may answer
INTERNAL."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from visionsearch_client import Client, Item, VisionSearchError

from server.app import create_server
from server.config import Config
from server.errors import ServiceError
from server.services import Services
from server.storage import Collection, CollectionSettings
from tests import faultfs
from tests.conftest import ServerProcess

pytestmark = pytest.mark.skipif(bool(faultfs.available()), reason=faultfs.available() or "available")

DIM = 64


def _vecs(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs, a quarter of it taken by a file the test can delete to free space."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "filler").write_bytes(os.urandom(1 << 20))
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill_until_refused(c: Client, start: int) -> tuple[list[str], int]:
    """Upsert batches of 20 until the server refuses one; returns the acknowledged ids and the next id."""
    acked: list[str] = []
    n = start
    while True:
        batch = [Item(f"id-{n + j}", vector=v) for j, v in enumerate(_vecs(20, n))]
        try:
            c.upsert("c", batch)
        except VisionSearchError as e:
            assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code, e.details)
            assert "disk is full" in e.details and "was not applied" in e.details
            return acked, n + 20
        acked += [i.id for i in batch]
        n += 20
        assert n < 200_000, "the disk never filled"


def test_a_full_disk_refuses_writes_and_loses_no_acknowledged_one(
    spawn_server: type[ServerProcess], small_disk: Path
) -> None:
    # Snapshots every 64 KiB of log: as the disk fills, a snapshot fails first (it rewrites the whole
    # collection), writes go on into the log, then an append fails.
    proc = spawn_server(small_disk, "--fsync", "--snapshot-wal-bytes", "65536", "--log-level", "INFO")
    with Client(proc.address, timeout=30) as c:
        c.create_collection("c", dim=DIM)
        acked, n = _fill_until_refused(c, 0)
        refused = [f"id-{n - 20 + j}" for j in range(20)]
        for k in range(3):  # still (nearly) full: acknowledged or refused as disk full, never INTERNAL
            batch = [Item(f"more-{k}-{j}", vector=v) for j, v in enumerate(_vecs(20, 1000 + k))]
            try:
                c.upsert("c", batch)
                acked += [i.id for i in batch]
            except VisionSearchError as e:
                assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code, e.details)
                refused += [i.id for i in batch]
        assert c.count("c") == len(acked)  # reads go on
        (small_disk / "filler").unlink()  # the operator frees space
        more = [Item(f"late-{j}", vector=v) for j, v in enumerate(_vecs(500, 99))]
        for k in range(0, 500, 50):
            c.upsert("c", more[k : k + 50])
        assert c.delete("c", [acked[0]]) == 1
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert "snapshot failed" in proc.proc.stderr.read()  # the snapshot path was exercised too

    again = spawn_server(small_disk)
    with Client(again.address, timeout=30) as c:
        expect = acked[1:] + [i.id for i in more]
        assert c.count("c") == len(expect)
        assert {g.id for g in c.get_items("c", expect[:10_000])} == set(expect[:10_000])
        assert c.get_items("c", [acked[0], *refused]) == []


def test_sigterm_on_a_full_disk_exits_cleanly_and_keeps_the_log(
    spawn_server: type[ServerProcess], small_disk: Path
) -> None:
    proc = spawn_server(small_disk, "--fsync")
    with Client(proc.address, timeout=30) as c:
        c.create_collection("c", dim=DIM)
        acked, _ = _fill_until_refused(c, 0)
    proc.signal(signal.SIGTERM)  # its snapshot at close cannot be written
    assert proc.wait(60) == 0
    again = spawn_server(small_disk)
    with Client(again.address, timeout=30) as c:
        assert c.count("c") == len(acked)


# ------------------------------------------------------------------ every write path, failing on command

KW = {"fsync": True, "snapshot_wal_bytes": 1 << 40}


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[faultfs.FaultFS]:
    with faultfs.FaultFS(tmp_path) as mounted:
        yield mounted


def _new(fs: faultfs.FaultFS, **settings: object) -> Collection:
    return Collection.create(fs.mount / "c", CollectionSettings("c", DIM, **settings), **KW)  # type: ignore[arg-type]


def _upsert(c: Collection, ids: list[str], seed: int) -> None:
    c.upsert(ids, _vecs(len(ids), seed), [{"i": i} for i in ids])


@pytest.mark.parametrize(
    ("op", "err", "status"),
    [
        ("write", errno.ENOSPC, "DISK_FULL"),
        ("write", errno.EIO, "UNAVAILABLE"),
        ("fsync", errno.EIO, "UNAVAILABLE"),
        ("fsync", errno.ENOSPC, "DISK_FULL"),
    ],
)
def test_a_failed_append_is_rolled_back(fs: faultfs.FaultFS, op: str, err: int, status: str) -> None:
    c = _new(fs)
    _upsert(c, ["a", "b"], 1)
    fs.fail(op, "wal-*.log", err, times=1)
    with pytest.raises(ServiceError) as info:
        _upsert(c, ["refused"], 2)
    assert info.value.error.name == status and "was not applied" in info.value.message
    assert "refused" not in c
    _upsert(c, ["c"], 3)  # lands right after "b": the log is sound
    c.delete(["a"])
    assert fs.hits() == 1
    again = Collection.open(fs.mount / "c", **KW)
    assert sorted(i for i, _, _ in again.get(["a", "b", "c", "refused"])) == ["b", "c"]
    assert again.notes == []  # no torn tail was left behind to cut


def test_a_failed_rollback_refuses_writes_until_the_disk_answers(fs: faultfs.FaultFS) -> None:
    c = _new(fs)
    _upsert(c, ["a"], 1)
    fs.fail("write", "wal-*.log", errno.EIO)
    fs.fail("truncate", "wal-*.log", errno.EIO)
    for n in range(3):
        with pytest.raises(ServiceError) as info:
            _upsert(c, [f"x{n}"], 2)
        assert info.value.error.name == "UNAVAILABLE"
    fs.clear()
    _upsert(c, ["b"], 3)
    again = Collection.open(fs.mount / "c", **KW)
    assert sorted(i for i, _, _ in again.get(["a", "b", "x0", "x1", "x2"])) == ["a", "b"]


@pytest.mark.parametrize(
    ("op", "pattern"),
    [
        ("write", "vectors-*.npy"),
        ("write", "items-*.msgpack"),
        ("fsync", "vectors-*.npy"),
        ("create", "manifest-*.json"),
        ("write", "manifest-*.json"),
        ("rename", "CURRENT"),
        ("create", "wal-1.log"),
        ("write", "hnsw-*.usearch"),
        ("fsync", "c"),  # the folder, after CURRENT moved
    ],
)
def test_a_failed_snapshot_leaves_the_generation_in_force(fs: faultfs.FaultFS, op: str, pattern: str) -> None:
    graph = pattern.startswith("hnsw")
    c = _new(fs, index="hnsw" if graph else "exact")
    n = 1200 if graph else 300  # an HNSW graph is built, and saved with the snapshot, from 1,000 items
    c.upsert([f"i{k}" for k in range(n)], _vecs(n, 1), [{}] * n)
    assert c.wait_for_index(120)
    fs.fail(op, pattern, errno.ENOSPC)
    try:
        c.snapshot()
    except Exception as e:  # any refusal is fine here; what it leaves on disk is the test
        assert "SnapshotFailed" in type(e).__name__ or isinstance(e, ServiceError), repr(e)
    _upsert(c, ["after"], 2)  # writes go on into the log of the generation in force
    c.delete(["i0"])
    c.close()  # its snapshot fails too: the log is kept
    assert fs.hits() >= 1
    fs.clear()
    leftovers = [p.name for p in (fs.mount / "c").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    again = Collection.open(fs.mount / "c", **KW)
    assert len(again) == n and "after" in again and "i0" not in again
    again.snapshot()  # and once the disk answers, snapshots work again
    assert len(Collection.open(fs.mount / "c", **KW)) == n


def test_disk_errors_over_grpc_are_precise_statuses(
    fs: faultfs.FaultFS, base_config: Config, services: Services
) -> None:
    config = replace(base_config, data_dir=fs.mount, default_collection=False, fsync=True)
    own = services.with_store(config)
    running = create_server(config, own)
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=30) as c:
            c.create_collection("c", dim=DIM)
            c.upsert("c", [Item("a", vector=_vecs(1, 1)[0])])
            for err, code in (
                (errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED),
                (errno.EIO, grpc.StatusCode.UNAVAILABLE),
            ):
                fs.fail("write", "wal-*.log", err, times=1)
                with pytest.raises(VisionSearchError) as info:
                    c.upsert("c", [Item("b", vector=_vecs(1, 2)[0])])
                assert info.value.code == code, info.value.details
                with pytest.raises(VisionSearchError) as info:
                    fs.fail("write", "wal-*.log", err, times=1)
                    c.delete("c", ["a"])
                assert info.value.code == code
            assert c.count("c") == 1 and c.get_items("c", ["a", "b"])[0].id == "a"
    finally:
        running.server.stop(0).wait()
        own.close()
