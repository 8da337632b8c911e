"""The approximate index over a collection's life: built in the background while searches and writes go on,
saved with snapshots and restored at open (no rebuild), carried through compaction by renaming graph keys,
and built with the HNSW settings the collection was created with."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from visionsearch_client import Client

from kernels import topk_inner_product
from server.storage import Collection, CollectionSettings
from tests.test_bad_input import refused
from tests.test_indexes import _clustered

DIM = 24


def _open(folder: Path) -> Collection:
    return Collection.open(folder, fsync=False, snapshot_wal_bytes=1 << 30)


def _hnsw_collection(tmp_path: Path, n: int = 3000, **settings: int) -> tuple[Collection, np.ndarray]:
    c = Collection.create(
        tmp_path / "c",
        CollectionSettings("c", DIM, index="hnsw", recall_target=0.9, **settings),  # type: ignore[arg-type]
        fsync=False,
        snapshot_wal_bytes=1 << 30,
    )
    base = c.prepare_vectors(_clustered(n, DIM, seed=11))
    c.upsert([f"v{i}" for i in range(n)], base, [{} for _ in range(n)])
    assert c.wait_for_index(120)
    assert c.index_in_use().startswith("hnsw"), c.index_in_use()
    return c, base


def _recall(c: Collection, base: np.ndarray, alive: np.ndarray, queries: np.ndarray) -> float:
    _, truth = topk_inner_product(base[alive], queries, 10)
    names = np.flatnonzero(alive)
    got = 0
    for q, t in zip(queries, truth, strict=True):
        hits = c.search(q[None, :], 10)[0]
        got += len({int(h.id[1:]) for h in hits} & set(names[t].tolist()))
    return got / (10 * len(queries))


def test_hnsw_graph_is_restored_at_open_not_rebuilt(tmp_path: Path) -> None:
    c, _ = _hnsw_collection(tmp_path)
    queries = c.prepare_vectors(_clustered(40, DIM, seed=12))
    before = [[h.id for h in hits] for hits in c.search(queries, 10)]
    c.close()
    assert (tmp_path / "c" / "hnsw-1.usearch").exists()
    reopened = _open(tmp_path / "c")
    try:
        # No build was started: the saved graph answers at once, with the same results.
        assert reopened.wait_for_index(0)
        assert reopened.index_in_use().startswith("hnsw") and "restored at open" in reopened.index_in_use()
        assert [[h.id for h in hits] for hits in reopened.search(queries, 10)] == before
    finally:
        reopened.close()


def test_compaction_renames_graph_keys_and_deleted_items_stay_gone(tmp_path: Path) -> None:
    c, base = _hnsw_collection(tmp_path)
    queries = c.prepare_vectors(_clustered(40, DIM, seed=13))
    _, truth = topk_inner_product(base, queries, 2)
    gone = sorted({int(r) for r in truth.reshape(-1)} | set(range(0, 3000, 7)))
    c.delete([f"v{i}" for i in gone])
    c.snapshot()  # compacts: every surviving row moves
    assert c.index_in_use().startswith("hnsw") and "background" not in c.index_in_use()
    alive = np.ones(len(base), bool)
    alive[gone] = False
    assert _recall(c, base, alive, queries) >= 0.9
    for hits in c.search(queries, 10):
        assert not {h.id for h in hits} & {f"v{i}" for i in gone}
    c.close()
    reopened = _open(tmp_path / "c")
    try:
        assert "restored at open" in reopened.index_in_use()
        assert _recall(reopened, base, alive, queries) >= 0.9
    finally:
        reopened.close()


def test_saved_index_of_other_settings_is_rebuilt(tmp_path: Path) -> None:
    c, _ = _hnsw_collection(tmp_path)
    c.close()
    state = tmp_path / "c" / "ann-1.json"
    state.write_text(state.read_text().replace('"version": 1', '"version": 0'))
    reopened = _open(tmp_path / "c")
    try:
        assert reopened.wait_for_index(120)
        assert reopened.index_in_use().startswith("hnsw") and "restored" not in reopened.index_in_use()
    finally:
        reopened.close()


def test_searches_and_writes_go_on_during_a_build(tmp_path: Path) -> None:
    c = Collection.create(
        tmp_path / "c", CollectionSettings("c", DIM, index="hnsw"), fsync=False, snapshot_wal_bytes=1 << 30
    )
    base = c.prepare_vectors(_clustered(6000, DIM, seed=14))
    c.upsert([f"v{i}" for i in range(3000)], base[:3000], [{} for _ in range(3000)])
    # While the graph is built, searches are exact and writes land; the graph catches up with them.
    assert "in the background" in c.index_in_use()
    hits = c.search(base[:1], 1)[0]
    assert hits[0].id == "v0"
    c.upsert([f"v{i}" for i in range(3000, 4000)], base[3000:4000], [{} for _ in range(1000)])
    c.delete(["v1"])
    assert c.wait_for_index(120)
    assert c.index_in_use().startswith("hnsw")
    assert c.search(base[3500:3501], 1)[0][0].id == "v3500"
    assert "v1" not in {h.id for h in c.search(base[1:2], 10)[0]}
    c.close()


def test_hnsw_settings_are_used_saved_and_validated(client: Client, fresh_name: str, tmp_path: Path) -> None:
    c, _ = _hnsw_collection(tmp_path, n=1500, hnsw_connectivity=8, hnsw_expansion_add=40)
    assert "M=8 ef_construction=40" in c.index_in_use()
    c.close()
    assert _open(tmp_path / "c").settings.hnsw_connectivity == 8

    info = client.create_collection(
        fresh_name, dim=4, index="hnsw", hnsw_connectivity=12, hnsw_expansion_add=64
    )
    assert (info.hnsw_connectivity, info.hnsw_expansion_add) == (12, 64)
    assert client.get_collection(fresh_name).hnsw_connectivity == 12
    default = client.create_collection(fresh_name + "d", dim=4)
    assert (default.hnsw_connectivity, default.hnsw_expansion_add) == (16, 128)
    for kw, what in (
        ({"hnsw_connectivity": 1000}, "connectivity"),
        ({"hnsw_expansion_add": 4}, "expansion_add"),
    ):
        refused(
            lambda kw=kw: client.create_collection(fresh_name + "x", dim=4, **kw),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            what,
        )


@pytest.mark.parametrize("n", [0, 5])
def test_small_collections_save_no_index(tmp_path: Path, n: int) -> None:
    c = Collection.create(
        tmp_path / "c", CollectionSettings("c", DIM, index="hnsw"), fsync=False, snapshot_wal_bytes=1
    )
    if n:
        c.upsert([f"v{i}" for i in range(n)], c.prepare_vectors(_clustered(n, DIM, seed=1)), [{}] * n)
    c.close()
    assert not list((tmp_path / "c").glob("ann-*"))


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_quantized_graphs_keep_recall_and_are_restored(tmp_path: Path, dtype: str) -> None:
    c, base = _hnsw_collection(tmp_path, vector_dtype=dtype)  # type: ignore[arg-type]
    assert c._view.ann._choice.hnsw is not None and c._view.ann._choice.hnsw.params.dtype == dtype
    queries = c.prepare_vectors(_clustered(60, DIM, seed=13))
    alive = np.ones(len(base), bool)
    assert _recall(c, base, alive, queries) >= 0.9  # the collection's target, met on a quantized graph
    hits = c.search(queries[:1], 5)[0]
    np.testing.assert_allclose(
        [h.score for h in hits], base[[int(h.id[1:]) for h in hits]] @ queries[0], atol=0.02
    )
    c.close()
    again = _open(tmp_path / "c")
    assert "restored at open" in again.index_in_use()
    assert again._view.ann._choice.hnsw is not None and again._view.ann._choice.hnsw.params.dtype == dtype


def test_vector_dtypes_the_index_does_not_take_are_refused(client: Client, fresh_name: str) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    refused(lambda: client.create_collection(fresh_name, dim=4, vector_dtype="f64"), invalid, "f32, f16, i8")
    refused(
        lambda: client.create_collection(fresh_name, dim=4, index="exact", vector_dtype="i8"),
        invalid,
        "applies to the HNSW graph",
    )
    info = client.create_collection(fresh_name, dim=4, index="hnsw", vector_dtype="f16")
    assert info.vector_dtype == "f16"
    client.drop_collection(fresh_name)


def test_a_new_graph_is_f16_unless_named_and_other_indexes_stay_f32(client: Client, fresh_name: str) -> None:
    # "" picks the graph type at creation (f16 where a local HNSW graph may be built) and the collection
    # keeps it; an explicit type is kept as given.
    for index, expected in (("hnsw", "f16"), ("auto", "f16"), ("exact", "f32"), ("lsh", "f32")):
        info = client.create_collection(fresh_name, dim=4, index=index)
        assert info.vector_dtype == expected, index
        assert client.get_collection(fresh_name).vector_dtype == expected, index
        client.drop_collection(fresh_name)
    client.create_collection(fresh_name, dim=4)  # index auto: an f16 graph
    # An empty collection's index may change; the default graph type follows it.
    assert client.update_collection(fresh_name, index="exact").vector_dtype == "f32"
    assert client.update_collection(fresh_name, index="hnsw").vector_dtype == "f16"
    client.drop_collection(fresh_name)
    info = client.create_collection(fresh_name, dim=4, index="auto", vector_dtype="f32")
    assert info.vector_dtype == "f32"
    client.drop_collection(fresh_name)


def test_settings_saved_before_the_f16_default_keep_their_f32_graph() -> None:
    saved = {"name": "old", "dim": 8, "metric": "cosine", "index": "hnsw"}  # no vector_dtype: an older save
    assert CollectionSettings.from_dict(saved).vector_dtype == "f32"
