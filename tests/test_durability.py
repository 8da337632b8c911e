"""Real damage to real files: byte flips and truncations of every file kind a collection writes.

Each test writes a collection, damages one file the way a bad disk or an operator's mistake would, reopens it
and checks the promise: every acknowledged write is served exactly, or the collection refuses to open with a
reason naming the file and offset, truncates nothing, and ``visionsearch-admin repair`` saves what is intact.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from visionsearch_client import Client, Item

from server.admin import check_collection, repair_collection
from server.errors import ServiceError
from server.storage import Collection, CollectionSettings, CollectionStore
from server.storage.recovery import CollectionDamaged
from tests.conftest import ROOT, ServerProcess
from tests.test_bad_input import refused

DIM = 8
KW = {"fsync": False, "snapshot_wal_bytes": 1 << 40}


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _assert_serves(c: Collection, model: dict[str, np.ndarray]) -> None:
    assert len(c) == len(model)
    got = {i: v for i, _, v in c.get(list(model))}
    assert set(got) == set(model)
    for item_id, vec in model.items():
        np.testing.assert_array_equal(got[item_id], vec)  # bit for bit: no wrong vector is ever served


def _flip(path: Path, offset: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def _one_record_per_item(folder: Path, n: int) -> tuple[Collection, dict[str, np.ndarray], list[int]]:
    """``n`` upserts of one item each; returns the byte offset where each record starts."""
    c = Collection.create(folder, CollectionSettings("c", DIM), **KW)
    v = _vecs(n)
    starts = []
    for i in range(n):
        starts.append(16 + c.wal_bytes)
        c.upsert([f"i{i}"], v[i : i + 1], [{"n": str(i)}])
    return c, {f"i{i}": v[i] for i in range(n)}, starts


# ------------------------------------------------------------------ the write-ahead log


def test_a_flip_in_the_middle_of_the_log_is_reported_not_truncated(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    _, model, starts = _one_record_per_item(folder, 100)
    wal = folder / "wal-0.log"
    _flip(wal, starts[49] + 30)  # inside record 50's body; 50 intact records follow it
    before = wal.read_bytes()
    with pytest.raises(CollectionDamaged) as info:
        Collection.open(folder, **KW)
    assert f"wal-0.log: record 50 at byte {starts[49]:,} has a damaged body" in info.value.reason
    assert "visionsearch-admin" in info.value.reason
    assert wal.read_bytes() == before  # nothing truncated

    actions = repair_collection(folder)
    assert any("kept 99 intact records" in a and "records 50 are lost" in a for a in actions), actions
    again = Collection.open(folder, **KW)
    del model["i49"]
    _assert_serves(again, model)
    assert check_collection(folder).status == "ok"
    assert any((folder / "quarantine").rglob("wal-0.log"))  # the damaged original is kept for a post-mortem


def test_a_flip_in_the_first_record_does_not_empty_the_collection(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    _, model, starts = _one_record_per_item(folder, 100)
    _flip(folder / "wal-0.log", starts[0] + 25)
    with pytest.raises(CollectionDamaged, match=r"record 1 at byte 16 has a damaged body"):
        Collection.open(folder, **KW)
    repair_collection(folder)
    del model["i0"]
    _assert_serves(Collection.open(folder, **KW), model)


def test_a_flip_in_a_record_header_is_corruption(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    _, _, starts = _one_record_per_item(folder, 10)
    _flip(folder / "wal-0.log", starts[4] + 1, 0x40)  # the length: would otherwise read as a cut body
    with pytest.raises(CollectionDamaged, match=r"record 5 at byte [\d,]+ has a damaged header"):
        Collection.open(folder, **KW)


@pytest.mark.parametrize("cut", [1, 5, 19, 20, 21, -1])
def test_an_interrupted_append_is_the_only_thing_cut(tmp_path: Path, cut: int) -> None:
    folder = tmp_path / "c"
    _, model, starts = _one_record_per_item(folder, 10)
    wal = folder / "wal-0.log"
    size = wal.stat().st_size
    keep = starts[9] + cut if cut > 0 else size - 1  # the last record, cut anywhere
    with open(wal, "r+b") as f:
        f.truncate(keep)
    again = Collection.open(folder, **KW)
    del model["i9"]
    _assert_serves(again, model)
    assert any("cut an interrupted append" in n for n in again.notes)
    assert wal.stat().st_size == starts[9]
    again.upsert(["new"], _vecs(1, 5), [{}])  # and the log goes on soundly
    _assert_serves(Collection.open(folder, **KW), model | {"new": _vecs(1, 5)[0]})


def test_zero_bytes_after_the_last_record_are_an_unwritten_tail(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    _, model, _ = _one_record_per_item(folder, 5)
    with open(folder / "wal-0.log", "ab") as f:
        f.write(bytes(4096))  # blocks a filesystem allocated but never wrote before a power cut
    _assert_serves(Collection.open(folder, **KW), model)


# ------------------------------------------------------------------ snapshots


def _two_generations(folder: Path) -> tuple[Collection, dict[str, np.ndarray]]:
    """A collection whose generations 1 and 2 are on disk, with log records after each."""
    c = Collection.create(folder, CollectionSettings("c", DIM, joint="conse:spacy", joint_dim=4), **KW)
    v = _vecs(60, seed=3)
    joint = np.abs(_vecs(60, seed=4)[:, :4]) + 0.1
    model: dict[str, np.ndarray] = {}
    for gen in range(2):
        for i in range(20):
            n = gen * 20 + i
            c.upsert([f"i{n}"], v[n : n + 1], [{"n": str(n)}], c.prepare_joint(joint[n : n + 1]))
            model[f"i{n}"] = v[n]
        c.delete([f"i{gen * 20}"])
        del model[f"i{gen * 20}"]
        c.snapshot()
    for n in range(40, 45):  # after generation 2: only in wal-2.log
        c.upsert([f"i{n}"], v[n : n + 1], [{}], c.prepare_joint(joint[n : n + 1]))
        model[f"i{n}"] = v[n]
    assert (folder / "CURRENT").read_text().strip() == "2"
    return c, model


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


DAMAGE = {
    "flip a bit in the vectors": lambda f: _flip(f / "vectors-2.npy", 200),
    "flip a bit in the joint vectors": lambda f: _flip(f / "joint-2.npy", 150),
    "flip a byte in the items": lambda f: _flip(f / "items-2.msgpack", 30, 0xFF),
    "truncate the vectors": lambda f: (f / "vectors-2.npy").write_bytes(
        (f / "vectors-2.npy").read_bytes()[:300]
    ),
    "truncate the items": lambda f: (f / "items-2.msgpack").write_bytes(
        (f / "items-2.msgpack").read_bytes()[:40]
    ),
    "delete the vectors": lambda f: (f / "vectors-2.npy").unlink(),
    "flip a byte in the manifest": lambda f: _flip(f / "manifest-2.json", 40),
    "delete the manifest": lambda f: (f / "manifest-2.json").unlink(),
    "garbage in CURRENT": lambda f: (f / "CURRENT").write_bytes(b"\x00\xffgarbage"),
    "CURRENT names a generation that is not there": lambda f: (f / "CURRENT").write_text("99\n"),
    "delete CURRENT": lambda f: (f / "CURRENT").unlink(),
    "truncate config.json": lambda f: (f / "config.json").write_bytes((f / "config.json").read_bytes()[:20]),
    "flip a digit in config.json": lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"dim": 8', '"dim": 9')
    ),
    "delete config.json": lambda f: (f / "config.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_to_one_snapshot_file_is_survived_with_every_write(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "c"
    _, model = _two_generations(folder)  # not closed: as after kill -9
    DAMAGE[damage](folder)
    again = Collection.open(folder, **KW)
    _assert_serves(again, model)
    assert again.notes, "the repair must be reported"
    for item_id in ("i5", "i42"):
        assert again.vector_of(item_id, joint=True).shape == (4,)
    # It writes a sound generation at once, so that the next damage finds a fallback again.
    assert check_collection(folder).status == "ok", check_collection(folder).details
    _assert_serves(Collection.open(folder, **KW), model)


def test_both_generations_damaged_is_refused_and_repair_keeps_the_intact_rows(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    c = Collection.create(folder, CollectionSettings("c", 512), **KW)
    x = np.random.default_rng(1).standard_normal((1500, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c.upsert([f"i{n}" for n in range(1000)], x[:1000], [{}] * 1000)
    c.snapshot()  # generation 1: 1,000 rows of 2 KiB, 2 MB of vectors in 2 blocks
    c.upsert([f"i{n}" for n in range(1000, 1500)], x[1000:], [{}] * 500)
    c.snapshot()  # generation 2
    (folder / "wal-1.log").unlink()  # generation 1 can no longer replace generation 2
    _flip(folder / "vectors-2.npy", 128 + 600 * 2048 + 7)  # row 600, in the first 1 MiB block
    with pytest.raises(CollectionDamaged, match=r"vectors-2.npy fails its checksum"):
        Collection.open(folder, **KW)
    assert check_collection(folder).status == "damaged"
    actions = repair_collection(folder)
    assert any("rows lay in damaged blocks and are lost" in a for a in actions), actions
    again = Collection.open(folder, **KW)
    lost_rows = 1500 - len(again)
    assert 0 < lost_rows <= 520  # the rows of one damaged 1 MiB block, and no more
    kept = [i for i, _, _ in again.get([f"i{n}" for n in range(1500)])]
    assert "i600" not in kept and "i1400" in kept
    for item_id, _, vec in again.get(kept[::50]):
        np.testing.assert_array_equal(vec, x[int(item_id[1:])])


def test_a_damaged_graph_is_rebuilt_from_the_vectors_not_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    c = Collection.create(folder, CollectionSettings("c", 16, index="hnsw"), **KW)
    x = np.random.default_rng(2).standard_normal((1200, 16)).astype(np.float32)
    c.upsert([f"i{n}" for n in range(1200)], x, [{}] * 1200)
    assert c.wait_for_index(120)
    c.close()
    graph = next(folder.glob("hnsw-*.usearch"))
    data = bytearray(graph.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 256] = np.random.default_rng(3).integers(0, 256, 256, dtype=np.uint8).tobytes()
    graph.write_bytes(bytes(data))
    # In a child process: loading such a graph unchecked made usearch crash the process (SIGSEGV).
    script = f"""
import numpy as np
from server.storage import Collection
c = Collection.open(__import__("pathlib").Path({str(folder)!r}), fsync=False, snapshot_wal_bytes=1 << 40)
assert "building" in c.index_in_use() or "restored" not in c.index_in_use(), c.index_in_use()
assert c.wait_for_index(120)
q = np.random.default_rng(4).standard_normal((20, 16)).astype(np.float32)
hits = c.search(c.prepare_vectors(q), 10)
assert all(len(h) == 10 for h in hits)
print("ok", c.index_in_use())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok hnsw")
    assert "saved index is damaged" in out.stderr and "hnsw-" in out.stderr


# ------------------------------------------------------------------ the store


def _store(root: Path) -> CollectionStore:
    return CollectionStore(
        root, known_embedders={}, known_joints=lambda: {}, fsync=False, snapshot_wal_bytes=1 << 40
    )


def test_one_damaged_collection_does_not_stop_the_others(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for name in ("good", "bad"):
        c = store.create(CollectionSettings(name, DIM))
        for i in range(5):
            c.upsert([f"{name}{i}"], _vecs(1, i), [{}])
    _flip(tmp_path / "collections" / "bad" / "wal-0.log", 40)
    again = _store(tmp_path)
    assert [c.name for c in again.list()] == ["good"] and len(again.get("good")) == 5
    assert "bad" in again.damaged and "wal-0.log: record 1" in again.damaged["bad"].reason
    with pytest.raises(ServiceError) as info:
        again.get("bad")
    assert info.value.error.name == "DATA_LOSS" and "wal-0.log" in info.value.message
    with pytest.raises(ServiceError, match="exists but is damaged"):
        again.create(CollectionSettings("bad", DIM))
    again.drop("bad")  # a damaged collection can be dropped
    assert "bad" not in again.damaged and not (tmp_path / "collections" / "bad").exists()


def test_a_leftover_empty_folder_does_not_block_create(tmp_path: Path) -> None:
    (tmp_path / "collections" / "left").mkdir(parents=True)
    store = _store(tmp_path)
    (tmp_path / "collections" / "over").mkdir()  # appears while the server runs
    for name in ("left", "over"):
        assert len(store.create(CollectionSettings(name, DIM))) == 0


def test_an_interrupted_create_leaves_nothing(tmp_path: Path) -> None:
    partial = tmp_path / "collections" / ".creating-x"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{")
    store = _store(tmp_path)
    assert store.list() == [] and store.damaged == {} and not partial.exists()


def test_deleted_config_at_generation_0_is_restored_not_vanished(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create(CollectionSettings("c", DIM)).upsert(["a"], _vecs(1), [{}])
    (tmp_path / "collections" / "c" / "config.json").unlink()
    again = _store(tmp_path)
    assert len(again.get("c")) == 1 and any("config.json" in n for n in again.get("c").notes)
    assert json.loads((tmp_path / "collections" / "c" / "config.json").read_text())["settings"]["dim"] == DIM


def test_admin_cli_checks_and_repairs(tmp_path: Path) -> None:
    store = _store(tmp_path)
    c = store.create(CollectionSettings("c", DIM))
    for i in range(5):
        c.upsert([f"i{i}"], _vecs(1, i), [{}])
    store.create(CollectionSettings("d", DIM))
    _flip(tmp_path / "collections" / "c" / "wal-0.log", 40)

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "server.admin", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = admin("check", str(tmp_path))
    assert out.returncode == 1
    assert (
        "c: damaged" in out.stdout
        and "wal-0.log: record 1 at byte 16" in out.stdout
        and "d: ok" in out.stdout
    )
    out = admin("repair", str(tmp_path), "--collection", "c")
    assert out.returncode == 0 and "c: now ok" in out.stdout, out.stdout + out.stderr
    assert admin("check", str(tmp_path)).returncode == 0
    assert len(_store(tmp_path).get("c")) == 4
    shutil.rmtree(tmp_path / "collections" / "c" / "quarantine")


def test_a_server_starts_beside_a_damaged_collection_and_reports_it(
    spawn_server: type[ServerProcess], tmp_path: Path
) -> None:
    proc = spawn_server(tmp_path)
    with Client(proc.address, timeout=30) as c:
        for name in ("good", "bad"):
            c.create_collection(name, dim=DIM)
            c.upsert(name, [Item(f"{name}{i}", vector=v) for i, v in enumerate(_vecs(3, 1))])
    proc.signal(signal.SIGKILL)  # no snapshot at exit: the items are only in the logs
    proc.wait()
    _flip(tmp_path / "collections" / "bad" / "wal-0.log", 40)

    again = spawn_server(tmp_path, "--log-level", "ERROR")
    with Client(again.address, timeout=30) as c:
        infos = {i.name: i for i in c.list_collections()}
        assert infos["good"].state == "ready" and infos["good"].count == 3
        bad = infos["bad"]
        assert bad.state == "damaged" and bad.dim == DIM
        assert "wal-0.log: record 1 at byte 16 has a damaged body" in bad.state_reason
        assert c.get_collection("bad").state == "damaged"
        for call in (
            lambda: c.search("bad", vector=_vecs(1, 2)[0], k=1),
            lambda: c.upsert("bad", [Item("x", vector=_vecs(1, 2)[0])]),
            lambda: c.count("bad"),
        ):
            refused(
                call,
                grpc.StatusCode.DATA_LOSS,
                "is damaged and not served",
                "wal-0.log",
                "visionsearch-admin",
            )
        assert [h.id for h in c.search("good", vector=_vecs(3, 1)[0], k=1)] == ["good0"]
        with grpc.insecure_channel(again.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service)).status

            assert status("") == health_pb2.HealthCheckResponse.SERVING
            assert status("visionsearch.collection/good") == health_pb2.HealthCheckResponse.SERVING
            assert status("visionsearch.collection/bad") == health_pb2.HealthCheckResponse.NOT_SERVING
        c.drop_collection("bad")
        assert [i.name for i in c.list_collections()] == ["good"]
    again.proc.terminate()
    assert "collection bad is damaged and not served" in again.proc.stderr.read()
