"""What security costs: a single Search's latency at 500 requests/s, plaintext against TLS with an API key.

Two servers in child processes hold the same 20,000 random 128-d vectors (HNSW): one plaintext without keys,
one with TLS (a test CA made here, ECDSA P-256) and an API key file. ``visionsearch-loadtest``'s open loop
(``--engine``: the native C++ engine by default, which does TLS and sends the key as the Python
engine does) offers single-vector searches (k = 10, no payload) at
``--rate`` for ``--seconds``, alternating between the two servers for ``--rounds`` rounds so that drift of the
machine hits both alike; the medians of the rounds' p50 and p99 and their ratio are printed. Results:
``bench/results/security_cost.json``.

    .venv/bin/python bench/security_cost.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from _server import BenchServer  # bench/ is on sys.path when a bench script runs
from visionsearch_client import Client, Item
from visionsearch_client.loadtest import LoadConfig, run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from server.auth import add_key  # noqa: E402
from tests.pki import Authority  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "security_cost.json")
    ap.add_argument("--engine", choices=("native", "python"), default="native", help="who sends the load")
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result

    tmp = Path(tempfile.mkdtemp(prefix="vs-security-"))
    ca = Authority(tmp, "ca")
    cert = ca.issue("server")
    key = add_key(tmp / "keys.json", "bench", "admin")  # it creates and fills the collection too
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20_000, 128)).astype(np.float32)
    queries = tmp / "queries.npy"
    np.save(queries, rng.standard_normal((1000, 128)).astype(np.float32))
    common = ("--embed-processes", "0")
    secure_flags = (
        "--tls-cert",
        str(cert.cert),
        "--tls-key",
        str(cert.key),
        "--api-keys",
        str(tmp / "keys.json"),
    )
    with (
        BenchServer(*common) as plain,
        BenchServer(*common, *secure_flags, root_certificates=ca.pair.cert_pem) as secure,
    ):
        for server, extra in ((plain, {}), (secure, {"api_key": key, "root_certificates": ca.pair.cert})):
            with Client(server.address, timeout=120, **extra) as c:  # type: ignore[arg-type]
                c.create_collection("sec", dim=128, index="hnsw")
                for start in range(0, len(base), 2000):
                    c.upsert(
                        "sec",
                        [Item(f"i{start + j}", vector=v) for j, v in enumerate(base[start : start + 2000])],
                    )
                while not c.get_collection("sec").index_in_use.startswith("hnsw:") or "building" in (
                    c.get_collection("sec").index_in_use
                ):
                    time.sleep(0.5)
        config = LoadConfig(
            mode="open", rate=args.rate, duration_s=args.seconds, warmup_s=2.0, collection="sec", k=10,
            with_payload=False, vectors=str(queries), engine=args.engine,
        )  # fmt: skip
        setups = {
            "plaintext": replace(config, address=plain.address),
            "tls+key": replace(
                config, address=secure.address, api_key=key, root_certificates=str(ca.pair.cert)
            ),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        for r in range(args.rounds):
            for name, cfg in setups.items():
                report = run(cfg)
                assert report.errors == {}, (name, report.errors)
                lag = (report.lag_ms or {}).get("p99", float("nan"))
                rounds[name].append({
                    "p50": report.latency_ms["p50"], "p99": report.latency_ms["p99"],
                    "p999": report.latency_ms["p999"], "lag_p99": lag,
                })  # fmt: skip
                lat = report.latency_ms
                print(
                    f"round {r + 1} {name:9s}: p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms", flush=True
                )
    med = {n: {p: statistics.median(x[p] for x in rs) for p in ("p50", "p99")} for n, rs in rounds.items()}
    result = {
        "machine": f"{cpu_name()} ({os.cpu_count()} cores)",
        "rate": args.rate,
        "engine": args.engine,
        "seconds_per_round": args.seconds,
        "rounds": rounds,
        "median": med,
        "cost_ms": {p: med["tls+key"][p] - med["plaintext"][p] for p in ("p50", "p99")},
        "ratio": {p: med["tls+key"][p] / med["plaintext"][p] for p in ("p50", "p99")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"machine: {result['machine']}")
    for p in ("p50", "p99"):
        print(
            f"{p}: plaintext {med['plaintext'][p]:.3f} ms, TLS + key {med['tls+key'][p]:.3f} ms "
            f"(+{result['cost_ms'][p]:.3f} ms, {result['ratio'][p]:.2f}x), "
            f"medians of {args.rounds} interleaved rounds"
        )


if __name__ == "__main__":
    main()
