"""Property tests (hypothesis) on the servicers, over gRPC against a real server.

- A state machine of upserts, deletes, searches, reads and bad writes, checked step by step against a model
  (a dict) and brute force: the collection always holds exactly the model, exact search equals brute force,
  and a refused write changes nothing.
- Arbitrary field values in every request type: the answer is OK or one of the statuses the proto documents,
  never INTERNAL or UNKNOWN, with a short message.

The CI profile is seeded and sized to about a minute each; `make fuzz` runs the "fuzz" profile
(VISIONSEARCH_HYPOTHESIS_PROFILE=fuzz), unseeded and twenty times larger.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch_client import Client, Item, VisionSearchError

from server.app import Running

# Sized to about a minute each on the 2-core CI machine: a state machine example of 25 steps takes ~0.1 s, a
# single request ~3 ms.
PROFILES = {
    "ci": {"machine": 500, "requests": 12_000, "derandomize": True},
    "fuzz": {"machine": 10_000, "requests": 240_000, "derandomize": False},
}
SIZE = PROFILES[os.environ.get("VISIONSEARCH_HYPOTHESIS_PROFILE", "ci")]


def profile(examples: str) -> settings:
    return settings(
        max_examples=int(SIZE[examples]), stateful_step_count=25, deadline=None, database=None,
        derandomize=bool(SIZE["derandomize"]), suppress_health_check=list(HealthCheck),
    )  # fmt: skip


DIM = 4
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}

ids = st.text(alphabet="abcdef", min_size=1, max_size=2)
finite = st.floats(-100, 100, allow_nan=False, width=32)
vectors = st.lists(finite, min_size=DIM, max_size=DIM).filter(lambda v: any(abs(x) > 1e-3 for x in v))
payloads = st.dictionaries(st.sampled_from(["k", "colour", "size"]), st.text(max_size=5), max_size=2)


@pytest.fixture(scope="module")
def address(small_server_module: tuple[Running, Client]) -> Iterator[str]:
    running, _ = small_server_module
    yield f"127.0.0.1:{running.port}"


def _unit(v: list[float]) -> np.ndarray:
    x = np.asarray(v, np.float32)
    return x / np.linalg.norm(x)


def test_collection_behaves_like_its_model(address: str) -> None:
    class Machine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.c = Client(address, timeout=30)
            self.name = f"prop{np.random.default_rng().integers(1 << 30)}"
            self.c.create_collection(self.name, dim=DIM)
            self.model: dict[str, tuple[np.ndarray, dict[str, str]]] = {}

        def teardown(self) -> None:
            self.c.drop_collection(self.name)
            self.c.close()

        @rule(batch=st.lists(st.tuples(ids, vectors, payloads), min_size=1, max_size=5))
        def upsert(self, batch: list[tuple[str, list[float], dict[str, str]]]) -> None:
            count = self.c.upsert(self.name, [Item(i, vector=v, payload=p) for i, v, p in batch])
            for i, v, p in batch:
                self.model[i] = (_unit(v), p)
            assert count == len(self.model)  # the collection's count after the write

        @rule(gone=st.lists(ids, max_size=4))
        def delete(self, gone: list[str]) -> None:
            present = {g for g in gone if g in self.model}
            assert self.c.delete(self.name, gone) == len(present)
            for g in present:
                del self.model[g]

        @rule(q=vectors, k=st.integers(1, 12))
        def search(self, q: list[float], k: int) -> None:
            hits = self.c.search(self.name, vector=q, k=k, exact=True)
            assert len(hits) == min(k, len(self.model))
            if self.model:
                truth = sorted((float(v @ _unit(q)) for v, _ in self.model.values()), reverse=True)[:k]
                np.testing.assert_allclose([h.score for h in hits], truth, atol=1e-5)
                for h in hits:
                    assert h.payload == self.model[h.id][1]

        @rule(asked=st.lists(ids, max_size=6))
        def get(self, asked: list[str]) -> None:
            got = self.c.get_items(self.name, asked, with_vector=True)
            assert [g.id for g in got] == [a for a in asked if a in self.model]
            for g in got:
                np.testing.assert_allclose(g.vector, self.model[g.id][0], atol=1e-6)

        @precondition(lambda self: True)
        @rule(
            bad=st.one_of(
                st.lists(finite, min_size=1, max_size=8).filter(lambda v: len(v) != DIM),  # wrong width
                st.just([0.0] * DIM),  # zero vector
                st.lists(st.sampled_from([np.nan, np.inf, 1.0]), min_size=DIM, max_size=DIM).filter(
                    lambda v: not all(np.isfinite(v))
                ),
            ),
            item_id=ids,
        )
        def refused_write(self, bad: list[float], item_id: str) -> None:
            with pytest.raises(VisionSearchError) as info:
                self.c.upsert(self.name, [Item(item_id, vector=bad)])
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT

        @invariant()
        def count_matches(self) -> None:
            assert self.c.count(self.name) == len(self.model)

    run_state_machine_as_test(Machine, settings=profile("machine"))


text = st.text(max_size=80)
small_ints = st.integers(-(2**31), 2**31 - 1)


def _requests() -> st.SearchStrategy[tuple[str, object]]:
    vec = st.binary(max_size=40).map(lambda b: pb.Vector(f32=b))
    payload_maps = st.dictionaries(text, text, max_size=2)
    search = st.builds(
        pb.SearchRequest,
        collection=st.sampled_from(["props", "nope", ""]) | text,
        vector=vec,
        k=small_ints,
        space=small_ints,
        effort=small_ints,
        exact=st.booleans(),
        with_vector=st.booleans(),
        with_payload=st.booleans(),
    )
    words = st.builds(
        pb.SearchRequest,
        collection=st.just("props"),
        text=st.builds(pb.TextQuery, words=st.builds(pb.Words, words=st.lists(text, max_size=5))),
        k=st.integers(-2, 20),
    )
    upsert = st.builds(
        pb.UpsertRequest,
        collection=st.sampled_from(["props", "nope"]),
        items=st.lists(
            st.builds(pb.Item, id=text, vector=vec, payload=payload_maps),
            max_size=4,
        ),
    )
    create = st.builds(
        pb.CreateCollectionRequest,
        config=st.builds(
            pb.CollectionConfig, name=text, dim=small_ints, metric=small_ints, index=small_ints,
            recall_target=st.floats(allow_nan=True, width=32), embedder=text, joint=text,
        ),
    )  # fmt: skip
    get = st.builds(
        pb.GetItemsRequest,
        collection=st.just("props"),
        ids=st.lists(text, max_size=5),
        with_vector=st.booleans(),
    )
    words_only = st.builds(pb.NearestWordsRequest, word=text, k=small_ints)
    embed = st.builds(pb.EmbedRequest, word=text)
    return st.one_of(
        search.map(lambda r: ("Search", r)),
        words.map(lambda r: ("Search", r)),
        upsert.map(lambda r: ("Upsert", r)),
        create.map(lambda r: ("CreateCollection", r)),
        get.map(lambda r: ("GetItems", r)),
        words_only.map(lambda r: ("NearestWords", r)),
        embed.map(lambda r: ("Embed", r)),
    )


def test_any_field_values_get_documented_statuses(address: str) -> None:
    from hypothesis import given

    with Client(address, timeout=30) as c:
        c.create_collection("props", dim=DIM)
        c.upsert("props", [Item("a", vector=[1, 0, 0, 0])])
        stubs = {
            "Search": c._search.Search,
            "NearestWords": c._search.NearestWords,
            "Upsert": c._collections.Upsert,
            "CreateCollection": c._collections.CreateCollection,
            "GetItems": c._collections.GetItems,
            "Embed": c._embed.Embed,
        }

        @profile("requests")
        @given(_requests())
        def check(call: tuple[str, object]) -> None:
            name, request = call
            try:
                stubs[name](request, timeout=30)
            except grpc.RpcError as e:
                assert e.code() in DOCUMENTED, (name, e.code(), e.details())
                assert len(e.details() or "") <= 1000

        check()
        assert c.count("props") >= 1
