"""The capacity model, measured on this machine: what a million photos cost, and how quantized HNSW graphs
trade memory against recall.

1. Embedding: images per core-second of the server's forward (``--backbone``, the server's default
   EfficientNet-Lite1 at 240 px, one torch thread, the best batch of 1, 2, 4 and 8), on Tux Paint photos
   decoded beforehand.
2. For each dimension in ``--dims`` (300: a joint space; 1280: the backbones' image features), ``--n``
   vectors drawn around 2,000 centres (bench/scale.py's mixture) and 1,000 fresh queries, with exact top-10
   ground truth:
   - exact: bytes per vector (the float32 storage), p50/p99 of one query;
   - HNSW (usearch, M=16, ef_construction=128) for each graph dtype f32, f16 and i8: build seconds, bytes per
     vector of the graph (usearch's own count, links included), recall@10 and p50/p99 of one query at the
     smallest ef that reaches recall 0.95 (candidates of quantized graphs re-scored in float32, as the server
     does).
Results: ``bench/results/capacity.json``; README "Scaling" turns them into the capacity table.

    .venv/bin/python bench/capacity.py                # about two hours on two cores at 1M x (300, 1280)
    .venv/bin/python bench/capacity.py --n 100000     # a quick look
    .venv/bin/python bench/capacity.py --dims '' --out bench/results/capacity_embedding.json  # embedding only
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from _machine import banner  # bench/ is on sys.path when a bench script runs
from filtered import cpu  # bench/ is on sys.path when a bench script runs
from scale import mixture, recall

from kernels import topk_inner_product
from kernels.hnsw import HNSWIndex, HNSWParams
from kernels.rescore import rescore
from kernels.tuning import build_hnsw

OUT = Path(__file__).resolve().parent / "results" / "capacity.json"
EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def embedding_rate(seconds: float, backbone: str) -> dict[str, Any]:
    import torch

    from embedder.backbones import BACKBONES
    from embedder.datasets import tuxpaint_photos
    from embedder.heap import reuse_freed_memory
    from embedder.image import ImageNetwork, decode_pixels

    reuse_freed_memory()  # as in the server's workers and the ingest actors
    torch.set_num_threads(1)
    spec = BACKBONES[backbone]
    net = ImageNetwork(str(spec.weights()), backbone)
    photos = tuxpaint_photos()[:32]
    crops = np.stack([decode_pixels(p.path.read_bytes(), 40_000_000, spec.default_size) for p in photos])
    best: dict[str, Any] = {"backbone": backbone, "size": spec.default_size}
    for batch in (1, 2, 4, 8):
        net.forward_pixels(crops[:batch])  # warm
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            net.forward_pixels(crops[done % 24 : done % 24 + batch])
            done += batch
        rate = done / (time.perf_counter() - t0)
        print(f"embedding: batch {batch}: {rate:.1f} images per core-second", flush=True)
        if rate > best.get("images_per_core_second", 0):
            best |= {"images_per_core_second": rate, "batch": batch}
    return best


def timed(search: Any, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    search(queries[:1])
    times, rows = [], []
    for q in queries:
        t0 = time.perf_counter()
        rows.append(search(q[None, :]))
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1000, np.concatenate(rows)


def ms(times: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def one_dim(n: int, dim: int, target: float) -> dict[str, Any]:
    centres = np.random.default_rng(0).standard_normal((2000, dim)).astype(np.float32)
    db = mixture(n, dim, centres, seed=1)
    queries = mixture(1000, dim, centres, seed=2)
    _, truth = topk_inner_product(db, queries, 10)
    out: dict[str, Any] = {"n": n, "dim": dim}
    times, _ = timed(lambda q: topk_inner_product(db, q, 10)[1], queries[:200])
    out["exact"] = {"bytes_per_vector": dim * 4, **ms(times)}
    print(f"{dim}-d exact: {dim * 4} B/vector, p50 {out['exact']['p50_ms']:.2f} ms", flush=True)
    rows = np.arange(n)
    for dtype in ("f32", "f16", "i8"):
        t0 = time.perf_counter()
        hnsw = build_hnsw(db, rows, HNSWParams(dtype=dtype))
        build_s = time.perf_counter() - t0
        graph_bytes = hnsw._index.memory_usage
        result: dict[str, Any] = {"build_s": build_s, "graph_bytes_per_vector": graph_bytes / n}

        def search(q: np.ndarray, ef: int, hnsw: HNSWIndex = hnsw, dtype: str = dtype) -> np.ndarray:
            if dtype == "f32":
                return hnsw.search(q, 10, ef)[1]
            _, cand = hnsw.search(q, 20, ef)
            return rescore(db, q, cand, 10)[1]

        for ef in EFS:
            found = np.concatenate([search(q[None, :], ef) for q in queries[:300]])
            if recall(found, truth[:300]) >= target or ef == EFS[-1]:
                break
        times, found = timed(lambda q, ef=ef: search(q, ef), queries)  # type: ignore[misc]
        result |= {"ef": ef, "recall": recall(found, truth), **ms(times)}
        out[f"hnsw_{dtype}"] = result
        print(
            f"{dim}-d HNSW {dtype}: build {build_s:.0f} s, graph {graph_bytes / n:.0f} B/vector, ef {ef}, "
            f"recall@10 {result['recall']:.3f}, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms",
            flush=True,
        )
        del hnsw
        gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", default="300,1280", help="'' measures the embedding alone")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--embed-seconds", type=float, default=10.0)
    ap.add_argument("--backbone", default="efficientnet_lite1", help="the server's default backbone")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    result: dict[str, Any] = {"machine": f"{cpu()} ({os.cpu_count()} cores)", "n": args.n}
    # In a process of its own: the forwards' heap settings (embedder/heap.py) stay out of the index builds.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        result["embedding"] = child.submit(embedding_rate, args.embed_seconds, args.backbone).result()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for dim in (int(d) for d in args.dims.split(",") if d):
        result[f"d{dim}"] = one_dim(args.n, dim, args.target)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after each size: a long run keeps its part
    print(f"machine: {result['machine']}")


if __name__ == "__main__":
    main()
