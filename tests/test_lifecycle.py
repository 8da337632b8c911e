"""Health, reflection, deadlines, graceful shutdown and crash recovery, on real servers and processes."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from visionsearch_client import Client, Item, VisionSearchError

from server.app import SERVICE_NAMES, Running, create_server
from server.config import Config
from server.services import Services
from tests.conftest import LION, ServerProcess


def test_health_reports_every_service(server: Running) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", *SERVICE_NAMES):
            assert (
                stub.Check(health_pb2.HealthCheckRequest(service=name)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_api(server: Running) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert set(SERVICE_NAMES) <= services
        assert "grpc.health.v1.Health" in services
        pool = DescriptorPool(db)
        search = pool.FindServiceByName("visionsearch.v1.SearchService")
        assert {m.name for m in search.methods} == {"Search", "SearchBatch", "Recommend", "NearestWords"}
        assert pool.FindMessageTypeByName("visionsearch.v1.Vector").fields_by_name["f32"].type == 12  # bytes


def test_client_deadline_is_honoured(client: Client) -> None:
    with pytest.raises(VisionSearchError) as info:
        client.embed_image(LION.read_bytes(), timeout=0.0005)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.embed_image(LION.read_bytes()).shape == (1280,)  # and the server is fine


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sigterm_drains_in_flight_calls_and_flushes(
    spawn_server: type[ServerProcess], tmp_path: Path
) -> None:
    proc = spawn_server(tmp_path)
    c = Client(proc.address, timeout=120)
    c.create_collection("photos", embedder="mobilenet_v2")
    c.upsert("photos", [Item("seed", image=LION.read_bytes())])
    result: dict[str, object] = {}

    def slow_upsert() -> None:
        # ~48 images take seconds to embed on 2 cores: long enough to be in flight when SIGTERM lands.
        items = [Item(f"lion-{i}", image=LION.read_bytes()) for i in range(48)]
        try:
            result["count"] = c.upsert("photos", items)
        except VisionSearchError as e:
            result["error"] = e

    t = threading.Thread(target=slow_upsert)
    t.start()
    time.sleep(1.0)
    proc.signal(signal.SIGTERM)
    t.join(120)
    assert result.get("count") == 49, result
    assert proc.wait(60) == 0
    c.close()
    assert (tmp_path / "collections" / "photos" / "CURRENT").read_text().strip() != "0"
    again = spawn_server(tmp_path)
    with Client(again.address) as c2:
        assert c2.count("photos") == 49


def test_kill_9_loses_no_acknowledged_upsert(spawn_server: type[ServerProcess], tmp_path: Path) -> None:
    proc = spawn_server(tmp_path, "--fsync")
    vecs = _unit(2000, 32, seed=3)
    acked: list[str] = []
    stop = threading.Event()
    with Client(proc.address, timeout=10) as c:
        c.create_collection("stream", dim=32)

        def writer() -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                batch = [Item(f"id-{n + j}", vector=vecs[n + j], payload={"n": str(n + j)}) for j in range(5)]
                try:
                    c.upsert("stream", batch)
                except VisionSearchError:
                    return  # the server died mid-call: that batch was never acknowledged
                acked.extend(item.id for item in batch)
                n += 5

        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.signal(signal.SIGKILL)
        t.join(30)
        stop.set()
    assert proc.wait(10) == -signal.SIGKILL
    assert len(acked) >= 200
    again = spawn_server(tmp_path)
    with Client(again.address) as c:
        count = c.count("stream")
        assert count >= len(acked)
        got = c.get_items("stream", acked, with_vector=True)
        assert [g.id for g in got] == acked
        for g in got[:: max(1, len(got) // 50)]:
            n = int(g.payload["n"])
            np.testing.assert_allclose(g.vector, vecs[n], atol=1e-6)
        # The recovered collection keeps taking writes.
        c.upsert("stream", [Item("after", vector=vecs[0])])
        assert c.count("stream") == count + 1


def test_a_taken_port_is_a_clear_error(server: Running, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "--address",
            f"127.0.0.1:{server.port}",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("mode", "loop"), [("sync", "asyncio"), ("aio", "asyncio"), ("aio", "uvloop")])
def test_both_server_modes_serve_and_refuse_alike(
    base_config: Config, services: Services, tmp_path: Path, mode: str, loop: str
) -> None:
    config = replace(
        base_config, data_dir=tmp_path, default_collection=False, server_mode=mode, event_loop=loop
    )
    running = create_server(config, services.with_store(config))
    try:
        with Client(f"127.0.0.1:{running.port}", timeout=60) as c:
            assert c.healthy()
            c.create_collection("m", dim=2)
            c.upsert("m", [Item("a", vector=[1, 0]), Item("b", vector=[0, 1])])
            assert [h.id for h in c.search("m", vector=[1, 0.1], k=1)] == ["a"]
            assert c.embed_image(LION.read_bytes()).shape == (1280,)  # runs in the pool, not on the loop
            with pytest.raises(VisionSearchError) as info:
                c.search("nope", vector=[1, 0], k=1)
            assert info.value.code == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details
    finally:
        running.stop(grace=1)


def test_the_served_process_freezes_its_start_up_heap(
    spawn_server: type[ServerProcess], tmp_path: Path
) -> None:
    # A full cyclic collection over start-up's objects stopped the event loop for ~0.2 s (bench/latency.py's
    # p99 at 1,000/s); `serve` freezes them once it listens. The log line carries how many were frozen.
    proc = spawn_server(tmp_path, "--log-level", "INFO")
    with Client(proc.address) as c:
        c.create_collection("m", dim=2)
        c.upsert("m", [Item("a", vector=[1, 0])])
        assert [h.id for h in c.search("m", vector=[1, 0], k=1)] == ["a"]
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert proc.proc.stderr is not None
    frozen = [json.loads(line) for line in proc.proc.stderr.read().splitlines() if "heap frozen" in line]
    assert len(frozen) == 1 and frozen[0]["objects"] > 100_000, frozen
