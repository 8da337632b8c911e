"""visionsearch against Milvus Lite, side by side in one run, on the same 60,000 fashion-mnist-784 vectors.

Data: the Debian ``fashion-mnist`` training images (60,000 × 784, as float32, L2-normalised: cosine), queries
are the first ``--queries`` test images, k = 10, ground truth by exact brute force.

- visionsearch: a server in a child process (``--no-fsync``), a collection with ``index=auto`` whose recall
  target is the recall Milvus Lite measured (so the comparison is at equal recall, not at our default 0.95);
  it is filled over gRPC in batches and searched once its index is built.
- Milvus Lite (PyPI ``milvus-lite`` + ``pymilvus``), measured first: ``MilvusClient`` on a local ``.db``
  file (it starts its own local server process), a collection with metric COSINE and the default index,
  filled the same way, then ``load_collection``; searches ask for no output fields.

Both are driven by the same closed loop: ``C`` threads in this process (one client each) send single-vector
searches back to back for ``--seconds`` after a warm-up, at C = 1, 4 and 16. Latencies go into an HDR
histogram. Recall@10 is measured on every query for each system. Printed: queries/s, p50 and p99 per system
and concurrency, and the ratio visionsearch / Milvus Lite. Results go to ``bench/results/vs_milvus.json``.

    .venv/bin/python -m pip install -e '.[bench]'   # milvus-lite, pymilvus
    .venv/bin/python bench/vs_milvus.py
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import BenchServer, fashion  # bench/ is on sys.path when a bench script runs
from hdrh.histogram import HdrHistogram
from visionsearch_client import Client, Item

from kernels import topk_inner_product

OUT = Path(__file__).resolve().parent / "results" / "vs_milvus.json"
CALLERS = (1, 4, 16)
K = 10

Search = Callable[[np.ndarray], list[int]]


def closed_loop(
    make_search: Callable[[], Search], queries: np.ndarray, callers: int, seconds: float
) -> dict[str, Any]:
    hist = HdrHistogram(1, 60_000_000, 3)  # microseconds
    lock = threading.Lock()
    stop = threading.Event()
    recording = threading.Event()
    counts = [0] * callers
    errors: list[str] = []

    def caller(n: int) -> None:
        search = make_search()
        i = n
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                search(queries[i % len(queries)])
            except Exception as e:  # counted and reported; a benchmark must not hide failures
                errors.append(repr(e)[:200])
                continue
            us = int((time.perf_counter() - t0) * 1e6)
            if recording.is_set():
                with lock:
                    hist.record_value(max(1, us))
                counts[n] += 1
            i += callers

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(callers)]
    for t in threads:
        t.start()
    time.sleep(2)  # warm-up
    recording.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts), time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(30)
    return {
        "callers": callers,
        "qps": done / elapsed,
        "p50_ms": hist.get_value_at_percentile(50) / 1000,
        "p99_ms": hist.get_value_at_percentile(99) / 1000,
        "requests": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def recall(search: Search, queries: np.ndarray, truth: np.ndarray) -> float:
    got = sum(len(set(search(q)) & set(t.tolist())) for q, t in zip(queries, truth, strict=True))
    return got / (K * len(queries))


# ---------------------------------------------------------------- visionsearch


def fill_visionsearch(address: str, base: np.ndarray, recall_target: float, backend: str = "local") -> str:
    with Client(address, timeout=600) as c:
        c.create_collection(
            "fmnist", dim=base.shape[1], index="auto", recall_target=recall_target, backend=backend
        )
        for s in range(0, len(base), 2000):
            c.upsert("fmnist", [Item(str(i), vector=base[i]) for i in range(s, min(len(base), s + 2000))])
        while "in the background" in (in_use := c.get_collection("fmnist").index_in_use):
            time.sleep(0.5)
        return in_use


def visionsearch_search(address: str) -> Search:
    c = Client(address, timeout=30)

    def search(q: np.ndarray) -> list[int]:
        return [int(h.id) for h in c.search("fmnist", vector=q, k=K, with_payload=False)]

    return search


# ---------------------------------------------------------------- Milvus Lite


@contextmanager
def milvus_lite_server(folder: Path) -> Iterator[str]:
    """``milvus-lite server`` on a free loopback port, in a child process; yields its URI."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("milvus-lite")
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(folder / "milvus"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"milvus-lite server did not start on port {port}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def flush_milvus(uri: str, name: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    client.flush(name)
    client.close()


def fill_milvus(path: str, base: np.ndarray) -> Any:
    from pymilvus import MilvusClient

    client = MilvusClient(path)
    client.create_collection("fmnist", dimension=base.shape[1], metric_type="COSINE", auto_id=False)
    for s in range(0, len(base), 2000):
        rows = [{"id": i, "vector": base[i].tolist()} for i in range(s, min(len(base), s + 2000))]
        client.insert("fmnist", rows)
    client.flush("fmnist")
    client.load_collection("fmnist")
    index = client.describe_index("fmnist", client.list_indexes("fmnist")[0])
    return client, index


def milvus_search(client: Any) -> Search:
    def search(q: np.ndarray) -> list[int]:
        res = client.search("fmnist", [q.tolist()], limit=K, search_params={"metric_type": "COSINE"})
        return [int(h["id"]) for h in res[0]]

    return search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    base, queries = fashion(args.queries)
    _, truth = topk_inner_product(base, queries, K)
    result: dict[str, Any] = {"base": len(base), "queries": len(queries), "k": K, "cpus": os.cpu_count()}

    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
        t0 = time.perf_counter()
        client, index = fill_milvus(str(Path(tmp) / "milvus.db"), base)
        theirs: dict[str, Any] = {"fill_s": time.perf_counter() - t0, "index": index}
        theirs["recall"] = recall(milvus_search(client), queries, truth)
        # One MilvusClient per caller would open one local server each; callers share the client, as the
        # pymilvus docs allow (its gRPC channel is thread-safe).
        theirs["runs"] = [
            closed_loop(lambda: milvus_search(client), queries, c, args.seconds) for c in CALLERS
        ]
        client.close()
    print(f"Milvus Lite: index {index.get('index_type')}; recall@10 {theirs['recall']:.3f}")

    with BenchServer() as server:
        t0 = time.perf_counter()
        in_use = fill_visionsearch(server.address, base, theirs["recall"])
        ours = {"fill_s": time.perf_counter() - t0, "index_in_use": in_use}
        ours["recall"] = recall(visionsearch_search(server.address), queries, truth)
        ours["runs"] = [
            closed_loop(lambda: visionsearch_search(server.address), queries, c, args.seconds)
            for c in CALLERS
        ]
    print(f"visionsearch: {in_use}; recall@10 {ours['recall']:.3f}")

    # visionsearch over Milvus Lite (backend "milvus"): the same engine behind our gRPC API, so the cost of
    # the extra hop (our server, then Milvus's) is the difference from the Milvus Lite rows. Milvus Lite runs
    # as its own server here, as a Milvus would in production, so this process can flush the collection
    # after the bulk load, as the direct rows did: Milvus Lite answers searches over unflushed rows by
    # snapshotting its memtable on every call (2.5 s per search at 60k rows). The backend itself never
    # flushes: a Milvus cluster seals segments on its own, and Milvus Lite 3 loses rows from searches after
    # flushes that follow small writes (milvus-io/milvus-lite#369).
    with tempfile.TemporaryDirectory(prefix="vs-over-milvus-") as tmp, milvus_lite_server(Path(tmp)) as uri:
        with BenchServer("--milvus-uri", uri) as server:
            t0 = time.perf_counter()
            fill_visionsearch(server.address, base, theirs["recall"], backend="milvus")
            flush_milvus(uri, "vs_fmnist")
            over: dict[str, Any] = {"fill_s": time.perf_counter() - t0, "milvus": uri}
            over["recall"] = recall(visionsearch_search(server.address), queries, truth)
            over["runs"] = [
                closed_loop(lambda: visionsearch_search(server.address), queries, c, args.seconds)
                for c in CALLERS
            ]
    print(f"visionsearch over Milvus Lite: recall@10 {over['recall']:.3f}")

    head = f"{'visionsearch q/s':>16} {'p50':>8} {'p99':>8} | {'Milvus q/s':>10} {'p50':>8} {'p99':>8}"
    print(f"{'callers':>7} | {head} | ratio")
    ratios = []
    for a, b in zip(ours["runs"], theirs["runs"], strict=True):
        ratio = a["qps"] / b["qps"] if b["qps"] else float("inf")
        ratios.append(ratio)
        print(
            f"{a['callers']:>7} | {a['qps']:>16,.1f} {a['p50_ms']:>6.2f}ms {a['p99_ms']:>6.2f}ms | "
            f"{b['qps']:>10,.1f} {b['p50_ms']:>6.2f}ms {b['p99_ms']:>6.2f}ms | {ratio:.1f}x"
        )
    for a, b in zip(over["runs"], theirs["runs"], strict=True):
        print(
            f"{a['callers']:>7} | visionsearch over Milvus Lite {a['qps']:,.1f} q/s "
            f"({a['p50_ms']:.2f} ms p50, {a['p99_ms']:.2f} ms p99): "
            f"{a['qps'] / b['qps']:.2f}x Milvus Lite direct"
        )
    met = min(ratios) >= 3 and ours["recall"] >= theirs["recall"]
    print(f"target: >= 3x Milvus Lite's q/s at equal or better recall: {'met' if met else 'NOT met'}")
    result |= {
        "visionsearch": ours, "milvus_lite": theirs, "visionsearch_over_milvus_lite": over, "ratios": ratios,
        "target_met": met,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
