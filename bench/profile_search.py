"""Where a search's time goes under load: py-spy samples the server while the open loop offers searches.

Same set-up as bench/latency.py (60,000 fashion-mnist-784 vectors, ``index=auto``, single-vector searches,
k = 10, open loop at ``--rate``); ``py-spy record`` (in the ``bench`` extra) samples every server thread for
``--seconds``, and the samples are summarised by function: inclusive share of the samples where a thread was
busy, and the same for the leaf frames. Also printed: the unloaded floor of a Count and a Search (sequential
calls), which no server design removes. Output: ``bench/results/latency_profile.txt``.

    .venv/bin/python bench/profile_search.py
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import BenchServer, fashion  # bench/ is on sys.path when a bench script runs
from latency import fill, floor_ms
from visionsearch_client.loadtest import LoadConfig, run

OUT = Path(__file__).resolve().parent / "results" / "latency_profile.txt"


def summarise(raw: Path, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")[1:]  # the first frame names the thread
        if not frames:
            continue
        total += int(n)
        leaves[frames[-1]] += int(n)
        for f in set(frames):
            inclusive[f] += int(n)
    lines = [f"{total} busy samples (py-spy, all server threads)", "", "inclusive:"]
    lines += [f"  {100 * v / total:5.1f}%  {k}" for k, v in inclusive.most_common(top)]
    lines += ["", "leaf (self) time:"]
    lines += [f"  {100 * v / total:5.1f}%  {k}" for k, v in leaves.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    base, queries = fashion(2000)
    spy = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        qfile, data, raw = Path(tmp) / "q.npy", Path(tmp) / "data", Path(tmp) / "spy.txt"
        np.save(qfile, queries)
        in_use = fill(data, base)
        with BenchServer(data_dir=data) as server:
            floor = asyncio.run(floor_ms(server.address, queries))
            config = LoadConfig(
                address=server.address, mode="open", rate=args.rate, duration_s=args.seconds + 4, warmup_s=2,
                mix={"search_vector": 1.0}, collection="fmnist", k=10, with_payload=False, vectors=qfile,
            )  # fmt: skip
            result: dict[str, object] = {}
            load = threading.Thread(target=lambda: result.setdefault("report", run(config)))
            load.start()
            subprocess.run(
                [str(spy), "record", "-p", str(server.proc.pid), "-d", str(int(args.seconds)), "-f", "raw",
                 "-o", str(raw), "--nonblocking", "-t"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            load.join()
        report = result["report"]
        lat = report.latency_ms  # type: ignore[attr-defined]
        head = (
            f"index: {in_use}\nunloaded p50: Count {floor['count']:.2f} ms, Search {floor['search']:.2f} ms\n"
            f"open loop {args.rate:.0f}/s while sampled: p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms "
            "(py-spy's sampling costs CPU too)\n\n"
        )
        text = head + summarise(raw)
    print(text)
    OUT.write_text(text + "\n")


if __name__ == "__main__":
    main()
