"""Embed throughput over gRPC with concurrent callers against the raw torch forward of the same model.

- ``raw``: the model's forward alone (``--backbone``, the server's default EfficientNet-Lite1 unless named)
  on already decoded crops at the backbone's size, in two layouts: one stream with
  torch on every core at batch 1-16 (the plain batched forward), and one single-thread stream per core side by
  side at batch 1-8. A first sweep prints them all and keeps the plain forward's best batch.
- The ceiling the server is held against, the **best raw layout**, is measured again in every round as the
  best of several: one-thread streams per core as threads of this process at batch 1, 2 and 4, and as
  processes (the server's own worker pool, fed directly by one thread per core, no gRPC) at batch 2. Picking
  one layout from a short sweep let noise choose it: two runs kept batch 1 and one batch 8, which then
  measured 20% under the server. Threads of one process share the GIL between forwards, processes do not.
  The best raw layout is the candidate with the highest median over the rounds; the server's ratio to it is
  the target's, and its ratio to each round's own best candidate (stricter) is printed beside it.
- ``grpc``: a server in a child process at its defaults (embedding worker processes, dynamic batcher), and
  ``--callers`` threads in this process, each sending ``Embed`` calls of one encoded photo back to back. The
  server decodes each image in the calling gRPC thread; the batcher stacks concurrent callers' crops and
  hands each batch to an idle worker process.

The server and both raw layouts are measured in interleaved rounds (this machine drifts by 20-30% over
minutes), and the median of the per-round ratios is printed. The photos are Tux Paint stamp photos re-encoded
as JPEGs at the backbone's size (what a client that resizes before sending would send). Results go to
``bench/results/embed_throughput.json``.

    .venv/bin/python bench/embed_throughput.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from _machine import CpuSteal, banner  # bench/ is on sys.path when a bench script runs
from _server import BenchServer  # bench/ is on sys.path when a bench script runs
from PIL import Image
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.backbones import BACKBONES
from embedder.datasets import tuxpaint_photos
from embedder.heap import reuse_freed_memory
from embedder.image import ImageNetwork, decode_pixels
from embedder.workers import ForwardPool

OUT = Path(__file__).resolve().parent / "results" / "embed_throughput.json"


def photos(n: int, size: int) -> list[bytes]:
    out = []
    for path in [p.path for p in tuxpaint_photos()][:n]:
        img = Image.open(path).convert("RGB").resize((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def streams_rate(forward: Callable[[Any], Any], batch: Any, streams: int, seconds: float) -> float:
    """images/s of ``streams`` threads each calling ``forward(batch)`` back to back."""
    forward(batch)  # warm-up: one-off kernel selection for this shape
    done = [0] * streams
    t0 = time.perf_counter()

    def stream(n: int) -> None:
        while time.perf_counter() - t0 < seconds:
            forward(batch)
            done[n] += len(batch)

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


class Raw:
    """The model's forward alone on preprocessed images: ``streams`` threads of ``threads`` torch threads."""

    def __init__(self, images: list[bytes], backbone: str) -> None:
        # The same heap settings as the server's workers and the ingest actors, so that the ratios compare
        # the serving paths and not the allocators.
        reuse_freed_memory()
        spec = BACKBONES[backbone]
        self._weights, self._backbone = str(spec.weights()), backbone
        self._pool: ForwardPool | None = None
        self.network = ImageNetwork(self._weights, backbone)
        # uint8 crops, normalised inside the forward: what the server's worker processes are handed
        self.arrays = np.stack([decode_pixels(b, 40_000_000, spec.default_size) for b in images[:16]])

    def rate_processes(self, batch: int, seconds: float) -> float:
        """One one-thread stream per core, each in a worker process of its own (``ForwardPool``)."""
        cores = os.cpu_count() or 1
        if self._pool is None:
            self._pool = ForwardPool(
                self._weights, processes=cores, threads=1, backbone=self._backbone,
                slab_bytes=self.arrays[:8].nbytes,
            )  # fmt: skip
        return self._streams(self._pool.forward, cores, batch, seconds)

    def best_of_round(self, seconds: float) -> dict[str, float]:
        """images/s of each candidate for the round's ceiling (see the module's docstring)."""
        cores = os.cpu_count() or 1
        out = {f"{cores} threads x 1, batch {b}": self.rate(1, cores, b, seconds) for b in (1, 2, 4)}
        out[f"{cores} processes x 1, batch 2"] = self.rate_processes(2, seconds)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def rate(self, threads: int, streams: int, batch: int, seconds: float) -> float:
        torch.set_num_threads(threads)
        return self._streams(self.network.forward_pixels, streams, batch, seconds)

    def _streams(
        self, forward: Callable[[np.ndarray], np.ndarray], streams: int, batch: int, seconds: float
    ) -> float:
        return streams_rate(forward, self.arrays[:batch], streams, seconds)

    def sweep(self, seconds: float) -> dict[tuple[int, int, int], float]:
        """(threads, streams, batch) -> images/s: one stream on all cores, or a one-thread stream per core."""
        cores = os.cpu_count() or 1
        grid = [(cores, 1, b) for b in (1, 2, 4, 8, 16)] + [(1, cores, b) for b in (1, 2, 4, 8)]
        return {cfg: self.rate(*cfg, seconds) for cfg in grid}


def grpc_rate(
    address: str, images: list[bytes], callers: int, seconds: float
) -> tuple[float, dict[str, int]]:
    stop = threading.Event()
    counts = [0] * callers
    errors: dict[str, int] = {}

    def caller(n: int) -> None:
        with grpc.insecure_channel(address) as ch:
            stub = pb_grpc.EmbedServiceStub(ch)
            i = n
            while not stop.is_set():
                try:
                    stub.Embed(pb.EmbedRequest(image=images[i % len(images)]), timeout=30)
                    counts[n] += 1
                except grpc.RpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
                i += callers

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    time.sleep(3)  # warm-up: first forwards, channel set-up
    start_counts, t0 = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts) - start_counts, time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    return done / elapsed, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10, help="per gRPC measurement")
    ap.add_argument("--raw-seconds", type=float, default=3, help="per raw configuration in the sweep")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--server-flags", default="", help="extra server flags, e.g. '--embed-max-batch 2'")
    ap.add_argument("--backbone", default="efficientnet_lite1", choices=sorted(BACKBONES))
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    images = photos(64, BACKBONES[args.backbone].default_size)
    raw = Raw(images, args.backbone)
    grid = raw.sweep(args.raw_seconds)
    for (threads, streams, batch), r in grid.items():
        print(
            f"raw forward: {streams} stream(s) x {threads} torch thread(s), "
            f"batch {batch:>2}: {r:6.1f} images/s"
        )
    best = max(grid, key=grid.__getitem__)
    cores = os.cpu_count() or 1
    plain = max((c for c in grid if c[1] == 1), key=grid.__getitem__)  # one batched forward on every core
    for name, (threads, streams, batch) in (("fastest in the sweep", best), ("plain batched forward", plain)):
        print(f"{name}: {streams} stream(s) x {threads} thread(s), batch {batch}")
    rounds = []
    with BenchServer("--backbone", args.backbone, *args.server_flags.split()) as server:
        # Interleaved: this machine's throughput drifts by 20-30% over minutes, so each round measures the
        # server and both ceilings back to back (the server idles during the raw parts and vice versa).
        for n in range(args.rounds):
            with CpuSteal() as steal:
                got, errors = grpc_rate(server.address, images, args.callers, args.seconds)
                candidates = raw.best_of_round(args.seconds)
                r_plain = raw.rate(*plain, args.seconds)
            best_name = max(candidates, key=candidates.__getitem__)
            r_best = candidates[best_name]
            rounds.append({"grpc": got, "raw_best": r_best, "raw_best_layout": best_name,
                           "raw_candidates": candidates, "raw_plain": r_plain, "errors": errors,
                           "hypervisor_steal": steal.share})  # fmt: skip
            others = ", ".join(f"{v:.1f}" for k, v in candidates.items() if k != best_name)
            print(
                f"round {n + 1}: Embed over gRPC {got:6.1f} images/s; best raw layout {r_best:6.1f} "
                f"({best_name}; the others {others}) (ratio {got / r_best:.3f}); plain batched forward "
                f"{r_plain:6.1f} (ratio {got / r_plain:.3f}); {steal}"
            )
    raw.close()
    # The best raw layout is the candidate with the highest median over the rounds, held against the server
    # in each round; the best candidate of each round on its own is stricter (the highest of four noisy
    # readings), and is printed beside it.
    layout = max(rounds[0]["raw_candidates"],
                 key=lambda k: statistics.median(r["raw_candidates"][k] for r in rounds))  # fmt: skip
    vs_best = statistics.median(r["grpc"] / r["raw_candidates"][layout] for r in rounds)
    vs_round_best = statistics.median(r["grpc"] / r["raw_best"] for r in rounds)
    vs_plain = statistics.median(r["grpc"] / r["raw_plain"] for r in rounds)
    print(f"median over {args.rounds} rounds: grpc / plain batched forward {vs_plain:.3f}; "
          f"grpc / best raw layout ({layout}) {vs_best:.3f} (target >= 0.90); "
          f"grpc / each round's best {vs_round_best:.3f}")  # fmt: skip
    result = {
        "callers": args.callers, "server_flags": args.server_flags, "cores": cores, "backbone": args.backbone,
        "raw_grid": {f"threads={k[0]} streams={k[1]} batch={k[2]}": v for k, v in grid.items()},
        "sweep_best_layout": best, "plain_layout": plain, "rounds": rounds,
        "best_raw_layout": layout, "median_ratio_vs_plain": vs_plain, "median_ratio_vs_best": vs_best,
        "median_ratio_vs_each_rounds_best": vs_round_best, "loadavg_at_end": os.getloadavg(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
