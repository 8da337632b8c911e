"""The native engine of the load harness (``engine="native"``: visionsearch-loadgen, C++ over gRPC's async
API) against the session server, plus its open-loop scheduling against small gRPC servers that stall on
purpose. Every run is short and bounded; nothing asserts how fast the server or the generator is.

The binary is built from clients/cpp by scripts/setup_clients.sh (`make clients`); these tests rebuild it
incrementally and fail, naming that script, when the C++ build was never configured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from visionsearch_client import Client, Item
from visionsearch_client.loadtest import (
    KINDS,
    ConfigError,
    LoadConfig,
    Report,
    UnreachableError,
    native,
    run,
    sweep,
)
from visionsearch_client.loadtest.native import NativeEngine, NativeEngineError
from visionsearch_client.loadtest.runner import Target, run_in_new_loop
from visionsearch_client.loadtest.workload import METHODS, Planned

from server.app import Running, create_server
from server.auth import add_key
from server.config import Config
from server.services import Services
from tests.conftest import ROOT
from tests.pki import Authority

CPP_BUILD = ROOT / "clients" / "cpp" / "build"
SETUP = "run scripts/setup_clients.sh (or `make clients`) first"
DEAD = "127.0.0.1:1"
COST_KEYS = {"cores", "cpu_s", "user_s", "sys_s", "wall_s", "sent", "us_per_request"}


def address(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def loadgen() -> Iterator[Path]:
    """visionsearch-loadgen rebuilt incrementally from this checkout, and named to the harness explicitly."""
    cmake = shutil.which("cmake")
    if cmake is None or not (CPP_BUILD / "CMakeCache.txt").exists():
        pytest.fail(f"the C++ client build is not configured ({CPP_BUILD}): {SETUP}", pytrace=False)
    r = subprocess.run(
        [cmake, "--build", str(CPP_BUILD), "-j2", "--target", "visionsearch-loadgen"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    binary = CPP_BUILD / "visionsearch-loadgen"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(native.LOADGEN_ENV, str(binary))
        yield binary


def assert_ordered(latency_ms: dict[str, float]) -> None:
    lat = latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]


def assert_cost(report: Report) -> None:
    """The generator's own CPU cost is reported, and its parts agree with each other."""
    cost = report.generator_cpu
    assert cost is not None and set(cost) == COST_KEYS
    assert cost["cpu_s"] > 0 and cost["wall_s"] > 0 and cost["sent"] >= report.requests
    assert cost["cpu_s"] == pytest.approx(cost["user_s"] + cost["sys_s"], abs=2e-6)
    assert cost["cores"] == pytest.approx(cost["cpu_s"] / cost["wall_s"], rel=1e-3, abs=1e-5)
    assert cost["us_per_request"] == pytest.approx(cost["cpu_s"] / cost["sent"] * 1e6, rel=1e-3, abs=1e-2)


# A generous deadline: the first searches of a session may wait for kernels to compile on a busy machine.
OPEN = {"mode": "open", "rate": 200.0, "duration_s": 1.0, "warmup_s": 0.2, "timeout_s": 60.0,
        "mix": {"search_vector": 3, "search_word": 1}}  # fmt: skip


@pytest.fixture(scope="module")
def native_open(server: Running, loadgen: Path) -> Report:
    return run(LoadConfig(address=address(server), engine="native", **OPEN))  # type: ignore[arg-type]


def test_native_open_loop_sends_the_offered_rate(native_open: Report) -> None:
    r = native_open
    assert r.engine == "native" and r.mode == "open" and r.offered_rate == 200
    assert r.errors == {}, r.table()
    assert r.requests == r.ok == 200  # i/200 s for i in the 1 s window after the 0.2 s warm-up
    assert set(r.by_kind) == {"search_vector", "search_word"}
    assert sum(s["requests"] for s in r.by_kind.values()) == r.requests
    # Scheduled every 5 ms from the window start, whatever the responses did.
    assert r.samples is not None
    np.testing.assert_allclose(np.sort(r.samples.scheduled_s), np.arange(200) / 200, atol=1e-6)
    assert r.throughput <= 200 * 1.001  # the span is at least n/rate
    assert r.lag_ms is not None and 0 <= r.lag_ms["p50"] <= r.lag_ms["p99"] <= r.lag_ms["max"]
    assert_ordered(r.latency_ms)
    assert HdrHistogram.decode(r.histogram).get_total_count() == r.ok
    assert_cost(r)
    assert r.generator_cpu is not None and r.generator_cpu["sent"] == 240  # the 40 warm-up requests too
    table = r.table()
    assert "native engine (visionsearch-loadgen)" in table and "CPU s per wall s" in table


def key_shape(d: dict[str, Any]) -> dict[str, Any]:
    """The keys of a report's JSON, nested one level into its dicts and lists of dicts."""
    shape: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            inner = [x for x in v.values() if isinstance(x, dict)]
            shape[k] = sorted(v) if not inner else sorted({kk for x in inner for kk in x})
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            shape[k] = sorted({kk for x in v for kk in x})
        else:
            shape[k] = type(v).__name__
    return shape


def test_native_report_has_the_python_engine_schema(server: Running, native_open: Report) -> None:
    python = run(LoadConfig(address=address(server), **{**OPEN, "duration_s": 0.5}))  # type: ignore[arg-type]
    assert python.engine == "python"
    assert_cost(python)
    ours, theirs = native_open.to_dict(), python.to_dict()
    assert ours["engine"] == "native" and theirs["engine"] == "python"
    assert key_shape(ours) == key_shape(theirs)
    assert sorted(ours["config"]) == sorted(theirs["config"])
    assert json.loads(native_open.to_json()) == ours


def test_native_counts_errors_by_status(small_server: tuple[Running, Client], loadgen: Path) -> None:
    """The collection is dropped after the harness checked it and prepared the requests: every search then
    fails NOT_FOUND while the Embeds beside them succeed, and only successes enter the histogram."""
    running, client = small_server
    client.create_collection("doomed", dim=8)
    rng = np.random.default_rng(0)
    client.upsert("doomed", [Item(id=f"v{i}", vector=rng.standard_normal(8)) for i in range(20)])
    config = LoadConfig(
        address=address(running), engine="native", collection="doomed", mode="open", rate=40,
        duration_s=1.0, warmup_s=0.0, mix={"search_vector": 1, "embed": 1},
    )  # fmt: skip

    async def scenario() -> Report:
        target = await Target.open(config)
        try:
            client.drop_collection("doomed")
            return await target.run(config)
        finally:
            await target.close()

    r = run_in_new_loop(scenario())
    assert r.requests == 40
    searches = r.by_kind["search_vector"]["requests"]
    assert searches > 0 and r.errors == {"NOT_FOUND": searches}, r.table()
    assert r.by_kind["search_vector"]["ok"] == 0
    assert r.ok == r.by_kind["embed"]["requests"] == r.requests - r.error_count > 0
    assert HdrHistogram.decode(r.histogram).get_total_count() == r.ok
    assert sum(row["errors"] for row in r.timeline) == searches
    assert "NOT_FOUND" in r.table()


# ---------------------------------------------------------------- stalling servers
# No real visionsearch server can be made to stall on cue, so these are real gRPC servers (grpcio, generic
# handlers answering any method with empty bytes) whose handlers wait on purpose.


def stalling_server(workers: int, handler: Callable[[], None]) -> tuple[grpc.Server, str]:
    def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
        handler()
        return b""

    rpc = grpc.unary_unary_rpc_method_handler(answer)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("visionsearch.v1.SearchService",
                                                                          {"Search": rpc})])  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def replay(loadgen: Path, addr: str, rate: float, duration_s: float, **options: Any) -> Any:
    """Searches at ``rate``/s for ``duration_s`` from the native engine, all of which must succeed; returns
    their scheduled times, latencies and lags, ordered by schedule."""
    engine = NativeEngine(loadgen)
    try:
        engine.load([Planned(KINDS.index("search_vector"), METHODS["search_vector"], b"\x08\x01")])
        config = LoadConfig(address=addr, mode="open", rate=rate, duration_s=duration_s, warmup_s=0,
                            timeout_s=30, **options)  # fmt: skip
        recorder, summary = engine.run_blocking(config)
    finally:
        engine.close()
    s = recorder.samples()
    assert len(s.latency_s) == summary["sent"] and s.ok.all()
    order = np.argsort(s.scheduled_s)
    return s.scheduled_s[order], s.latency_s[order], s.lag_s[order]


def replay_uniform(loadgen: Path, addr: str, n: int, rate: float, max_in_flight: int) -> Any:
    """n requests at ``rate``/s, checked to be scheduled every 1/rate s; returns latencies and lags."""
    scheduled, latency, lag = replay(loadgen, addr, rate, (n - 0.5) / rate, max_in_flight=max_in_flight)
    np.testing.assert_allclose(scheduled, np.arange(n) / rate, atol=1e-6)
    return latency, lag


@pytest.mark.parametrize("max_in_flight", [1, 1000])
def test_native_measures_from_the_scheduled_time(loadgen: Path, max_in_flight: int) -> None:
    """No coordinated omission: a server that serves one request at a time in 50 ms, offered 100 req/s.

    Request i is scheduled at i*10 ms and cannot complete before (i+1)*50 ms, so its latency must be at least
    50 + 40*i ms; a tool timing from the actual send (or waiting for the server before sending the next)
    would report ~50 ms throughout. With max_in_flight=1 the generator itself is held back, and the delay
    shows as send lag too."""
    service_s, n = 0.05, 10
    server, addr = stalling_server(1, lambda: threading.Event().wait(service_s))
    try:
        latency, lag = replay_uniform(loadgen, addr, n, 100, max_in_flight)
    finally:
        server.stop(0).wait()
    eps = 0.002
    floor = service_s + (service_s - 0.01) * np.arange(n)
    assert (latency >= floor - eps).all(), latency
    assert latency[-1] >= 0.4  # 50 + 40*9 ms, against the 50 ms a coordinated tool would see
    if max_in_flight == 1:
        assert (lag >= (service_s - 0.01) * np.arange(n) - eps).all(), lag


def test_native_sends_without_waiting_for_replies(loadgen: Path) -> None:
    """A server that answers nothing until all 8 requests have arrived (a barrier): a generator whose sends
    waited for replies would never send the 8th, and every call would fail once the barrier gives up. The
    open loop sends all 8 on schedule; request i, scheduled at i*10 ms, cannot be answered before the 8th
    arrives at 70 ms, so its latency is at least (7 - i)*10 ms."""
    n = 8
    barrier = threading.Barrier(n, timeout=20)
    server, addr = stalling_server(n, barrier.wait)
    try:
        latency, _ = replay_uniform(loadgen, addr, n, 100, 1000)
    finally:
        barrier.abort()
        server.stop(0).wait()
    assert (latency >= (n - 1 - np.arange(n)) / 100 - 0.001).all(), latency


def test_native_poisson_arrivals_are_seeded(loadgen: Path) -> None:
    server, addr = stalling_server(4, lambda: None)
    try:
        a = replay(loadgen, addr, 2000, 0.25, arrival="poisson", seed=7)[0]
        b = replay(loadgen, addr, 2000, 0.25, arrival="poisson", seed=7)[0]
        c = replay(loadgen, addr, 2000, 0.25, arrival="poisson", seed=8)[0]
    finally:
        server.stop(0).wait()
    np.testing.assert_array_equal(a, b)  # the same seed, the same schedule
    assert len(a) != len(c) or not np.array_equal(a, c)
    gaps = np.diff(a)
    assert a[0] == 0.0 and (gaps >= 0).all() and len(a) > 300
    assert gaps.mean() == pytest.approx(1 / 2000, rel=0.2)  # ~500 gaps of an exponential with mean 0.5 ms
    assert gaps.std() > 0.5 * gaps.mean()  # exponential, not constant


# ---------------------------------------------------------------- closed loop, sweep, failures


def test_native_closed_loop(server: Running, loadgen: Path) -> None:
    config = LoadConfig(address=address(server), engine="native", mode="closed", concurrency=2,
                        duration_s=10, max_requests=30, warmup_s=0.1, mix={"search_vector": 1})  # fmt: skip
    r = run(config)
    assert r.engine == "native" and r.mode == "closed" and r.offered_rate is None and r.lag_ms is None
    assert r.requests == r.ok == 30 and r.errors == {}, r.table()
    assert r.samples is not None and (r.samples.lag_s == 0).all()
    assert_ordered(r.latency_ms)
    assert_cost(r)


def test_native_sweep(server: Running, loadgen: Path) -> None:
    config = LoadConfig(address=address(server), engine="native", duration_s=0.4, warmup_s=0.1)
    easy = sweep(config, start_rate=25, factor=2, max_steps=2, p99_bound_ms=60_000, min_achieved_ratio=0.5)
    assert [s.offered_rate for s in easy.steps] == [25, 50]
    assert all(s.held for s in easy.steps), easy.table()
    assert easy.highest_rate_held == 50
    assert [r.engine for r in easy.reports] == ["native", "native"]
    assert [r.requests for r in easy.reports] == [10, 20]


def test_missing_binary_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(native.LOADGEN_ENV, raising=False)
    monkeypatch.setattr(native, "REPO_BUILD", tmp_path / "build" / native.BINARY)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NativeEngineError, match=r"not built .*`make clients`"):
        native.find_loadgen()
    monkeypatch.setenv(native.LOADGEN_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(NativeEngineError, match=r"VISIONSEARCH_LOADGEN=.*nowhere is not an executable"):
        native.find_loadgen()
    # Checked before anything connects: the dead address is never tried.
    with pytest.raises(NativeEngineError, match="make clients"):
        run(LoadConfig(address=DEAD, engine="native"))
    with pytest.raises(ConfigError, match="engine must be 'python' or 'native'"):
        LoadConfig(engine="rust")  # type: ignore[arg-type]


def test_binary_refuses_a_dead_address_and_a_bad_plan(loadgen: Path, tmp_path: Path) -> None:
    engine = NativeEngine(loadgen)
    try:
        engine.load([Planned(0, METHODS["search_vector"], b"")])
        with pytest.raises(UnreachableError, match=f"cannot reach visionsearch at {DEAD}"):
            engine.run_blocking(LoadConfig(address=DEAD, mode="open", connect_timeout_s=0.5))
        engine.plan.write_bytes(b"not a plan at all")
        with pytest.raises(NativeEngineError, match="not a visionsearch-loadgen plan"):
            engine.run_blocking(LoadConfig(address=DEAD, mode="open"))
    finally:
        engine.close()
    bad = subprocess.run([str(loadgen), "--rate", "fast"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "bad value for --rate: fast" in bad.stderr and "usage:" in bad.stderr


# ---------------------------------------------------------------- command line


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "visionsearch_client.loadtest", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False,
    )  # fmt: skip


def test_cli_native_engine_writes_json_and_png(server: Running, loadgen: Path, tmp_path: Path) -> None:
    proc = cli(
        "--engine", "native", "--address", address(server), "--mode", "open", "--rate", "50",
        "--duration", "1", "--warmup", "0.2", "--mix", "search_vector=3,tag=1", "-k", "5",
        "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "open loop at 50 req/s" in proc.stdout and "generator lag" in proc.stdout
    assert "native engine (visionsearch-loadgen)" in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["engine"] == "native" and data["config"]["engine"] == "native"
    assert data["requests"] == 50 and data["errors"] == {}
    assert set(data["generator_cpu"]) == COST_KEYS and data["generator_cpu"]["cpu_s"] > 0
    assert set(data["by_kind"]) == {"search_vector", "tag"}
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_native_engine_missing_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, native.LOADGEN_ENV: str(tmp_path / "nowhere")}
    proc = cli("--engine", "native", "--address", DEAD, "--no-save", env=env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: VISIONSEARCH_LOADGEN=") and "`make clients`" in proc.stderr


def test_native_engine_speaks_tls_and_sends_the_api_key(
    base_config: Config, services: Services, tmp_path: Path, loadgen: Path
) -> None:
    ca = Authority(tmp_path, "ca")
    cert = ca.issue("server")
    key = add_key(tmp_path / "keys.json", "bench", "read")
    settings = {"tls_cert": str(cert.cert), "tls_key": str(cert.key), "api_keys": str(tmp_path / "keys.json")}
    config = replace(base_config, data_dir=tmp_path / "data", default_collection=False, **settings)  # type: ignore[arg-type]
    running = create_server(config, services.with_store(config))
    try:
        target = f"127.0.0.1:{running.port}"
        admin = add_key(tmp_path / "keys.json", "admin", "admin")
        running.reload()
        with Client(target, api_key=admin, root_certificates=ca.pair.cert) as c:
            c.create_collection("tls", dim=4)
            c.upsert("tls", [Item(f"i{n}", vector=[1, n, 0, 0]) for n in range(20)])
        load = LoadConfig(address=target, engine="native", collection="tls", mix={"search_vector": 1},
                          mode="open", rate=100.0, duration_s=0.5, warmup_s=0.1, timeout_s=30.0,
                          api_key=key, root_certificates=str(ca.pair.cert))  # fmt: skip
        # Every call needs the key (the server answers UNAUTHENTICATED without it): 50 OK means the native
        # engine sent it on each, over TLS.
        good = run(load)
        assert good.engine == "native" and good.errors == {} and good.ok == 50, good.table()
        with pytest.raises(UnreachableError, match="UNAUTHENTICATED"):
            run(replace(load, api_key="not-a-key"))
    finally:
        running.stop(grace=0)
