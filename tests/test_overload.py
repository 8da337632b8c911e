"""Overload, deadlines and cancellation over real gRPC: a full embedding queue answers RESOURCE_EXHAUSTED at
once, a deadline shorter than the work answers DEADLINE_EXCEEDED and the work is dropped rather than
finished in the background, a cancelled call's work is dropped too, and the server keeps serving.

The embedding worker is held busy with a gate around its real forward, so the interleavings are forced by
events, not by timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np
import pytest
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc
from visionsearch_client import Client, Item

from embedder.image import ImageEmbedder
from server.app import Running, create_server
from server.config import Config
from server.services import Services, open_store
from tests.conftest import LION

QUEUE = 3


class Gate:
    """Wraps the real forward; while closed, the worker blocks inside it."""

    def __init__(self, forward):  # type: ignore[no-untyped-def]
        self.forward = forward
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.open.wait(30)
        return self.forward(batch)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def overload(
    base_config: Config, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Running, Gate]]:
    config = replace(
        base_config,
        data_dir=tmp_path_factory.mktemp("overload"),
        default_collection=False,
        embed_max_batch=1,
        embed_queue=QUEUE,
    )
    images = ImageEmbedder(
        threads=1, max_pixels=config.max_pixels, max_batch=1, max_wait_s=0, max_queue=QUEUE
    )
    gate = Gate(images.batcher._forward)
    images.batcher._forward = gate
    own = Services(config, open_store(config, images, services.joints), images, services.words,
                   services.word_index, services.joints)  # fmt: skip
    running = create_server(config, own)
    yield running, gate
    running.server.stop(0).wait()
    own.close()
    images.close()


def _embed(stub: pb_grpc.EmbedServiceStub, timeout: float = 30) -> pb.EmbedResponse:
    return stub.Embed(pb.EmbedRequest(image=LION.read_bytes()), timeout=timeout)


def _hold(gate: Gate, stub: pb_grpc.EmbedServiceStub, pool: ThreadPoolExecutor):  # type: ignore[no-untyped-def]
    gate.open.clear()
    gate.entered.clear()
    busy = pool.submit(_embed, stub)
    assert gate.entered.wait(30)
    return busy


def _healthy(port: int) -> None:
    with Client(f"127.0.0.1:{port}", timeout=30) as c:
        assert c.healthy() and c.embed_image(LION.read_bytes()).shape == (1280,)


def test_a_full_queue_answers_resource_exhausted(overload: tuple[Running, Gate]) -> None:
    running, gate = overload
    stats = running.services.images.batcher.stats
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch, ThreadPoolExecutor(8) as pool:
        stub = pb_grpc.EmbedServiceStub(ch)
        busy = _hold(gate, stub, pool)
        queued = [pool.submit(_embed, stub) for _ in range(QUEUE)]
        while len(running.services.images.batcher._queue) < QUEUE:
            time.sleep(0.005)
        refused_before = stats.refused
        with pytest.raises(grpc.RpcError) as info:
            _embed(stub)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in info.value.details() and "retry" in info.value.details()
        assert stats.refused == refused_before + 1
        gate.open.set()
        for f in [busy, *queued]:
            assert len(f.result(60).vector.f32) == 1280 * 4  # everyone admitted is served
    _healthy(running.port)


def test_a_deadline_shorter_than_the_work_is_dropped_not_finished(overload: tuple[Running, Gate]) -> None:
    running, gate = overload
    stats = running.services.images.batcher.stats
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch, ThreadPoolExecutor(4) as pool:
        stub = pb_grpc.EmbedServiceStub(ch)
        busy = _hold(gate, stub, pool)
        dropped, embedded = stats.dropped, stats.embedded
        with pytest.raises(grpc.RpcError) as info:
            _embed(stub, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.open.set()
        busy.result(60)
    _healthy(running.port)
    # The expired call's image never reached torch: only the held call and the health check were embedded.
    assert stats.dropped == dropped + 1
    assert stats.embedded == embedded + 2


def test_a_cancelled_call_is_dropped(overload: tuple[Running, Gate]) -> None:
    running, gate = overload
    stats = running.services.images.batcher.stats
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch, ThreadPoolExecutor(4) as pool:
        stub = pb_grpc.EmbedServiceStub(ch)
        busy = _hold(gate, stub, pool)
        dropped = stats.dropped
        call = stub.Embed.future(pb.EmbedRequest(image=LION.read_bytes()), timeout=30)
        while not running.services.images.batcher._queue:
            time.sleep(0.005)
        assert call.cancel()
        deadline = time.monotonic() + 10
        while stats.dropped == dropped and time.monotonic() < deadline:
            time.sleep(0.01)  # counted when a worker forms its next batch and skips the cancelled image
        gate.open.set()
        busy.result(60)
    assert stats.dropped == dropped + 1
    _healthy(running.port)


def test_bulk_upserts_bypass_the_queue(overload: tuple[Running, Gate]) -> None:
    running, _ = overload
    with Client(f"127.0.0.1:{running.port}", timeout=120) as c:
        c.create_collection("bulk", embedder="mobilenet_v2")
        items = [Item(f"lion{i}", image=LION.read_bytes()) for i in range(QUEUE + 2)]
        assert c.upsert("bulk", items) == QUEUE + 2  # more images than the queue holds, in one request
