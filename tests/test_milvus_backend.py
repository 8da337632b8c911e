"""The Milvus storage backend against a real engine: Milvus Lite (the Milvus core, embedded at a local file,
started by the test). Filters translated to Milvus expressions are checked differentially against the local
backend's bitmaps on the same data; servers over one Milvus share every collection (they hold no collection
state); a Milvus that does not answer is UNAVAILABLE naming it, while local collections keep serving."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch_client import Client, Item
from visionsearch_client.filters import between, exists, has_id, match, nested, where

from server.app import Running, create_server
from server.config import Config
from server.services import Services
from tests.test_bad_input import refused

INDEXES = {"colour": "keyword", "tags": "keyword", "price": "float", "stock": "integer", "sale": "bool"}


@pytest.fixture(scope="module")
def two_servers(
    base_config: Config, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, Running]]:
    folder = tmp_path_factory.mktemp("milvus")
    uri = str(folder / "milvus.db")
    started = []
    for n in range(2):
        config = replace(base_config, data_dir=folder / f"data{n}", default_collection=False, milvus_uri=uri)
        started.append(create_server(config, services.with_store(config)))
    yield started[0], started[1]
    for s in started:
        s.stop(grace=1)


def _client(r: Running) -> Client:
    return Client(f"127.0.0.1:{r.port}", timeout=120)


def test_servers_over_one_milvus_share_its_collections(two_servers: tuple[Running, Running]) -> None:
    a, b = two_servers
    with _client(a) as ca, _client(b) as cb:
        ca.create_collection("shared", dim=4, backend="milvus")
        assert "shared" in [c.name for c in cb.list_collections()]
        cb.upsert("shared", [Item("x", vector=[1, 0, 0, 0]), Item("y", vector=[0, 1, 0, 0])])
        assert ca.count("shared") == 2 and ca.search("shared", vector=[1, 0.1, 0, 0], k=1)[0].id == "x"
        refused(
            lambda: cb.create_collection("shared", dim=4, backend="milvus"), grpc.StatusCode.ALREADY_EXISTS
        )
        ca.drop_collection("shared")
        refused(lambda: cb.count("shared"), grpc.StatusCode.NOT_FOUND)


def _random_filter(rng: random.Random, depth: int = 0) -> pb.Filter:
    def condition() -> pb.Condition:
        kind = rng.choice(["colour", "tags", "price", "stock", "sale", "exists", "ids", "nested"])
        if kind == "colour":
            return match("colour", rng.choice(["red", "blue", ["red", "green"]]))
        if kind == "tags":
            return match("tags", rng.choice(["wool", ["silk", "denim"]]))
        if kind == "price":
            lo = rng.uniform(0, 80)
            return between("price", gte=lo, lt=lo + rng.uniform(5, 40))
        if kind == "stock":
            return rng.choice([match("stock", rng.randrange(7)), between("stock", gt=rng.randrange(7))])
        if kind == "sale":
            return match("sale", rng.random() < 0.5)
        if kind == "exists":
            return exists("tags")
        if kind == "ids":
            return has_id([f"i{rng.randrange(300):03d}" for _ in range(20)])
        return nested(_random_filter(rng, depth + 1)) if depth < 2 else match("sale", True)

    parts = {p: [condition() for _ in range(rng.randrange(0, 3))] for p in ("must", "should", "must_not")}
    if not any(parts.values()):
        parts["must"] = [condition()]
    return where(**parts)


def test_filters_in_milvus_agree_with_the_local_index(two_servers: tuple[Running, Running]) -> None:
    a, _ = two_servers
    rng = random.Random(17)
    vecs = np.random.default_rng(17).standard_normal((300, 8)).astype(np.float32)
    payloads = []
    for _ in range(300):
        p: dict[str, object] = {
            "colour": rng.choice(["red", "blue", "green"]), "price": round(rng.uniform(0, 100), 2),
            "stock": rng.randrange(7), "sale": rng.random() < 0.3,
        }  # fmt: skip
        if rng.random() < 0.7:
            p["tags"] = rng.sample(["wool", "silk", "denim", "cotton"], 2)
        payloads.append(p)
    with _client(a) as c:
        for backend in ("local", "milvus"):
            c.create_collection(f"diff_{backend}", dim=8, payload_indexes=INDEXES, backend=backend)
            c.upsert(
                f"diff_{backend}",
                [Item(f"i{n:03d}", vector=vecs[n], payload=payloads[n]) for n in range(300)],
            )
        checked = 0
        for _ in range(60):
            f = _random_filter(rng)
            local = [i.id for i in c.scroll("diff_local", filter=f, page=500, with_payload=False)]
            remote = [i.id for i in c.scroll("diff_milvus", filter=f, page=500, with_payload=False)]
            assert remote == local, f
            assert c.count("diff_milvus", filter=f) == len(local)
            if local:
                q = vecs[rng.randrange(300)]
                assert [h.id for h in c.search("diff_milvus", vector=q, k=5, filter=f)] == [
                    h.id for h in c.search("diff_local", vector=q, k=5, filter=f, exact=True)
                ]
                checked += 1
        assert checked > 20


def test_a_milvus_that_does_not_answer_is_unavailable_and_local_collections_serve(
    base_config: Config, services: Services, tmp_path: Path
) -> None:
    uri = "http://127.0.0.1:1"  # nothing listens there
    config = replace(base_config, data_dir=tmp_path, default_collection=False, milvus_uri=uri)
    running = create_server(config, services.with_store(config))
    try:
        with _client(running) as c:
            c.create_collection("here", dim=2)
            c.upsert("here", [Item("a", vector=[1, 0])])
            assert [i.name for i in c.list_collections()] == ["here"]  # listed without Milvus
            refused(
                lambda: c.create_collection("there", dim=2, backend="milvus"),
                grpc.StatusCode.UNAVAILABLE,
                f"Milvus at {uri} did not answer",
            )
            assert c.search("here", vector=[1, 0], k=1)[0].id == "a"
    finally:
        running.stop(grace=1)


def test_milvus_backend_needs_a_configured_milvus(client: Client) -> None:
    refused(
        lambda: client.create_collection("m", dim=2, backend="milvus"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "--milvus-uri",
    )
    refused(
        lambda: client.create_collection("m", dim=2, backend="cassandra"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "backend",
    )
