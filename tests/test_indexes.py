"""Collections served by each index type over gRPC: results against brute force, deletes, restarts, the
automatic choice against its recall target on real data, and the refusals."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc
from visionsearch_client import Client, Item

from embedder.datasets import fashion_mnist
from embedder.words import WordVectors
from kernels import l2_normalize, topk_inner_product
from server.app import Running, create_server
from server.config import Config
from server.services import Services
from tests.test_bad_input import refused


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.abs(np.random.default_rng(7).standard_normal((150, dim)))
    x = np.abs(centres[rng.integers(0, 150, n)] + 0.15 * rng.standard_normal((n, dim)))
    return l2_normalize(x)


def _fill(client: Client, name: str, vectors: np.ndarray, batch: int = 2000) -> None:
    for start in range(0, len(vectors), batch):
        items = [Item(f"v{i}", vector=vectors[i]) for i in range(start, min(len(vectors), start + batch))]
        client.upsert(name, items)
    wait_for_index(client, name)


def wait_for_index(client: Client, name: str, timeout: float = 300) -> str:
    """Indexes are built in the background: wait until the collection says no build is in flight."""
    deadline = time.monotonic() + timeout
    while "in the background" in (in_use := client.get_collection(name).index_in_use):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: still building after {timeout} s: {in_use}")
        time.sleep(0.05)
    return in_use


def _recall(client: Client, name: str, base: np.ndarray, queries: np.ndarray, **kw: object) -> float:
    _, truth = topk_inner_product(base, queries, 10)
    got = 0.0
    for q, t in zip(queries, truth, strict=True):
        hits = client.search(name, vector=q, k=10, with_payload=False, **kw)  # type: ignore[arg-type]
        got += len({int(h.id[1:]) for h in hits} & set(t.tolist())) / 10
    return got / len(queries)


@pytest.mark.parametrize("index", ["lsh", "hnsw"])
def test_approximate_indexes_against_brute_force(client: Client, fresh_name: str, index: str) -> None:
    base = _clustered(4000, 32, seed=1)
    queries = _clustered(60, 32, seed=2)
    info = client.create_collection(fresh_name, dim=32, index=index, recall_target=0.9)
    assert (info.index, info.recall_target) == (index, pytest.approx(0.9))
    _fill(client, fresh_name, base)
    info = client.get_collection(fresh_name)
    assert info.index_in_use.startswith(index), info.index_in_use
    assert _recall(client, fresh_name, base, queries) >= 0.88
    assert _recall(client, fresh_name, base, queries, exact=True) == 1.0
    # Deleted items never come back from the index.
    _, truth = topk_inner_product(base, queries, 3)
    gone = sorted({int(r) for r in truth.reshape(-1)})
    client.delete(fresh_name, [f"v{i}" for i in gone])
    for q in queries:
        hits = client.search(fresh_name, vector=q, k=10, effort=64)
        assert not {h.id for h in hits} & {f"v{i}" for i in gone}
    # Items added after the index was built are found.
    client.upsert(fresh_name, [Item("late", vector=queries[0])])
    assert client.search(fresh_name, vector=queries[0], k=1)[0].id == "late"


def test_index_choice_survives_a_restart(base_config: Config, services: Services, tmp_path: Path) -> None:
    config = replace(base_config, data_dir=tmp_path, default_collection=False)
    base = _clustered(3000, 16, seed=3)

    def start() -> Running:
        return create_server(config, services.with_store(config))

    first = start()
    with Client(f"127.0.0.1:{first.port}") as c:
        c.create_collection("ix", dim=16, index="lsh")
        _fill(c, "ix", base)
        c.delete("ix", ["v0"])
    first.stop(grace=1)
    second = start()
    try:
        with Client(f"127.0.0.1:{second.port}") as c:
            info = c.get_collection("ix")
            assert info.index == "lsh" and info.index_in_use.startswith("lsh") and info.count == 2999
            assert "v0" not in {h.id for h in c.search("ix", vector=base[0], k=5)}
    finally:
        second.stop(grace=1)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "words"])
def test_auto_meets_its_recall_target_on_real_data(client: Client, fresh_name: str, dataset: str) -> None:
    if dataset == "fashion-mnist":
        base = l2_normalize(fashion_mnist("train")[0][:12000].reshape(-1, 784))
        queries = l2_normalize(fashion_mnist("test")[0][:150].reshape(-1, 784))
    else:
        words = l2_normalize(WordVectors().vocabulary_matrix())
        order = np.random.default_rng(5).permutation(len(words))
        base, queries = words[order[150:]], words[order[:150]]
    info = client.create_collection(fresh_name, dim=base.shape[1], index="auto")
    assert info.index_in_use.startswith("exact")
    _fill(client, fresh_name, base)
    info = client.get_collection(fresh_name)
    assert not info.index_in_use.startswith("exact"), info.index_in_use  # over 10,000 items: approximate
    assert _recall(client, fresh_name, base, queries) >= 0.95, info.index_in_use


def test_index_refusals(server: Running, client: Client, fresh_name: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.CollectionServiceStub(ch)
        bad = pb.CollectionConfig(name=fresh_name, dim=4, index=99)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateCollection(pb.CreateCollectionRequest(config=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "IndexType" in info.value.details()
    for target in (1.5, -0.1):
        refused(
            lambda t=target: client.create_collection(fresh_name, dim=4, recall_target=t),
            grpc.StatusCode.INVALID_ARGUMENT,
            "recall_target",
        )
    client.create_collection(fresh_name, dim=4, index="exact")
    assert client.update_collection(fresh_name, "hnsw").index == "hnsw"  # empty: allowed
    client.upsert(fresh_name, [Item("a", vector=[1, 0, 0, 0])])
    refused(
        lambda: client.update_collection(fresh_name, "lsh"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "only change",
    )
    refused(
        lambda: client.search(fresh_name, vector=[1, 0, 0, 0], k=1, effort=5000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "effort",
    )


def test_index_in_use_reports_the_current_size(client: Client, fresh_name: str) -> None:
    client.create_collection(fresh_name, dim=2)
    client.upsert(fresh_name, [Item(str(i), vector=[1, i]) for i in range(3)])
    assert client.get_collection(fresh_name).index_in_use == "exact: 3 items (auto stays exact below 10,000)"
