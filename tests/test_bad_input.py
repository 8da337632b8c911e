"""Every refusal: a precise status, a message that says what to fix, and a server that keeps serving with
its data intact."""

from __future__ import annotations

import io
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from PIL import Image
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc
from visionsearch_client import Client, Item, VisionSearchError

from server.app import Running
from tests.conftest import LION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def refused(call: Callable[[], object], code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(VisionSearchError) as info:
        call()
    assert info.value.code == code, info.value
    for f in fragments:
        assert f in info.value.details, info.value.details
    return info.value.details


@pytest.fixture
def vec_collection(client: Client, fresh_name: str) -> str:
    client.create_collection(fresh_name, dim=4)
    client.upsert(fresh_name, [Item("a", vector=[1, 0, 0, 0]), Item("b", vector=[0, 1, 0, 0])])
    yield fresh_name
    # The server kept serving and lost nothing.
    assert client.healthy()
    assert client.count(fresh_name) == 2
    assert client.search(fresh_name, vector=[1, 0, 0, 0], k=1)[0].id == "a"
    client.drop_collection(fresh_name)


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")  # 100 Mpx, a few kB compressed
    return buf.getvalue()


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (PNG_MAGIC + b"\x00" * 64, "could not be decoded"),  # corrupt: a PNG header and garbage
        (LION.read_bytes()[:200], "could not be decoded"),  # truncated real photo
        (b"GIF89a this is not really a gif", "could not be decoded"),
        (b"hello, I am text", "could not be decoded"),  # not an image at all
        (b"", "empty"),
    ],
)
def test_undecodable_images(client: Client, vec_collection: str, image: bytes, fragment: str) -> None:
    refused(lambda: client.embed_image(image), grpc.StatusCode.INVALID_ARGUMENT, fragment)
    refused(lambda: client.search("default", image=image, k=3), grpc.StatusCode.INVALID_ARGUMENT, fragment)


def test_decompression_bomb(client: Client, vec_collection: str) -> None:
    bomb = _bomb_png()
    assert len(bomb) < 100_000
    refused(lambda: client.embed_image(bomb), grpc.StatusCode.INVALID_ARGUMENT, "10000x10000", "limit")


def test_image_upsert_into_a_vector_only_collection(client: Client, vec_collection: str) -> None:
    refused(
        lambda: client.upsert(vec_collection, [Item("img", image=LION.read_bytes())]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no image embedder",
    )
    refused(
        lambda: client.search(vec_collection, image=LION.read_bytes(), k=1),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no image embedder",
    )


def test_one_bad_image_refuses_the_whole_upsert(client: Client, fresh_name: str) -> None:
    client.create_collection(fresh_name, embedder="mobilenet_v2")
    items = [Item("good", image=LION.read_bytes()), Item("bad", image=b"junk")]
    refused(lambda: client.upsert(fresh_name, items), grpc.StatusCode.INVALID_ARGUMENT, "image 1")
    assert client.count(fresh_name) == 0


@pytest.mark.parametrize(
    ("vector", "fragments"),
    [
        ([1.0, 2.0, 3.0], ("dimension 3", "dimension 4")),
        ([1.0, float("nan"), 0.0, 0.0], ("NaN or Inf",)),
        ([1.0, float("inf"), 0.0, 0.0], ("NaN or Inf",)),
        ([0.0, 0.0, 0.0, 0.0], ("all zeros",)),
    ],
)
def test_bad_vectors(
    client: Client, vec_collection: str, vector: list[float], fragments: tuple[str, ...]
) -> None:
    refused(
        lambda: client.search(vec_collection, vector=vector, k=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        *fragments,
    )
    refused(
        lambda: client.upsert(vec_collection, [Item("x", vector=[0, 0, 1, 0]), Item("y", vector=vector)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        *fragments,
    )
    assert client.get_items(vec_collection, ["x", "y"]) == []  # all-or-nothing


def test_vector_bytes_not_a_multiple_of_four(server: Running, vec_collection: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.SearchServiceStub(ch)
        req = pb.SearchRequest(collection=vec_collection, vector=pb.Vector(f32=b"\x00" * 7), k=1)
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "multiple of 4" in info.value.details()


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_k_out_of_range(client: Client, vec_collection: str, k: int) -> None:
    refused(
        lambda: client.search(vec_collection, vector=[1, 0, 0, 0], k=k), grpc.StatusCode.INVALID_ARGUMENT, "k"
    )
    refused(lambda: client.nearest_words("cat", k=k), grpc.StatusCode.INVALID_ARGUMENT, "k")


def test_unknown_collection(client: Client) -> None:
    for call in (
        lambda: client.search("nope", vector=[1, 0], k=1),
        lambda: client.count("nope"),
        lambda: client.get_collection("nope"),
        lambda: client.upsert("nope", [Item("a", vector=[1.0])]),
        lambda: client.delete("nope", ["a"]),
        lambda: client.drop_collection("nope"),
    ):
        refused(call, grpc.StatusCode.NOT_FOUND, "'nope'")


def test_unknown_item_id(client: Client, vec_collection: str) -> None:
    refused(lambda: client.search(vec_collection, id="zzz", k=1), grpc.StatusCode.NOT_FOUND, "'zzz'")


def test_creating_an_existing_collection(client: Client, vec_collection: str) -> None:
    refused(
        lambda: client.create_collection(vec_collection, dim=4),
        grpc.StatusCode.ALREADY_EXISTS,
        vec_collection,
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "has space", "dim": 4}, "name"),
        ({"name": "x" * 65, "dim": 4}, "name"),
        ({"name": "ok", "dim": 0}, "dim"),
        ({"name": "ok", "dim": 70000}, "dim"),
        ({"name": "ok", "dim": 300, "embedder": "mobilenet_v2"}, "1280"),
        ({"name": "ok", "dim": 4, "embedder": "resnet9000"}, "unknown"),
    ],
)
def test_bad_collection_configs(client: Client, kwargs: dict, fragment: str) -> None:
    refused(lambda: client.create_collection(**kwargs), grpc.StatusCode.INVALID_ARGUMENT, fragment)


def test_bad_item_ids(client: Client, vec_collection: str) -> None:
    refused(
        lambda: client.upsert(vec_collection, [Item("", vector=[1, 0, 0, 0])]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    refused(
        lambda: client.upsert(vec_collection, [Item("x" * 300, vector=[1, 0, 0, 0])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "256",
    )


def test_unknown_word_is_named(client: Client) -> None:
    refused(lambda: client.embed_word("qwxzzvk"), grpc.StatusCode.NOT_FOUND, "'qwxzzvk'")
    refused(lambda: client.nearest_words("qwxzzvk"), grpc.StatusCode.NOT_FOUND, "'qwxzzvk'")


def test_empty_requests(server: Running, vec_collection: str) -> None:
    col = vec_collection
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        cases = [
            (pb_grpc.EmbedServiceStub(ch).Embed, pb.EmbedRequest(), "set `image`"),
            (pb_grpc.SearchServiceStub(ch).Search, pb.SearchRequest(collection=col, k=1), "no query"),
            (pb_grpc.SearchServiceStub(ch).NearestWords, pb.NearestWordsRequest(k=1), "empty"),
            (pb_grpc.CollectionServiceStub(ch).Upsert, pb.UpsertRequest(collection=col), "no items"),
            (pb_grpc.CollectionServiceStub(ch).Upsert,
             pb.UpsertRequest(collection=vec_collection, items=[pb.Item(id="a")]), "neither"),
        ]  # fmt: skip
        for method, request, fragment in cases:
            with pytest.raises(grpc.RpcError) as info:
                method(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in info.value.details()


def test_message_over_the_size_limit(small_server: tuple[Running, Client]) -> None:
    _, c = small_server
    c.create_collection("big", dim=1024)
    rows = np.ones((300, 1024), np.float32)  # 1.2 MB of vectors against a 1 MiB limit
    with pytest.raises(VisionSearchError) as info:
        c.upsert("big", [Item(str(i), vector=rows[i]) for i in range(300)])
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert c.count("big") == 0
    assert c.upsert("big", [Item(str(i), vector=rows[i]) for i in range(100)]) == 100
