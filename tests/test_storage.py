"""The on-disk format: write-ahead log replay, torn tails, snapshot generations, compaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.errors import ServiceError
from server.storage import Collection, CollectionSettings
from server.storage.recovery import CollectionDamaged
from server.storage.wal import replay

SETTINGS = CollectionSettings("c", 8)


def _open(folder: Path, wal_bytes: int = 1 << 30) -> Collection:
    return Collection.open(folder, fsync=False, snapshot_wal_bytes=wal_bytes)


def _new(tmp_path: Path, wal_bytes: int = 1 << 30) -> Collection:
    return Collection.create(tmp_path / "c", SETTINGS, fsync=False, snapshot_wal_bytes=wal_bytes)


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _model_matches(c: Collection, model: dict[str, np.ndarray]) -> None:
    assert len(c) == len(model)
    for item_id, vec in model.items():
        np.testing.assert_allclose(c.vector_of(item_id), vec, atol=1e-6)
    if model:
        q = _vecs(1, seed=99)
        ids = list(model)
        mat = np.stack([model[i] for i in ids])
        true = mat @ q[0]
        hits = c.search(q, 5)[0]
        # Same scores as brute force, and each hit's score is its own (ties may order ids either way).
        np.testing.assert_allclose([h.score for h in hits], np.sort(true)[::-1][:5], atol=1e-5)
        for h in hits:
            assert abs(h.score - true[ids.index(h.id)]) < 1e-5
        assert len({h.id for h in hits}) == len(hits)


def test_replay_without_snapshot(tmp_path: Path) -> None:
    c = _new(tmp_path)
    v = _vecs(11)
    c.upsert([f"i{n}" for n in range(10)], v[:10], [{"n": str(n)} for n in range(10)])
    c.delete(["i0", "i1"])
    c.upsert(["i2"], v[10:], [{"n": "x"}])
    # No close(): as after a crash, only the log exists.
    again = _open(tmp_path / "c")
    model = {f"i{n}": v[n] for n in range(2, 10)} | {"i2": v[10]}
    _model_matches(again, model)
    assert again.get(["i2"])[0][1] == {"n": "x"}


def test_torn_tail_is_dropped_and_truncated(tmp_path: Path) -> None:
    c = _new(tmp_path)
    v = _vecs(4)
    c.upsert(["a", "b"], v[:2], [{}, {}])
    c.upsert(["c", "d"], v[2:], [{}, {}])
    wal = tmp_path / "c" / "wal-0.log"
    size = wal.stat().st_size
    with open(wal, "r+b") as f:
        f.truncate(size - 3)  # the last record was being written when the power went
    again = _open(tmp_path / "c")
    _model_matches(again, {"a": v[0], "b": v[1]})
    assert wal.stat().st_size < size - 3
    again.upsert(["e"], v[3:4], [{}])  # appends after the good prefix
    _model_matches(_open(tmp_path / "c"), {"a": v[0], "b": v[1], "e": v[3]})


def test_a_damaged_complete_record_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    c = _new(tmp_path)
    v = _vecs(2)
    c.upsert(["a"], v[:1], [{}])
    c.upsert(["b"], v[1:], [{}])
    wal = tmp_path / "c" / "wal-0.log"
    data = bytearray(wal.read_bytes())
    data[-5] ^= 0xFF  # inside the last record, which is complete: it was acknowledged, so it may not be cut
    wal.write_bytes(bytes(data))
    with pytest.raises(CollectionDamaged, match=r"wal-0.log: record 2 at byte \d+ has a damaged body"):
        _open(tmp_path / "c")
    assert wal.read_bytes() == bytes(data)  # nothing truncated


def test_snapshots_roll_generations_and_compact(tmp_path: Path) -> None:
    c = _new(tmp_path, wal_bytes=2000)  # a snapshot every few upserts
    v = _vecs(200, seed=1)
    model: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(5)
    for step in range(60):
        ids = [f"i{int(j)}" for j in rng.integers(0, 60, size=3)]
        rows = rng.integers(0, 200, size=3)
        c.upsert(ids, v[rows], [{} for _ in ids])
        for i, r in zip(ids, rows, strict=True):
            model[i] = v[r]
        if step % 4 == 3:
            gone = [f"i{int(j)}" for j in rng.integers(0, 60, size=2)]
            c.delete(gone)
            for g in gone:
                model.pop(g, None)
    folder = tmp_path / "c"
    generation = int((folder / "CURRENT").read_text())
    assert generation > 3
    # The generation in force and the one before it (its replacement should this one be found damaged).
    assert sorted(p.name for p in folder.glob("vectors-*.npy")) == [
        f"vectors-{generation - 1}.npy",
        f"vectors-{generation}.npy",
    ]
    assert sorted(p.name for p in folder.glob("wal-*.log")) == [
        f"wal-{generation - 1}.log",
        f"wal-{generation}.log",
    ]
    assert c._view.index.rows <= len(model) + 60  # cleared rows were compacted away at the last snapshot
    _model_matches(c, model)
    _model_matches(_open(folder), model)


def test_close_snapshots_and_empties_the_log(tmp_path: Path) -> None:
    c = _new(tmp_path)
    v = _vecs(3)
    c.upsert(["a", "b", "c"], v, [{}, {}, {}])
    c.close()
    folder = tmp_path / "c"
    assert (folder / "CURRENT").read_text().strip() == "1"
    assert replay(folder / "wal-1.log").records == []
    assert replay(folder / "wal-1.log").first_seq == 2  # the record after the one the snapshot holds
    assert (folder / "wal-0.log").exists()  # kept until the next snapshot, as generation 1's fallback
    _model_matches(_open(folder), {"a": v[0], "b": v[1], "c": v[2]})


def test_duplicate_ids_in_one_upsert_keep_the_last(tmp_path: Path) -> None:
    c = _new(tmp_path)
    v = _vecs(3)
    assert c.upsert(["a", "a", "b"], v, [{"v": "1"}, {"v": "2"}, {}]) == 2
    assert c.get(["a"])[0][1] == {"v": "2"}
    _model_matches(_open(tmp_path / "c"), {"a": v[1], "b": v[2]})


def test_wal_replay_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert replay(tmp_path / "none.log").records == []


def test_prepare_vectors_names_the_bad_row(tmp_path: Path) -> None:
    c = _new(tmp_path)
    bad = _vecs(3)
    bad[2] = 0
    with pytest.raises(ServiceError, match=r"row 2\) is all zeros"):
        c.prepare_vectors(bad)


def test_joint_vectors_persist_through_log_and_snapshot(tmp_path: Path) -> None:
    settings = CollectionSettings("j", 8, "cosine", "mobilenet_v2", "conse:spacy", 5)
    c = Collection.create(tmp_path / "j", settings, fsync=False, snapshot_wal_bytes=1 << 30)
    v = _vecs(6)
    joint = np.random.default_rng(7).standard_normal((6, 5)).astype(np.float32)
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    c.upsert([f"i{n}" for n in range(4)], v[:4], [{}] * 4, joint[:4])
    c.delete(["i1"])
    c.upsert(["i2"], v[4:5], [{}], joint[4:5])  # replaces i2 in both spaces

    def check(col: Collection) -> None:
        for item_id, row in (("i0", 0), ("i2", 4), ("i3", 3)):
            np.testing.assert_allclose(col.vector_of(item_id, joint=True), joint[row], atol=1e-6)
        hits = col.search(joint[4:5], 3, joint=True)[0]
        assert hits[0].id == "i2" and {h.id for h in hits} == {"i0", "i2", "i3"}

    check(Collection.open(tmp_path / "j", fsync=False, snapshot_wal_bytes=1 << 30))  # from the log
    c.close()
    assert (tmp_path / "j" / "joint-1.npy").exists()
    check(Collection.open(tmp_path / "j", fsync=False, snapshot_wal_bytes=1 << 30))  # from the snapshot
