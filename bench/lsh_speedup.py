"""LSH against the exact kernel on fashion-mnist-784, interleaved rounds: the issue's "recall@10 >= 0.95 at
>= 5x the exact kernel's single-query rate, same run", measured so that machine drift cannot decide it.

bench/ann.py sweeps every setting once each, minutes apart; on this machine absolute rates drift by up to 25%
over that time, so its 4.8-5.2x for the best LSH point is within the drift. Here the exact kernel and a few
LSH settings near the target answer the same 1,000 single queries (60,000 base vectors, k = 10) in
alternation, ``--rounds`` times; the median of the per-round speed-ups is printed with each setting's recall.

    .venv/bin/python bench/lsh_speedup.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import fashion  # bench/ is on sys.path when a bench script runs

from kernels import topk_inner_product
from kernels.lsh import LSHParams, RandomProjectionLSH

OUT = Path(__file__).resolve().parent / "results" / "lsh_speedup.json"
SETTINGS = [(10, 16, 4), (10, 16, 6), (12, 16, 12), (14, 16, 32)]  # (bits, tables, probes) near recall 0.95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    base, queries = fashion(args.queries)
    _, truth = topk_inner_product(base, queries, 10)
    rows = np.arange(len(base), dtype=np.int64)
    alive = np.ones(len(base), np.uint8)
    indexes = {}
    for bits, tables, _ in SETTINGS:
        if (bits, tables) not in indexes:
            lsh = RandomProjectionLSH(
                784, LSHParams(bits=bits, tables=tables, reduced_dim=64, rerank=100, seed=0)
            )
            lsh.build(base, rows)
            indexes[(bits, tables)] = lsh

    def exact(q: np.ndarray) -> np.ndarray:
        return topk_inner_product(base, q[None, :], 10)[1][0]

    calls = {"exact": exact}
    for bits, tables, probes in SETTINGS:
        lsh = indexes[(bits, tables)]
        calls[f"lsh K={bits} L={tables} probes={probes}"] = lambda q, lsh=lsh, probes=probes: lsh.search(
            base, alive, q[None, :], 10, probes
        )[1][0]
    recall = {}
    for name, f in calls.items():
        found = [f(q) for q in queries]  # also the warm-up (JIT compilation)
        recall[name] = float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(found, truth, strict=True)]))
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, f in calls.items():
            t0 = time.perf_counter()
            for q in queries:
                f(q)
            rates[name].append(len(queries) / (time.perf_counter() - t0))
    results = []
    for name in calls:
        speedup = statistics.median(r / e for r, e in zip(rates[name], rates["exact"], strict=True))
        results.append({"method": name, "recall": recall[name], "qps_median": statistics.median(rates[name]),
                        "speedup_median": speedup, "qps_rounds": rates[name]})  # fmt: skip
        print(f"{name:<28} recall@10 {recall[name]:.3f}  {statistics.median(rates[name]):7,.0f} q/s  "
              f"{speedup:5.2f}x exact")  # fmt: skip
    ok = [r for r in results if r["method"] != "exact" and r["recall"] >= 0.95 and r["speedup_median"] >= 5]
    print(f"target (recall >= 0.95 at >= 5x exact): {'met by ' + ok[0]['method'] if ok else 'NOT met'}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"rounds": args.rounds, "queries": args.queries, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
