"""Search latency under open-loop load over gRPC on loopback: 1,000 requests/s on a 60k collection.

A server in a child process fills a collection with the 60,000 fashion-mnist-784 training vectors
(``index=auto``, recall target 0.95) and stops once its index is built (the graph is saved with it). Then for
each server mode (``--server-mode sync``: grpcio's thread pool; ``aio``: one event loop) a server reopens that
collection, the unloaded per-call floor is measured (sequential Count and Search), and
``visionsearch-loadtest``'s open loop offers single-vector searches (k = 10, no payloads, query vectors =
fashion-mnist test images) at ``--rate`` per second for ``--seconds`` after a warm-up. Latency is measured
from each request's scheduled send time (no coordinated omission), so a generator that falls behind shows
up as latency, and its lag is printed too.
Then a sweep on the last mode raises the rate until p99 passes ``--p99-bound-ms``.

Results: ``bench/results/latency_modes.json`` (both modes), ``latency.json`` and ``latency.png`` (latency over
time, distribution, last mode), ``latency_sweep.json`` and ``.png``.

    .venv/bin/python bench/latency.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import BenchServer, fashion  # bench/ is on sys.path when a bench script runs
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch_client import Client, Item
from visionsearch_client.loadtest import LoadConfig, run
from visionsearch_client.loadtest.plot import save_png, save_sweep_png
from visionsearch_client.loadtest.sweep import sweep

RESULTS = Path(__file__).resolve().parent / "results"


def fill(data: Path, base: np.ndarray) -> str:
    with BenchServer(data_dir=data) as server, Client(server.address, timeout=600) as c:
        c.create_collection("fmnist", dim=784, index="auto")
        for s in range(0, len(base), 2000):
            c.upsert("fmnist", [Item(str(i), vector=base[i]) for i in range(s, s + 2000)])
        while "in the background" in (in_use := c.get_collection("fmnist").index_in_use):
            time.sleep(0.5)
        return in_use  # the server's stop snapshots the collection with its graph


async def floor_ms(address: str, queries: np.ndarray, n: int = 500) -> dict[str, float]:
    """Sequential (unloaded) p50 of a Count, the cheapest RPC, and of a search: the per-call floor."""
    async with grpc.aio.insecure_channel(address) as ch:
        count = ch.unary_unary("/visionsearch.v1.CollectionService/Count")
        search = ch.unary_unary("/visionsearch.v1.SearchService/Search")
        creq = pb.CountRequest(collection="fmnist").SerializeToString()
        sreqs = [
            pb.SearchRequest(collection="fmnist", vector=pb.Vector(f32=q.tobytes()), k=10).SerializeToString()
            for q in queries[:n]
        ]
        for r in sreqs[:50]:
            await search(r)
        lat: dict[str, list[float]] = {"count": [], "search": []}
        for r in sreqs:
            t0 = time.perf_counter()
            await count(creq)
            t1 = time.perf_counter()
            await search(r)
            lat["count"].append(t1 - t0)
            lat["search"].append(time.perf_counter() - t1)
    return {k: float(np.median(v) * 1000) for k, v in lat.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--modes", default="sync,aio", help="server modes to measure, the last one is swept")
    ap.add_argument("--p99-bound-ms", type=float, default=3.0)
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    base, queries = fashion(2000)
    RESULTS.mkdir(exist_ok=True)
    summary: dict[str, object] = {"rate": args.rate, "seconds": args.seconds, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        qfile, data = Path(tmp) / "queries.npy", Path(tmp) / "data"
        np.save(qfile, queries)
        in_use = fill(data, base)
        print(f"collection: 60,000 x 784, {in_use}")
        summary["index_in_use"] = in_use
        modes = args.modes.split(",")
        for mode in modes:
            with BenchServer("--server-mode", mode, data_dir=data) as server:
                floor = asyncio.run(floor_ms(server.address, queries))
                config = LoadConfig(
                    address=server.address, mode="open", rate=args.rate, duration_s=args.seconds, warmup_s=3,
                    mix={"search_vector": 1.0}, collection="fmnist", k=10, with_payload=False, vectors=qfile,
                )  # fmt: skip
                report = run(config)
                lat, lag = report.latency_ms, report.lag_ms or {}
                print(
                    f"[{mode}] unloaded p50: Count {floor['count']:.2f} ms, Search {floor['search']:.2f} ms; "
                    f"open loop {args.rate:.0f}/s for {args.seconds:.0f} s: "
                    f"achieved {report.throughput:,.0f}/s, "
                    f"p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}, "
                    f"p99.9 {lat['p999']:.2f}, max {lat['max']:.2f}; errors {report.errors or 'none'}; "
                    f"generator lag p99 {lag.get('p99', float('nan')):.2f} ms"
                )
                summary[mode] = {"floor_p50_ms": floor, "latency_ms": lat, "lag_ms": lag,
                                 "throughput": report.throughput, "errors": report.errors}  # fmt: skip
                if mode == modes[-1]:
                    print(f"targets p50 <= 1 ms: {'met' if lat['p50'] <= 1 else 'NOT met'}; "
                          f"p99 <= 3 ms: {'met' if lat['p99'] <= 3 else 'NOT met'}")  # fmt: skip
                    report.save_json(RESULTS / "latency.json")
                    save_png(report, RESULTS / "latency.png")
                    if not args.no_sweep:
                        step = replace(config, duration_s=6, warmup_s=1)
                        sr = sweep(step, start_rate=250, factor=1.4, p99_bound_ms=args.p99_bound_ms)
                        print(f"[{mode}] sweep: highest rate held with p99 <= {args.p99_bound_ms} ms: "
                              f"{sr.highest_rate_held}")  # fmt: skip
                        summary["sweep_highest_rate_held"] = sr.highest_rate_held
                        (RESULTS / "latency_sweep.json").write_text(sr.to_json() + "\n")
                        save_sweep_png(sr, RESULTS / "latency_sweep.png")
    (RESULTS / "latency_modes.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
