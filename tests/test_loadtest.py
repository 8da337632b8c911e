"""The load-testing harness (visionsearch_client.loadtest) against the session server, plus the open-loop
scheduler against a fake slow server. Every run is short and bounded; nothing asserts how fast the server
is."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from PIL import Image
from visionsearch_client import Client, Item
from visionsearch_client.loadtest import (
    ConfigError,
    LoadConfig,
    Report,
    UnreachableError,
    parse_mix,
    run,
    save_png,
    save_sweep_png,
    sweep,
)
from visionsearch_client.loadtest.report import Recorder
from visionsearch_client.loadtest.runner import Window, arrivals, drive_open

from server.app import Running
from tests.conftest import ROOT

ALL_KINDS = {"search_vector": 4.0, "search_image": 1.0, "search_word": 2.0, "tag": 1.0, "embed": 1.0}
DEAD = "127.0.0.1:1"


def address(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


def assert_ordered(latency_ms: dict[str, float]) -> None:
    lat = latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]


@pytest.fixture(scope="module")
def closed_report(server: Running) -> Report:
    """One closed-loop run with all five request kinds (shared by the tests that read its report)."""
    config = LoadConfig(
        address=address(server),
        mode="closed",
        concurrency=4,
        duration_s=1.5,
        warmup_s=0.3,
        mix=ALL_KINDS,
        k=5,
    )
    return run(config)


def test_closed_loop_mix_of_all_kinds(closed_report: Report) -> None:
    r = closed_report
    assert r.mode == "closed" and r.offered_rate is None and r.lag_ms is None
    assert r.errors == {}, r.table()
    assert r.requests == r.ok > 0
    assert set(r.by_kind) == set(ALL_KINDS)
    assert sum(s["requests"] for s in r.by_kind.values()) == r.requests
    assert all(s["ok"] == s["requests"] and s["errors"] == 0 for s in r.by_kind.values())
    assert sum(row["requests"] for row in r.timeline) == r.requests
    assert sum(row["ok"] for row in r.timeline) == r.ok
    assert_ordered(r.latency_ms)
    assert r.throughput == pytest.approx(r.requests / r.elapsed_s, rel=1e-3)
    # Samples are the recorded window only: scheduled times start at the window (warm-up excluded).
    assert r.samples is not None and len(r.samples.latency_s) == r.requests
    assert r.samples.scheduled_s.min() >= 0
    table = r.table()
    for word in ("p50", "p90", "p99", "p999", "max", "errors       none", "search_word"):
        assert word in table


def test_open_loop_achieves_the_offered_rate(server: Running) -> None:
    config = LoadConfig(
        address=address(server),
        mode="open",
        rate=100,
        duration_s=1.5,
        warmup_s=0.2,
        mix={"search_vector": 3, "search_word": 1},
    )
    r = run(config)
    assert r.errors == {}, r.table()
    assert r.offered_rate == 100
    assert abs(r.requests - 150) <= 1  # i/100 for i in the 1.5 s window after the 0.2 s warm-up
    # Never above the offered rate (the span is at least n/rate); below only if the server lags a lot.
    assert 50 <= r.throughput <= 100 * 1.001
    # Requests were scheduled every 10 ms from the window start, independent of the responses.
    assert r.samples is not None
    gaps = np.diff(np.sort(r.samples.scheduled_s))
    np.testing.assert_allclose(gaps, 0.01, atol=1e-9)
    assert r.lag_ms is not None and 0 <= r.lag_ms["p50"] <= r.lag_ms["p99"] <= r.lag_ms["max"]
    assert_ordered(r.latency_ms)


@pytest.mark.parametrize("max_in_flight", [1, 1000])
def test_open_loop_measures_from_the_scheduled_time(max_in_flight: int) -> None:
    """No coordinated omission: a server that serves one request at a time in 50 ms, offered 100 req/s.

    Request i is scheduled at i*10 ms and cannot complete before (i+1)*50 ms, so its latency must be at least
    50 + 40*i ms: a tool that timed from the actual send (or waited for the server before scheduling the next
    request) would report ~50 ms throughout. With max_in_flight=1 the generator itself is held back, and the
    delay shows as send lag too."""
    service_s, n = 0.05, 10
    busy = asyncio.Lock()

    async def slow_send(i: int) -> tuple[int, str]:
        async with busy:
            await asyncio.sleep(service_s)
        return 0, "OK"

    async def main() -> Recorder:
        recorder = Recorder()
        t0 = time.perf_counter() + 0.005
        window = Window(t0, duration_s=n / 100, max_requests=None)
        await drive_open(slow_send, arrivals(100), t0, 0.0, window, max_in_flight, recorder)
        return recorder

    s = asyncio.run(main()).samples()
    assert len(s.latency_s) == n
    order = np.argsort(s.scheduled_s)
    np.testing.assert_allclose(s.scheduled_s[order], np.arange(n) / 100, atol=1e-9)
    eps = 0.002
    floor = service_s + (service_s - 0.01) * np.arange(n)
    assert (s.latency_s[order] >= floor - eps).all(), s.latency_s[order]
    assert s.latency_s[order][-1] >= 0.4  # 50 + 40*9 ms, against the 50 ms a coordinated tool would see
    if max_in_flight == 1:
        assert (s.lag_s[order] >= (service_s - 0.01) * np.arange(n) - eps).all(), s.lag_s[order]


def test_poisson_arrivals_are_seeded() -> None:
    a = [t for t, _ in zip(arrivals(1000, "poisson", seed=7), range(5000), strict=False)]
    b = [t for t, _ in zip(arrivals(1000, "poisson", seed=7), range(5000), strict=False)]
    assert a == b and a[0] == 0.0
    gaps = np.diff(a)
    assert (gaps > 0).all()
    assert gaps.mean() == pytest.approx(1e-3, rel=0.1)
    assert gaps.std() > 0.5e-3  # exponential, not constant


def test_errors_are_counted_by_status(server: Running) -> None:
    """k above the server's cap: every search fails INVALID_ARGUMENT, the Embeds beside them succeed, and
    only the successes enter the latency histogram. The run is bounded by its request count; the duration
    is only a backstop (a slow runner's Embeds took 31 ms each, and 1.5 s was once too short for 40)."""
    config = LoadConfig(
        address=address(server),
        concurrency=2,
        duration_s=60.0,
        max_requests=40,
        warmup_s=0.0,
        mix={"search_vector": 1, "embed": 1},
        k=100_000,
    )
    r = run(config)
    assert r.requests == 40
    assert r.errors == {"INVALID_ARGUMENT": r.by_kind["search_vector"]["requests"]}
    assert r.by_kind["search_vector"]["ok"] == 0
    assert r.ok == r.by_kind["embed"]["requests"] == r.requests - r.error_count
    assert r.error_rate == pytest.approx(r.error_count / 40)
    assert HdrHistogram.decode(r.histogram).get_total_count() == r.ok
    assert "INVALID_ARGUMENT" in r.table()


def test_unknown_collection_and_dead_address_fail_before_the_run(server: Running) -> None:
    with pytest.raises(ConfigError, match="unknown collection 'no-such-collection'"):
        run(LoadConfig(address=address(server), collection="no-such-collection", duration_s=1, warmup_s=0))
    with pytest.raises(UnreachableError, match=f"cannot reach visionsearch at {DEAD}"):
        run(LoadConfig(address=DEAD, connect_timeout_s=0.5, duration_s=1))
    with pytest.raises(ConfigError, match="unknown request kind"):
        LoadConfig(mix=parse_mix("search_vector=8,nearest=1"))
    assert parse_mix("search_vector=8, tag=1,embed") == {"search_vector": 8, "tag": 1, "embed": 1}


def test_json_and_png_are_written(closed_report: Report, tmp_path: Path) -> None:
    data = json.loads(closed_report.save_json(tmp_path / "out" / "run.json").read_text())
    assert data["requests"] == closed_report.requests and data["errors"] == {}
    assert set(data["latency_ms"]) >= {"p50", "p90", "p99", "p999", "max", "mean"}
    assert_ordered(data["latency_ms"])
    assert data["config"]["mix"] == ALL_KINDS and "samples" not in data
    assert len(data["timeline"]) >= 1 and {"t", "requests", "p50_ms", "p99_ms"} <= set(data["timeline"][0])
    png = save_png(closed_report, tmp_path / "out" / "run.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something was drawn


def test_sweep_reports_the_highest_rate_held(server: Running, tmp_path: Path) -> None:
    config = LoadConfig(address=address(server), duration_s=0.5, warmup_s=0.1, mix={"search_vector": 1})
    # A bound no server misses (and a lenient throughput rule): every step holds, the last is the answer.
    easy = sweep(config, start_rate=20, factor=2, max_steps=3, p99_bound_ms=60_000, min_achieved_ratio=0.5)
    assert [s.offered_rate for s in easy.steps] == [20, 40, 80]
    assert all(s.held for s in easy.steps), easy.table()
    assert easy.highest_rate_held == 80 and "max_steps" in easy.stopped_because
    # A bound no server meets: the first step breaks it and no rate held.
    hard = sweep(config, start_rate=20, step=10, max_steps=3, p99_bound_ms=0.001)
    assert len(hard.steps) == 1 and not hard.steps[0].held and "p99" in hard.steps[0].reason
    assert hard.highest_rate_held is None
    # With attempts, a rate that breaks the bound is run again before the sweep stops; one that holds is not.
    retried = sweep(config, start_rate=20, step=10, max_steps=3, p99_bound_ms=0.001, attempts=3)
    assert [s.offered_rate for s in retried.steps] == [20, 20, 20] and retried.highest_rate_held is None
    kept = sweep(config, start_rate=20, factor=2, max_steps=2, p99_bound_ms=60_000, min_achieved_ratio=0.5,
                 attempts=3)  # fmt: skip
    assert [s.offered_rate for s in kept.steps] == [20, 40] and kept.highest_rate_held == 40
    data = json.loads(easy.save_json(tmp_path / "sweep.json").read_text())
    assert data["highest_rate_held"] == 80 and len(data["steps"]) == len(data["step_reports"]) == 3
    with Image.open(save_sweep_png(easy, tmp_path / "sweep.png")) as im:
        assert im.format == "PNG"


def _cli() -> list[str]:
    script = shutil.which("visionsearch-loadtest", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "visionsearch_client.loadtest"]


def test_cli_dead_address_exits_2() -> None:
    for cmd in (_cli(), [sys.executable, "-m", "visionsearch_client.loadtest", "sweep", "--start", "10",
                         "--p99-bound-ms", "5"]):  # fmt: skip
        proc = subprocess.run(
            [*cmd, "--address", DEAD, "--connect-timeout", "1", "--no-save"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert f"error: cannot reach visionsearch at {DEAD}" in proc.stderr


def test_cli_open_loop_run_writes_json_and_png(server: Running, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_cli(), "--address", address(server), "--mode", "open", "--rate", "50", "--duration", "1",
         "--warmup", "0.2", "--mix", "search_vector=3,tag=1", "-k", "5",
         "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "r.png")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "open loop at 50 req/s" in proc.stdout and "generator lag" in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["offered_rate"] == 50 and data["errors"] == {}
    assert set(data["by_kind"]) == {"search_vector", "tag"}
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "loadtest-results").exists()  # explicit paths only


def test_write_kinds_upsert_and_delete_in_their_own_collection(small_server: tuple[Running, Client]) -> None:
    running, c = small_server
    c.create_collection("writes", dim=8)
    c.upsert("writes", [Item(f"seed{n}", vector=np.eye(8)[n]) for n in range(8)])
    config = LoadConfig(
        address=address(running), mode="closed", concurrency=4, duration_s=1.0, warmup_s=0.2,
        mix={"search_vector": 2, "upsert": 1, "delete": 1}, collection="writes", k=3,
    )  # fmt: skip
    r = run(config)
    assert r.errors == {}, r.table()
    assert set(r.by_kind) == {"search_vector", "upsert", "delete"}
    assert r.by_kind["upsert"]["ok"] > 0 and r.by_kind["delete"]["ok"] > 0
    # The pool's ids were written (and some deleted again); the seeds are untouched.
    written = c.get_items("writes", [f"loadtest-{n}" for n in range(1024)])
    assert written and all(g.id.startswith("loadtest-") for g in written)
    assert c.count("writes") == 8 + len(written)
