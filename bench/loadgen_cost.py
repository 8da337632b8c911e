"""What the load generator itself costs: the Python engine (grpc.aio in this process) against the native one
(visionsearch-loadgen, C++), offering the same open-loop searches to the same server in interleaved rounds.

A server in a child process holds a collection of ``--items`` seeded random unit vectors (784-d, the size of
a fashion-mnist query, exact index) so that each search is cheap and the generator's share of the 2 cores
shows. Each round runs both engines for ``--seconds`` at ``--rate`` (after a warm-up). Printed per run: the
generator's CPU seconds per wall second ("cores", from getrusage / os.times over the run), its CPU per
request, its send lag and the latencies it measured; then, per round, how many times more CPU the Python
engine took.
The native engine is built by `make clients`.

Results: ``bench/results/loadgen_cost.json``.

    .venv/bin/python bench/loadgen_cost.py                       # 1,000/s, 10 s per run, 3 rounds
    .venv/bin/python bench/loadgen_cost.py --rate 200 --seconds 2 --rounds 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from _server import BenchServer  # bench/ is on sys.path when a bench script runs
from visionsearch_client import Client, Item
from visionsearch_client.loadtest import LoadConfig, Report, run

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 784


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fill(address: str, items: int) -> None:
    vectors = np.random.default_rng(0).standard_normal((items, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Client(address, timeout=600) as c:
        c.create_collection("cost", dim=DIM, index="exact")
        for s in range(0, items, 1000):
            c.upsert("cost", [Item(str(i), vector=vectors[i]) for i in range(s, min(s + 1000, items))])


def line(engine: str, r: Report) -> str:
    cost, lat, lag = r.generator_cpu or {}, r.latency_ms, r.lag_ms or {}
    return (
        f"  {engine:<6} achieved {r.throughput:8.1f}/s  generator {cost.get('cores', 0):.3f} cores "
        f"({cost.get('us_per_request', 0):7.1f} us/request)  lag p50 {lag.get('p50', 0):.3f} "
        f"p99 {lag.get('p99', 0):.3f} ms  latency p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} ms  "
        f"errors {r.error_count}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=5000)
    args = ap.parse_args()
    machine = f"{cpu_model()}, {os.cpu_count()} cpus"
    print(f"machine: {machine}")
    out: dict[str, object] = {"machine": machine, "rate": args.rate, "seconds": args.seconds, "rounds": []}
    with tempfile.TemporaryDirectory() as tmp, BenchServer(data_dir=Path(tmp)) as server:
        fill(server.address, args.items)
        base = LoadConfig(
            address=server.address, mode="open", rate=args.rate, duration_s=args.seconds, warmup_s=1,
            mix={"search_vector": 1.0}, collection="cost", k=10, with_payload=False,
        )  # fmt: skip
        print(f"{args.items} x {DIM} exact, open loop at {args.rate:g}/s for {args.seconds:g} s per run")
        rounds: list[dict[str, object]] = []
        for i in range(args.rounds):
            print(f"round {i + 1}")
            reports = {}
            for engine in ("python", "native"):  # interleaved: each round measures both under like conditions
                reports[engine] = r = run(replace(base, engine=engine))
                print(line(engine, r))
            py, nat = (reports[e].generator_cpu or {} for e in ("python", "native"))
            ratio = py["cpu_s"] / nat["cpu_s"] if nat.get("cpu_s") else float("nan")
            print(f"  the python engine took {ratio:.1f}x the native engine's CPU")
            runs: dict[str, object] = {e: rep.to_dict() for e, rep in reports.items()}
            rounds.append(runs | {"python_over_native_cpu": ratio})
        out["rounds"] = rounds
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loadgen_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'loadgen_cost.json'}")


if __name__ == "__main__":
    main()
