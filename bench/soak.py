"""A soak: the server under a steady mixed load of searches and writes at 80% of its peak rate, watched for
slow leaks (resident memory, threads, open files) and for any status it should not give.

1. A server in a child process (fsync on, a snapshot every 8 MiB of log) gets a collection of the 60,000
   fashion-mnist-784 vectors (``index=auto``: HNSW is built and saved before the soak starts).
2. Its peak: ``visionsearch-loadtest``'s closed loop (16 callers, ``--peak-seconds``) with the soak's mix,
   8 searches by vector to 1 upsert and 1 delete (one item each, ids cycling through a pool of 1,024).
3. The soak: the open loop at ``--fraction`` (0.8) of that peak for ``--minutes`` (10), with the server's
   VmRSS, threads and open files sampled every 5 s.

Pass: no error statuses (every call answered OK; the loadtest counts the others by status), resident memory
at the end within 5% of what it was after the first minute (caches, the allocator and the log warm up in
that minute; the growth from the very start is printed too), and the thread count flat. Results go to
``bench/results/soak.json``.

    .venv/bin/python bench/soak.py                  # `make soak` runs it after the crasher
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _server import BenchServer, fashion  # bench/ is on sys.path when a bench script runs
from visionsearch_client import Client, Item
from visionsearch_client.loadtest import LoadConfig, run

RESULTS = Path(__file__).resolve().parent / "results"
MIX = {"search_vector": 8.0, "upsert": 1.0, "delete": 1.0}


def proc_stats(pid: int) -> dict[str, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append({"t": time.monotonic() - self.t0, **proc_stats(self.pid)})
            self.stop.wait(self.every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--peak-seconds", type=float, default=20.0)
    ap.add_argument("--engine", choices=["python", "native"], default="python")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args()

    base, queries = fashion(1000)
    flags = ("--fsync", "--snapshot-wal-bytes", str(8 << 20), "--embed-processes", "0")
    with BenchServer(*flags) as server:
        with Client(server.address, timeout=120) as c:
            c.create_collection("soak", dim=784)
            for start in range(0, len(base), 2000):
                c.upsert(
                    "soak",
                    [Item(f"f{start + j}", vector=v) for j, v in enumerate(base[start : start + 2000])],
                )
            while "building" in c.get_collection("soak").index_in_use:
                time.sleep(1)
            print(f"collection: {c.get_collection('soak').index_in_use}", flush=True)
        np_queries = RESULTS / "soak_queries.npy"
        np.save(np_queries, queries)
        common = LoadConfig(
            address=server.address, collection="soak", mix=MIX, k=10, vectors=str(np_queries),
            engine=args.engine, warmup_s=2.0,
        )  # fmt: skip
        peak = run(replace(common, mode="closed", concurrency=16, duration_s=args.peak_seconds))
        rate = peak.throughput * args.fraction
        print(
            f"peak {peak.throughput:.0f} requests/s (closed loop, 16 callers); soak at {rate:.0f}/s",
            flush=True,
        )

        sampler = Sampler(server.proc.pid)
        sampler.start()
        soak = run(replace(common, mode="open", rate=rate, duration_s=args.minutes * 60, max_in_flight=256))
        sampler.stop.set()
        sampler.join()
        np_queries.unlink(missing_ok=True)

    samples = sampler.samples
    after_warmup = next((s for s in samples if s["t"] >= 60), samples[0])
    end = samples[-1]
    growth = (end["rss_mb"] - after_warmup["rss_mb"]) / after_warmup["rss_mb"]
    growth_from_start = (end["rss_mb"] - samples[0]["rss_mb"]) / samples[0]["rss_mb"]
    threads = sorted({int(s["threads"]) for s in samples})
    errors = dict(soak.errors)
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "mix": MIX,
        "peak_rps": peak.throughput,
        "soak_rps_offered": rate,
        "soak_rps_served": soak.throughput,
        "minutes": args.minutes,
        "requests": soak.requests,
        "errors": errors,
        "latency_ms": soak.latency_ms,
        "lag_ms": soak.lag_ms,
        "rss_mb": {
            "start": samples[0]["rss_mb"],
            "after_1_min": after_warmup["rss_mb"],
            "end": end["rss_mb"],
        },
        "rss_growth_after_1_min": growth,
        "rss_growth_from_start": growth_from_start,
        "threads_seen": threads,
        "fds": {"start": samples[0]["fds"], "end": end["fds"]},
        "samples": samples,
        "pass": not errors and growth < 0.05 and len(threads) <= 2 and max(threads) - min(threads) <= 2,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"soak: {soak.requests:,} requests in {args.minutes:g} min at {soak.throughput:.0f}/s "
        f"(offered {rate:.0f}/s = {args.fraction:.0%} of the {peak.throughput:.0f}/s peak); "
        f"errors {errors or 'none'}; p50 {soak.latency_ms['p50']:.2f} ms p99 {soak.latency_ms['p99']:.2f} ms"
    )
    print(
        f"RSS {samples[0]['rss_mb']:.0f} MB at start, {after_warmup['rss_mb']:.0f} MB after 1 min, "
        f"{end['rss_mb']:.0f} MB at the end: {growth:+.1%} after the first minute ({growth_from_start:+.1%} "
        f"from the start); threads {threads}; open files {samples[0]['fds']:.0f} -> {end['fds']:.0f}"
    )
    print("PASS" if result["pass"] else "FAIL", flush=True)


if __name__ == "__main__":
    main()
