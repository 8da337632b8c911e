"""Our HNSW path against raw usearch on one shared graph: what our wrapper costs per query.

bench/ann.py builds a separate graph for each method; usearch builds on several threads, so two builds differ
and their recall/speed curves cross by more than the wrapper's cost. Here one graph (fashion-mnist-784, 60,000
base vectors, M=16, ef_construction=128) serves three ways, at each ef:

- ``usearch``: ``usearch.index.Index.search(q, 10)`` on the graph itself;
- ``wrapper``: ``kernels.hnsw.HNSWIndex.search`` (lock, ef bookkeeping, score and key arrays);
- ``collection``: ``AnnManager.search`` as a collection runs it (choice capture, the graph's lock, trimming).

They return the same neighbours (checked), so recall is equal by construction. The three are interleaved in
``--rounds`` rounds of ``--queries`` single-query calls each, so drift of the machine hits all alike, and the
median of the per-round ratios is reported (target: ours >= 0.9 x usearch).

    .venv/bin/python bench/hnsw_overhead.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import fashion  # bench/ is on sys.path when a bench script runs

from kernels import ExactIndex, topk_inner_product
from kernels.hnsw import HNSWParams
from kernels.tuning import build_hnsw
from server.storage.ann import AnnManager, _Choice

OUT = Path(__file__).resolve().parent / "results" / "hnsw_overhead.json"
EFS = (16, 32, 64, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    base, queries = fashion(args.queries)
    _, truth = topk_inner_product(base, queries, 10)
    storage = ExactIndex(784, capacity=len(base))
    storage.add(base)
    hnsw = build_hnsw(base, np.arange(len(base)), HNSWParams())
    raw = hnsw._index
    manager = AnnManager("hnsw", 0.95, "bench", HNSWParams(), threading.Lock())
    results = []
    for ef in EFS:
        manager._choice = _Choice("hnsw", "bench", hnsw=hnsw, ef=ef)

        def usearch_call(q: np.ndarray) -> np.ndarray:
            return np.asarray(raw.search(q, 10).keys)

        def wrapper_call(q: np.ndarray, ef: int = ef) -> np.ndarray:
            return hnsw.search(q[None, :], 10, ef)[1][0]

        def collection_call(q: np.ndarray) -> np.ndarray:
            return manager.search(storage, q[None, :], 10)[1][0]

        calls = {"usearch": usearch_call, "wrapper": wrapper_call, "collection": collection_call}
        hnsw.search(queries[:1], 10, ef)  # sets the graph's ef for the raw calls too
        found = {name: np.stack([f(q) for q in queries]) for name, f in calls.items()}
        for name in ("wrapper", "collection"):
            if not np.array_equal(found[name], found["usearch"]):
                raise SystemExit(f"{name} returned other neighbours than usearch at ef={ef}")
        recall = float(
            np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found["usearch"], truth, strict=True)])
        )
        rates: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, f in calls.items():
                t0 = time.perf_counter()
                for q in queries:
                    f(q)
                rates[name].append(len(queries) / (time.perf_counter() - t0))
        row = {
            "ef": ef,
            "recall": recall,
            "qps_median": {n: statistics.median(r) for n, r in rates.items()},
            "wrapper_ratio": statistics.median(
                w / u for w, u in zip(rates["wrapper"], rates["usearch"], strict=True)
            ),
            "collection_ratio": statistics.median(
                c / u for c, u in zip(rates["collection"], rates["usearch"], strict=True)
            ),
        }
        results.append(row)
        q = row["qps_median"]
        print(
            f"ef={ef:<4} recall {recall:.3f}  usearch {q['usearch']:,.0f} q/s  wrapper {q['wrapper']:,.0f} "
            f"({row['wrapper_ratio']:.3f}x)  collection path {q['collection']:,.0f} "
            f"({row['collection_ratio']:.3f}x)"
        )
    worst = min(min(r["wrapper_ratio"], r["collection_ratio"]) for r in results)
    print(f"worst ratio {worst:.3f} (target >= 0.90: {'met' if worst >= 0.9 else 'NOT met'})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"results": results, "rounds": args.rounds, "queries": args.queries}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
