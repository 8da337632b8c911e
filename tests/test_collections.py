"""The collection API end to end over gRPC, and persistence across restarts: the same assertions on both
storage backends, this server's data folder ("local") and Milvus ("milvus": Milvus Lite, the real engine
core, embedded at a local file, started by the test)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from visionsearch_client import Client, Item
from visionsearch_client.filters import between, match, where

from server.app import create_server
from server.config import Config
from server.services import Services
from tests.conftest import LION


@pytest.fixture(scope="module")
def milvus_server(
    base_config: Config, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Client, Path]]:
    folder = tmp_path_factory.mktemp("backends")
    config = replace(
        base_config, data_dir=folder / "data", default_collection=False, milvus_uri=str(folder / "milvus.db")
    )
    running = create_server(config, services.with_store(config))
    with Client(f"127.0.0.1:{running.port}", timeout=120) as c:
        yield c, folder
    running.stop(grace=1)


@pytest.fixture(params=["local", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(milvus_server: tuple[Client, Path]) -> Client:
    return milvus_server[0]


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_crud_round_trip(client: Client, fresh_name: str, backend: str) -> None:
    rng = np.random.default_rng(1)
    info = client.create_collection(fresh_name, dim=16, backend=backend)
    assert (info.name, info.dim, info.metric, info.count, info.backend) == (
        fresh_name,
        16,
        "cosine",
        0,
        backend,
    )
    assert fresh_name in [c.name for c in client.list_collections()]
    vecs = _unit(rng, 50, 16)
    count = client.upsert(
        fresh_name, [Item(f"v{i}", vector=vecs[i], payload={"n": str(i)}) for i in range(50)]
    )
    assert count == 50 == client.count(fresh_name)
    hits = client.search(fresh_name, vector=vecs[7], k=3)
    assert hits[0].id == "v7" and hits[0].payload == {"n": "7"} and abs(hits[0].score - 1) < 1e-5
    expected = np.argsort(-(vecs @ vecs[7]))[:3]
    assert [h.id for h in hits] == [f"v{i}" for i in expected]
    # Replace one item: its new vector is found, its old one is not.
    client.upsert(fresh_name, [Item("v7", vector=vecs[8], payload={"n": "new"})])
    assert client.count(fresh_name) == 50
    got = client.get_items(fresh_name, ["v7", "missing"], with_vector=True)
    assert [g.id for g in got] == ["v7"] and got[0].payload == {"n": "new"}
    np.testing.assert_allclose(got[0].vector, vecs[8], atol=1e-6)
    assert client.delete(fresh_name, ["v1", "v2", "nope"]) == 2
    assert client.count(fresh_name) == 48
    ids = {h.id for h in client.search(fresh_name, vector=vecs[1], k=48)}
    assert "v1" not in ids and "v2" not in ids and len(ids) == 48
    client.drop_collection(fresh_name)
    assert fresh_name not in [c.name for c in client.list_collections()]


def test_k_larger_than_collection_returns_everything(client: Client, fresh_name: str, backend: str) -> None:
    client.create_collection(fresh_name, dim=4, backend=backend)
    client.upsert(fresh_name, [Item(str(i), vector=[1, i, 0, 0]) for i in range(3)])
    assert len(client.search(fresh_name, vector=[1, 0, 0, 0], k=100)) == 3


def test_inner_product_metric_keeps_magnitudes(client: Client, fresh_name: str, backend: str) -> None:
    client.create_collection(fresh_name, dim=2, metric="inner_product", backend=backend)
    client.upsert(fresh_name, [Item("short", vector=[1, 0]), Item("long", vector=[3, 0])])
    hits = client.search(fresh_name, vector=[1, 0], k=2)
    assert [h.id for h in hits] == ["long", "short"] and abs(hits[0].score - 3) < 1e-6


def test_upsert_images_into_an_image_collection(client: Client, fresh_name: str, backend: str) -> None:
    info = client.create_collection(fresh_name, embedder="mobilenet_v2", joint="conse:spacy", backend=backend)
    assert info.dim == 1280
    client.upsert(fresh_name, [Item("lion", image=LION.read_bytes(), payload={"label": "lion"})])
    hit = client.search(fresh_name, image=LION.read_bytes(), k=1)[0]
    assert hit.id == "lion" and hit.score > 0.999
    # The joint space: words find the photo, and Tag-like projections live beside the image vectors.
    assert client.search(fresh_name, words=["lion"], k=1)[0].id == "lion"


def test_payloads_filters_and_scroll(client: Client, fresh_name: str, backend: str) -> None:
    rng = np.random.default_rng(3)
    indexes = {"price": "float", "colour": "keyword", "sizes": "keyword", "stock": "integer", "sale": "bool"}
    client.create_collection(fresh_name, dim=8, payload_indexes=indexes, backend=backend)
    vecs = _unit(rng, 200, 8)
    payloads = [
        {"price": float(n % 50), "colour": ["red", "blue"][n % 2], "sizes": ["S", "M"] if n % 3 else ["L"],
         "stock": n % 7, "sale": n % 4 == 0, "title": f"t{n}"}
        for n in range(200)
    ]  # fmt: skip
    client.upsert(fresh_name, [Item(f"i{n:03d}", vector=vecs[n], payload=payloads[n]) for n in range(200)])
    shop = where(
        must=[match("colour", "red"), between("price", lt=20), match("sizes", "M")],
        must_not=[match("sale", True)],
    )
    want = {
        f"i{n:03d}" for n, p in enumerate(payloads)
        if p["colour"] == "red" and p["price"] < 20 and "M" in p["sizes"] and not p["sale"]
    }  # fmt: skip
    assert client.count(fresh_name, filter=shop) == len(want)
    hits = client.search(fresh_name, vector=vecs[0], k=5, filter=shop)
    truth = sorted(want, key=lambda i: -float(vecs[int(i[1:])] @ vecs[0]))[:5]
    assert [h.id for h in hits] == truth
    assert hits[0].payload == payloads[int(hits[0].id[1:])]
    assert [i.id for i in client.scroll(fresh_name, filter=shop, page=4)] == sorted(want)
    assert [i.id for i in client.scroll(fresh_name, page=33)] == [f"i{n:03d}" for n in range(200)]
    assert client.set_payload(fresh_name, [truth[0]], {"sale": True}) == 1
    assert client.count(fresh_name, filter=shop) == len(want) - 1
    assert client.delete(fresh_name, filter=where(must=[match("stock", [0, 1])])) == sum(
        1 for p in payloads if p["stock"] in (0, 1)
    )


def test_collections_survive_a_restart(
    base_config: Config, services: Services, tmp_path: Path, backend: str
) -> None:
    config = replace(
        base_config, data_dir=tmp_path, default_collection=False, milvus_uri=str(tmp_path / "milvus.db")
    )
    rng = np.random.default_rng(2)
    vecs = _unit(rng, 30, 8)

    def start():  # type: ignore[no-untyped-def]
        own = services.with_store(config)
        return create_server(config, own)

    first = start()
    with Client(f"127.0.0.1:{first.port}") as c:
        c.create_collection("keep", dim=8, backend=backend)
        c.upsert("keep", [Item(f"i{n}", vector=vecs[n], payload={"n": str(n)}) for n in range(30)])
        c.delete("keep", ["i3"])
        c.upsert("keep", [Item("i4", vector=vecs[5])])
    first.stop(grace=1)
    second = start()
    try:
        with Client(f"127.0.0.1:{second.port}") as c:
            assert c.count("keep") == 29
            assert c.get_items("keep", ["i3"]) == []
            assert c.search("keep", vector=vecs[0], k=1)[0].id == "i0"
            top2 = {h.id for h in c.search("keep", vector=vecs[5], k=2)}
            assert top2 == {"i4", "i5"}
            assert c.get_items("keep", ["i9"])[0].payload == {"n": "9"}
            assert c.get_collection("keep").backend == backend
    finally:
        second.stop(grace=1)
