"""The query contract over gRPC: typed payloads, filters on every call that takes one, SearchBatch, Scroll,
Recommend, SetPayload/DeletePayloadKeys, UpdateCollection with a field mask, score_threshold, joint-width
vector queries, and the refusals of each."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch_client import Client, Item
from visionsearch_client._convert import search_request
from visionsearch_client.filters import between, exists, has_id, match, nested, where

from server.app import Running
from tests.conftest import ServerProcess
from tests.test_bad_input import refused

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SHOP = {"category": "keyword", "price": "float", "in_stock": "bool", "sizes": "keyword", "stock": "integer"}


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _product(n: int, rng: random.Random) -> dict[str, object]:
    return {
        "category": rng.choice(["shirt", "shoe", "hat"]),
        "price": round(rng.uniform(5, 60), 2),
        "in_stock": rng.random() < 0.7,
        "sizes": rng.sample(["S", "M", "L", "XL"], 2),
        "stock": rng.randrange(0, 50),
        "title": f"product {n}",  # a string nobody indexes: a plain payload string
    }


@pytest.fixture
def shop(small_server: tuple[Running, Client]) -> tuple[Client, np.ndarray, list[dict[str, object]]]:
    _, c = small_server
    c.create_collection("shop", dim=16, payload_indexes=SHOP)
    vecs = _unit(600, 16, 1)
    rng = random.Random(2)
    products = [_product(n, rng) for n in range(600)]
    c.upsert("shop", [Item(f"p{n}", vector=vecs[n], payload=products[n]) for n in range(600)])
    return c, vecs, products


def _passes(p: dict[str, object]) -> bool:
    sizes = p["sizes"]
    assert isinstance(sizes, list)
    return p["category"] == "shirt" and p["price"] < 30 and p["in_stock"] is True and "M" in sizes  # type: ignore[operator]


SHOP_FILTER = where(
    must=[match("category", "shirt"), between("price", lt=30), match("in_stock", True), match("sizes", "M")]
)


def test_the_shop_query_similar_filtered_in_one_call(shop: tuple) -> None:
    c, vecs, products = shop
    hits = c.search("shop", id="p0", k=10, filter=SHOP_FILTER)
    passing = [n for n, p in enumerate(products) if _passes(p) and n != 0]
    truth = sorted(passing, key=lambda n: -float(vecs[n] @ vecs[0]))[:10]
    assert [h.id for h in hits] == [f"p{n}" for n in truth]
    assert "pass the filter" in hits.notes[0]
    h = hits[0]
    assert h.payload == products[int(h.id[1:])]  # typed values back as they went in
    assert isinstance(h.payload["price"], float) and isinstance(h.payload["in_stock"], bool)
    assert c.count("shop", filter=SHOP_FILTER) == len(passing) + _passes(products[0])


def test_filters_count_delete_and_scroll(shop: tuple) -> None:
    c, _, products = shop
    cheap = where(must=[between("stock", lte=4)], must_not=[match("category", "hat")])
    want = {f"p{n}" for n, p in enumerate(products) if p["stock"] <= 4 and p["category"] != "hat"}  # type: ignore[operator]
    assert c.count("shop", filter=cheap) == len(want)
    assert {i.id for i in c.scroll("shop", filter=cheap, page=7)} == want
    either = where(should=[has_id(["p1", "p2"]), nested(where(must=[match("stock", [0, 49])]))])
    want_either = {"p1", "p2"} | {f"p{n}" for n, p in enumerate(products) if p["stock"] in (0, 49)}
    assert {i.id for i in c.scroll("shop", filter=either)} == want_either
    assert c.count("shop", filter=where(must=[exists("sizes")])) == 600
    assert c.delete("shop", filter=cheap) == len(want)
    assert c.count("shop") == 600 - len(want) and c.count("shop", filter=cheap) == 0


def test_search_batch_equals_single_searches(shop: tuple) -> None:
    c, vecs, _ = shop

    def request(**kw: object) -> pb.SearchRequest:
        req = search_request("", **{"with_payload": True, "with_vector": False, **kw})  # type: ignore[arg-type]
        return req

    searches = [request(vector=vecs[n], k=5) for n in range(10)]
    searches.append(request(id="p3", k=4, with_payload=False, filter=SHOP_FILTER))
    searches.append(request(vector=vecs[7], k=3, with_vector=True, score_threshold=0.2))
    batch = c.search_batch("shop", searches)
    assert len(batch) == len(searches)
    for n in range(10):
        single = c.search("shop", vector=vecs[n], k=5)
        assert [(h.id, round(h.score, 5)) for h in batch[n]] == [(h.id, round(h.score, 5)) for h in single]
    assert [h.id for h in batch[10]] == [h.id for h in c.search("shop", id="p3", k=4, filter=SHOP_FILTER)]
    assert all(h.score >= 0.2 for h in batch[11]) and batch[11][0].vector is not None
    too_many = [request(vector=vecs[0], k=1)] * 1025
    refused(lambda: c.search_batch("shop", too_many), INVALID, "1,025 entries", "limit of 1,024")
    other = [request(vector=vecs[0], k=1)]
    other[0].collection = "elsewhere"
    refused(lambda: c.search_batch("shop", other), INVALID, "searches[0] names collection 'elsewhere'")


def test_recommend_with_the_average_vector_strategy(shop: tuple) -> None:
    c, vecs, _ = shop
    target = 2 * (vecs[1] + vecs[2]) / 2 - vecs[3]
    target /= np.linalg.norm(target)
    hits = c.recommend("shop", positive=["p1", "p2"], negative=["p3"], k=5)
    expected = [
        h.id for h in c.search("shop", vector=target, k=8, exact=True) if h.id not in ("p1", "p2", "p3")
    ]
    assert [h.id for h in hits] == expected[:5]
    by_vector = c.recommend("shop", positive=[vecs[1], "p2"], negative=[vecs[3]], k=5, filter=SHOP_FILTER)
    assert all(_passes(h.payload) for h in by_vector)  # type: ignore[arg-type]
    refused(lambda: c.recommend("shop", negative=["p3"], k=5), INVALID, "no positive example")
    opposite = [vecs[1], -vecs[1]]  # their mean is zero
    refused(lambda: c.recommend("shop", positive=opposite, k=5), INVALID, "cancel out")


def test_score_threshold(shop: tuple) -> None:
    c, vecs, _ = shop
    hits = c.search("shop", vector=vecs[0], k=50, score_threshold=0.3)
    assert hits and all(h.score >= 0.3 for h in hits)
    above = sum(1 for h in c.search("shop", vector=vecs[0], k=600) if h.score >= 0.3)
    assert len(hits) == min(50, above)


def test_set_payload_and_delete_keys_are_durable_and_filterable(
    spawn_server: type[ServerProcess], tmp_path: Path
) -> None:
    proc = spawn_server(tmp_path, "--fsync")
    with Client(proc.address) as c:
        c.create_collection("p", dim=4, payload_indexes={"n": "integer", "tier": "keyword", "on": "bool"})
        c.upsert(
            "p",
            [Item(f"i{n}", vector=np.eye(4)[n % 4] + 0.1, payload={"n": n, "tier": "a"}) for n in range(8)],
        )
        assert c.set_payload("p", ["i1", "i2", "nope"], {"tier": "b", "on": True, "note": "hello"}) == 2
        assert c.delete_payload_keys("p", ["i3"], ["n"]) == 1
        refused(lambda: c.set_payload("p", ["i1"], {"n": "ten"}), INVALID, "'n' is indexed as integer")
    proc.signal(signal.SIGKILL)  # only the log has it
    proc.wait()
    again = spawn_server(tmp_path)
    with Client(again.address) as c:
        got = {i.id: i.payload for i in c.get_items("p", ["i1", "i3"])}
        assert got["i1"] == {"n": 1, "tier": "b", "on": True, "note": "hello"}
        assert got["i3"] == {"tier": "a"}
        assert {i.id for i in c.scroll("p", filter=where(must=[match("tier", "b")]))} == {"i1", "i2"}
        assert c.count("p", filter=where(must=[between("n", gte=0)])) == 7
        assert c.count("p", filter=where(must=[match("on", True)])) == 2


def test_typed_payloads_and_indexes_survive_kill_9(spawn_server: type[ServerProcess], tmp_path: Path) -> None:
    proc = spawn_server(tmp_path, "--fsync", "--snapshot-wal-bytes", "4096")  # snapshots and log both
    rng = random.Random(5)
    products = [_product(n, rng) for n in range(300)]
    vecs = _unit(300, 16, 3)
    with Client(proc.address) as c:
        c.create_collection("shop", dim=16, payload_indexes=SHOP)
        for start in range(0, 300, 20):
            c.upsert(
                "shop", [Item(f"p{n}", vector=vecs[n], payload=products[n]) for n in range(start, start + 20)]
            )
        before = [h.id for h in c.search("shop", vector=vecs[9], k=10, filter=SHOP_FILTER)]
    proc.signal(signal.SIGKILL)
    proc.wait()
    again = spawn_server(tmp_path)
    with Client(again.address) as c:
        info = c.get_collection("shop")
        assert info.payload_indexes == SHOP
        assert [h.id for h in c.search("shop", vector=vecs[9], k=10, filter=SHOP_FILTER)] == before
        assert {i.id: i.payload for i in c.get_items("shop", [f"p{n}" for n in range(300)])} == {
            f"p{n}": p for n, p in enumerate(products)
        }


def test_scroll_walks_60k_items_exactly_once_while_writes_go_on(small_server: tuple[Running, Client]) -> None:
    running, c = small_server
    c.create_collection("walk", dim=4)
    rng = np.random.default_rng(4)
    ids = [f"stable-{n:05d}" for n in range(60_000)]
    for start in range(0, 60_000, 5_000):
        vecs = rng.standard_normal((5_000, 4)).astype(np.float32)
        c.upsert("walk", [Item(i, vector=v) for i, v in zip(ids[start : start + 5_000], vecs, strict=True)])
    stop = threading.Event()
    churn_seen: list[str] = []

    def churn() -> None:
        with Client(f"127.0.0.1:{running.port}") as w:
            n = 0
            while not stop.is_set():
                # Ids that sort among the stable ones, so pages are written between and around.
                batch = [f"stable-{rng.integers(0, 60_000):05d}-churn{n + j}" for j in range(20)]
                w.upsert("walk", [Item(i, vector=[1, 0, 0, 0]) for i in batch])
                w.delete("walk", batch[:10])
                n += 20

    writer = threading.Thread(target=churn)
    writer.start()
    seen: list[str] = []
    try:
        for item in c.scroll("walk", page=1000, with_payload=False):
            seen.append(item.id)
    finally:
        stop.set()
        writer.join(60)
    stable = [i for i in seen if "churn" not in i]
    assert stable == ids  # every stable id, once, in order
    churn_seen = [i for i in seen if "churn" in i]
    assert len(churn_seen) == len(set(churn_seen)) and len(churn_seen) > 0
    assert seen == sorted(seen)


def test_update_collection_changes_only_what_the_mask_names(small_server: tuple[Running, Client]) -> None:
    _, c = small_server
    c.create_collection("u", dim=4, index="hnsw", recall_target=0.9)
    c.upsert("u", [Item("a", vector=[1, 0, 0, 0], payload={"n": "x"})])
    info = c.update_collection("u", recall_target=0.97)
    assert (info.index, info.recall_target) == ("hnsw", pytest.approx(0.97))  # the index stays HNSW
    info = c.update_collection("u", payload_indexes={"n": "keyword"})
    assert info.payload_indexes == {"n": "keyword"} and info.index == "hnsw"
    assert c.count("u", filter=where(must=[match("n", "x")])) == 1
    refused(lambda: c.update_collection("u", index="exact"), grpc.StatusCode.FAILED_PRECONDITION, "empty")
    refused(
        lambda: c.update_collection("u", payload_indexes={"n": "integer"}),
        grpc.StatusCode.FAILED_PRECONDITION,
        "holds 'x', not a integer",
    )
    bad_mask = pb.UpdateCollectionRequest(
        name="u", config=pb.CollectionConfig(), update_mask=FieldMask(paths=["colour"])
    )
    with pytest.raises(grpc.RpcError) as info_err:
        c._collections.UpdateCollection(bad_mask, timeout=30)
    assert info_err.value.code() == INVALID and "update_mask names 'colour'" in info_err.value.details()
    fixed = pb.UpdateCollectionRequest(
        name="u", config=pb.CollectionConfig(dim=8), update_mask=FieldMask(paths=["dim"])
    )
    with pytest.raises(grpc.RpcError) as info_err:
        c._collections.UpdateCollection(fixed, timeout=30)
    assert info_err.value.code() == INVALID and "'dim' cannot change" in info_err.value.details()
    # Without a mask, unset fields are unchanged (they used to reset the index to AUTO).
    c._collections.UpdateCollection(pb.UpdateCollectionRequest(name="u", recall_target=0.99), timeout=30)
    assert c.get_collection("u").index == "hnsw"


def test_joint_space_vector_queries_take_joint_width_vectors(client: Client, fresh_name: str) -> None:
    # A conse:spacy collection: Embed's word vectors are its text space (the default collection's is MiniLM).
    stamps = Path("/usr/share/tuxpaint/stamps")
    client.create_collection(fresh_name, embedder="efficientnet_lite1", joint="conse:spacy")
    photos = ["animals/mammals/cats/lion.png", "animals/mammals/cats/tiger.png", "food/fruit/banana.png",
              "household/kettle.png", "animals/birds/ostrich.png", "food/fruit/pear.png"]  # fmt: skip
    client.upsert(fresh_name, [Item(p, image=(stamps / p).read_bytes()) for p in photos])
    word = client.embed_word("lion")  # 300-d, the width of conse:spacy
    by_word = client.search(fresh_name, words=["lion"], k=5)
    by_vector = client.search(fresh_name, vector=word, space="joint", k=5)
    assert [h.id for h in by_vector] == [h.id for h in by_word]
    refused(lambda: client.search(fresh_name, vector=np.ones(7), space="joint", k=5), INVALID, "takes 300-d")


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        (match("colour", "red"), "'colour' is not indexed"),
        (match("price", "cheap"), "a keyword match on payload key 'price', which is indexed as float"),
        (between("category", lt=3), "a range on payload key 'category', which is indexed as keyword"),
        (match("sizes", [f"s{n}" for n in range(10_000)]), "10,000 values, over the limit of 1,024"),
        (pb.Condition(), "is empty: set match, range, exists, has_id or filter"),
        (pb.Condition(range=pb.FieldRange(key="price")), "a range needs at least one of"),
    ],
)
def test_bad_filters_name_the_field_and_the_fix(shop: tuple, condition: pb.Condition, fragment: str) -> None:
    c, vecs, _ = shop
    refused(lambda: c.search("shop", vector=vecs[0], k=3, filter=where(must=[condition])), INVALID, fragment)


def test_empty_and_deep_filters_are_refused(shop: tuple) -> None:
    c, vecs, _ = shop
    refused(lambda: c.count("shop", filter=pb.Filter()), INVALID, "filter has no conditions")
    deep = where(must=[match("category", "hat")])
    for _ in range(16):
        deep = where(must=[nested(deep)])
    refused(lambda: c.search("shop", vector=vecs[0], k=3, filter=deep), INVALID, "more than 16 levels deep")
    refused(
        lambda: c.upsert("shop", [Item("x", vector=vecs[0], payload={"price": "free"})]),
        INVALID,
        "'price' is indexed as float",
    )
    refused(lambda: c.delete("shop", ["p1"], filter=SHOP_FILTER), INVALID, "both ids and a filter")


def test_bad_cursors_are_refused(shop: tuple, small_server: tuple[Running, Client]) -> None:
    c, vecs, _ = shop
    c.create_collection("other", dim=16)
    c.upsert("other", [Item(f"o{n}", vector=vecs[n]) for n in range(5)])

    def page(collection: str, cursor: str) -> pb.ScrollResponse:
        return c._collections.Scroll(
            pb.ScrollRequest(collection=collection, limit=2, cursor=cursor), timeout=30
        )

    first = page("shop", "")
    assert first.next_cursor
    body, _, sig = first.next_cursor.partition(".")
    for cursor, fragment in (
        (body + "." + sig[::-1], "signature does not match"),
        ("garbage", "signature does not match"),
        ("x" * 5000, "not one this server made"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            page("shop", cursor)
        assert info.value.code() == INVALID and fragment in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        page("other", first.next_cursor)
    assert info.value.code() == INVALID and "belongs to collection 'shop'" in info.value.details()
    c.drop_collection("other")
    c.create_collection("other", dim=16)
    c.upsert("other", [Item(f"o{n}", vector=vecs[n]) for n in range(5)])
    stale = page("other", "").next_cursor
    c.drop_collection("other")
    c.create_collection("other", dim=16)
    with pytest.raises(grpc.RpcError) as info:
        page("other", stale)
    assert info.value.code() == INVALID and "dropped and created again" in info.value.details()
    assert len(page("shop", first.next_cursor).items) == 2
