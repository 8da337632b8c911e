"""Small requests that used to exhaust memory, stall the server, echo megabytes back or reach outside the data
folder: each is refused from its size or shape, before the work or allocation it asks for, with a precise
status and a short message, and the server keeps serving."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch_client import Client, Item

from server.aio import inline_rules
from server.app import Running, create_server
from server.config import Config
from server.handlers import SERVICE_NAMES, methods
from server.services import Services
from tests.conftest import LION, ServerProcess
from tests.test_bad_input import refused

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _png(w: int, h: int, mode: str = "1") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, "PNG")
    return buf.getvalue()


def _short(details: str) -> None:
    assert len(details) < 400, f"{len(details)} characters: {details[:200]}"


# ------------------------------------------------------------------ images


@pytest.mark.parametrize(("w", "h"), [(1, 30_000), (30_000, 1), (1, 20_000_000), (200, 40_000)])
def test_extreme_aspect_ratios_are_refused_from_the_header(client: Client, w: int, h: int) -> None:
    data = _png(w, h)
    assert len(data) < 100_000  # a small request
    refused(lambda: client.embed_image(data), INVALID, f"image is {w}x{h}", "crop it")
    refused(lambda: client.tag(data, k=3), INVALID, "more than 100 times the other")
    assert client.embed_image(LION.read_bytes()).shape == (1280,)


def test_concurrent_near_limit_images_stay_within_the_decode_budget(
    spawn_server: type[ServerProcess], tmp_path: Path
) -> None:
    proc = spawn_server(tmp_path)
    big = _png(6_000, 6_000, "RGBA")  # 36 Mpx of RGBA: ~0.5 GB while decoded, composited and converted
    pid = proc.proc.pid

    def peak_rss_mb() -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    with Client(proc.address, timeout=120) as c:
        c.embed_image(big)  # one alone: the baseline peak
        alone = peak_rss_mb()
        errors: list[BaseException] = []

        def embed() -> None:
            try:
                c.embed_image(big)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=embed) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert errors == []
        # Four at once decode one after another: the peak grows by far less than three more images.
        assert peak_rss_mb() - alone < 300, (alone, peak_rss_mb())


# ------------------------------------------------------------------ counts and sizes


@pytest.fixture(scope="module")
def wide(server: Running) -> Iterator[str]:
    """A 65,536-d collection with 300 items (75 MiB of vectors)."""
    with Client(f"127.0.0.1:{server.port}", timeout=120, max_message_bytes=64 << 20) as c:
        c.create_collection("wide65536", dim=65_536)
        rng = np.random.default_rng(0)
        for start in range(0, 300, 50):
            batch = [Item(f"w{start + j}", vector=rng.standard_normal(65_536)) for j in range(50)]
            c.upsert("wide65536", batch)
        yield "wide65536"
        c.drop_collection("wide65536")


def test_get_items_of_too_many_ids_or_too_large_a_response_is_refused(client: Client, wide: str) -> None:
    ids = [f"w{n}" for n in range(24_000)]  # a 200 KB request for a 6 GB response
    refused(
        lambda: client.get_items(wide, ids, with_vector=True), INVALID, "24,000 entries", "limit of 10,000"
    )
    details = refused(
        lambda: client.get_items(wide, ids[:300], with_vector=True),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the response would be about 75",
        "without vectors",
    )
    _short(details)
    assert len(client.get_items(wide, ids[:300], with_vector=False)) == 300
    assert len(client.get_items(wide, ids[:20], with_vector=True)) == 20


def test_a_search_response_with_vectors_too_large_is_refused(client: Client, wide: str) -> None:
    q = np.ones(65_536, np.float32)
    refused(
        lambda: client.search(wide, vector=q, k=300, with_vector=True),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "smaller k",
    )
    assert len(client.search(wide, vector=q, k=10, with_vector=True)) == 10


def test_many_empty_items_are_refused_before_allocating(client: Client, wide: str) -> None:
    many = [Item(f"e{n}", image=b"") for n in range(200_000)]  # 48.8 GiB of vectors, were they allocated
    refused(lambda: client.upsert(wide, many), INVALID, "200,000 entries", "limit of 10,000")
    some = [Item(f"e{n}", image=b"x") for n in range(5_000)]
    refused(lambda: client.upsert(wide, some), INVALID, "send at most 1,024 items per call")
    assert client.count(wide) == 300


# ------------------------------------------------------------------ the event loop


def test_a_huge_word_list_is_refused_at_once(client: Client) -> None:
    details = refused(
        lambda: client.search("default", words=["cat"] * 500_000, k=3), INVALID, "500,000 entries"
    )
    _short(details)
    assert client.healthy()


def test_heavy_searches_leave_the_event_loop(services: Services, client: Client, fresh_name: str) -> None:
    client.create_collection(fresh_name, dim=256, index="exact")
    rng = np.random.default_rng(1)
    rule = inline_rules(services.cheap_search)["Search"]

    def request(**kw: object) -> pb.SearchRequest:
        return pb.SearchRequest(collection=fresh_name, vector=pb.Vector(f32=b"\0" * 1024), k=5, **kw)  # type: ignore[arg-type]

    assert rule(request())  # a few rows: cheaper than a hop to the pool
    for start in range(0, 10_000, 2_500):
        client.upsert(
            fresh_name,
            [Item(f"i{start + j}", vector=v) for j, v in enumerate(rng.standard_normal((2_500, 256)))],
        )
    assert not rule(request())  # 2.56 M multiply-adds: about a millisecond, runs in the pool
    assert not rule(request(exact=True))
    assert rule(pb.SearchRequest(collection="no-such", k=1))  # refused at once wherever it runs
    assert len(client.search(fresh_name, vector=rng.standard_normal(256), k=5)) == 5
    client.drop_collection(fresh_name)


# ------------------------------------------------------------------ what the server says back


def test_messages_quote_at_most_about_100_characters(client: Client) -> None:
    name = "n" * 1_000_000
    for call in (
        lambda: client.create_collection(name, dim=4),
        lambda: client.search(name, vector=[1, 0], k=1),
        lambda: client.tag(LION.read_bytes(), k=3, vocabulary=["w" * 10_000_000]),
        lambda: client.search("default", words=["x" * 500_000], k=1),
        lambda: client.create_collection("okname", dim=4, index="i" * 100_000),  # type: ignore[arg-type]
    ):
        with pytest.raises(Exception) as info:
            call()
        details = getattr(info.value, "details", str(info.value))
        assert getattr(info.value, "code", INVALID) == INVALID, details[:300]
        _short(details)
    assert client.healthy()


def test_malformed_request_bytes_are_invalid_argument(server: Running) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        for service in SERVICE_NAMES:
            for name, req, _ in methods(service):
                call = ch.unary_unary(
                    f"/{service}/{name}", request_serializer=None, response_deserializer=None
                )
                for junk in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12" + b"\x80" * 12):
                    with pytest.raises(grpc.RpcError) as info:
                        call(junk, timeout=30)
                    assert info.value.code() == INVALID, (service, name, info.value.details())
                    assert f"not a valid {req.DESCRIPTOR.full_name}" in info.value.details()


# ------------------------------------------------------------------ names and paths


@pytest.mark.parametrize(
    "joint", ["head:/etc/passwd", "head:../../x", "head:./tuxpaint", "head:a/b", "head:"]
)
def test_heads_are_named_not_pathed(client: Client, joint: str) -> None:
    refused(
        lambda: client.create_collection("h", embedder="mobilenet_v2", joint=joint),
        INVALID,
        "joint space",
        "head names are 1-64 characters",
    )
    refused(lambda: client.tag(LION.read_bytes(), k=3, joint=joint), INVALID, "head names")


def test_a_name_with_a_trailing_newline_is_refused(client: Client) -> None:
    refused(lambda: client.create_collection("abc\n", dim=4), INVALID, "1-64 characters")
    refused(lambda: client.count("abc\n"), INVALID, "1-64 characters")


def test_nan_or_inf_in_a_joint_space_query_is_refused(client: Client) -> None:
    for bad in (np.nan, np.inf):
        v = np.ones(1280, np.float32)
        v[7] = bad
        refused(lambda v=v: client.search("default", vector=v, space="joint", k=3), INVALID, "NaN or Inf")


def test_an_unknown_space_is_refused(server: Running) -> None:
    with Client(f"127.0.0.1:{server.port}") as c:
        req = pb.SearchRequest(collection="default", id="x", k=1, space=99)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as info:
            c._search.Search(req, timeout=30)
        assert info.value.code() == INVALID and "space 99" in info.value.details()


def test_a_vocabulary_word_the_encoder_cannot_read_is_invalid_argument(client: Client) -> None:
    refused(lambda: client.tag(LION.read_bytes(), k=1, vocabulary=["日本"]), INVALID, "vocabulary words")


# ------------------------------------------------------------------ connections


def test_a_connection_that_never_handshakes_is_closed(
    base_config: Config, services: Services, tmp_path: Path
) -> None:
    config = replace(base_config, data_dir=tmp_path, default_collection=False, handshake_timeout_s=1.0)
    running = create_server(config, services.with_store(config))
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as s:
            # The server sends its settings, then closes: no preface, no settings from us, no connection.
            # (recv's own 30 s timeout raises if it never closes.)
            while s.recv(1024):
                pass
    finally:
        running.stop(grace=0)
