"""SearchBatch against single calls: 64 vector queries in one SearchBatch over gRPC, against the same 64
queries as 64 Search calls, back to back from one caller, in interleaved rounds.

A server in a child process holds the 60,000 fashion-mnist-784 vectors (``index=auto``: HNSW, recall target
0.95); queries are test images, k = 10, no payloads. Each round times ``--reps`` batches and ``--reps`` x 64
single calls; printed: queries/s of each, per round and the median ratio. Target: SearchBatch >= 3x the
queries/s of single calls. Results: ``bench/results/batch.json``.

    .venv/bin/python bench/batch.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from _server import BenchServer, fashion  # bench/ is on sys.path when a bench script runs
from filtered import cpu
from visionsearch_client import Client, Item
from visionsearch_client._convert import search_request

OUT = Path(__file__).resolve().parent / "results" / "batch.json"
BATCH, K = 64, 10


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    base, queries = fashion(BATCH * args.reps)
    with BenchServer() as server, Client(server.address, timeout=600) as c:
        c.create_collection("b", dim=base.shape[1], index="auto")
        for s in range(0, len(base), 2000):
            c.upsert("b", [Item(str(i), vector=base[i]) for i in range(s, min(len(base), s + 2000))])
        while "in the background" in (in_use := c.get_collection("b").index_in_use):
            time.sleep(0.5)
        requests = [search_request("", vector=q, k=K, with_payload=False, with_vector=False) for q in queries]
        batches = [requests[i : i + BATCH] for i in range(0, len(requests), BATCH)]
        # Warm both paths (kernels compiled, connections up), and check they agree.
        for n, hits in enumerate(c.search_batch("b", batches[0])):
            single = c.search("b", vector=queries[n], k=K, with_payload=False)
            assert [h.id for h in hits] == [h.id for h in single], n
        rounds = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            for b in batches:
                c.search_batch("b", b)
            batch_qps = len(requests) / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for q in queries:
                c.search("b", vector=q, k=K, with_payload=False)
            single_qps = len(queries) / (time.perf_counter() - t0)
            rounds.append({"batch_qps": batch_qps, "single_qps": single_qps, "ratio": batch_qps / single_qps})
            print(f"round {r + 1}: SearchBatch {batch_qps:,.0f} q/s, single calls {single_qps:,.0f} q/s, "
                  f"{batch_qps / single_qps:.2f}x", flush=True)  # fmt: skip
    ratio = statistics.median(x["ratio"] for x in rounds)
    result = {
        "machine": f"{cpu()} ({os.cpu_count()} cores)", "index": in_use, "batch": BATCH, "k": K,
        "rounds": rounds, "median_ratio": ratio, "target_met": ratio >= 3,
    }  # fmt: skip
    print(f"machine: {result['machine']}; {in_use}")
    print(f"median: SearchBatch of {BATCH} is {ratio:.2f}x the q/s of single calls (target >= 3x: "
          f"{'met' if ratio >= 3 else 'NOT met'})")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
