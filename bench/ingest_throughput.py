"""Throughput of the Ray Data ingest pipeline with 1 and 2 embedding actors against the best raw torch layout.

- ``ray``: ``ingest.pipeline.embedded_batches`` (Ray Data decode tasks, then an actor pool of one-thread
  forwards) over ``--photos`` encoded images, on a local Ray instance with every core, the vectors dropped in
  the driver (no sink: this measures the pipeline). The rate is the steady state, between the deliveries of
  the first and the last quarter of the images (actor start-up, seconds of importing torch, is printed apart).
- ``raw``: the model's forward alone on already preprocessed images, as bench/embed_throughput.py measures
  it: one stream with torch on every core, or one single-thread stream per core side by side, at several
  batch sizes; the best layout is kept and measured again in every round, and so is one single-thread
  stream alone at the same batch: how much a second core adds to raw torch itself on this machine (vCPUs
  that share a physical core, caches or memory bandwidth add less than 2x), the ceiling of any 2-actor
  scaling.

The pipeline with 1 actor, with 2 actors, and the best raw layout are measured in interleaved rounds (this
machine drifts by 20-30% over minutes) and the median of the per-round ratios is printed. Targets: 2 actors
>= 1.7x one actor, and >= 0.90 of the best raw layout. The photos are Tux Paint stamp photos re-encoded as
224 px JPEGs, as in bench/embed_throughput.py. Results go to ``bench/results/ingest_throughput.json``.

    .venv/bin/python bench/ingest_throughput.py               # the timed run (a quiet machine)
    .venv/bin/python bench/ingest_throughput.py --photos 64 --rounds 1 --raw-seconds 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _machine import CpuSteal, banner  # bench/ is on sys.path when a bench script runs
from embed_throughput import Raw, photos  # bench/ is on sys.path when a bench script runs

from embedder.backbones import BACKBONES
from ingest.pipeline import FORWARD_BATCH, embedded_batches, start_ray
from ingest.sources import Photo

OUT = Path(__file__).resolve().parent / "results" / "ingest_throughput.json"
MAX_PIXELS = 40_000_000


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_photos(folder: Path, n: int, size: int) -> list[Photo]:
    encoded = photos(64, size)
    out = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(encoded[i % len(encoded)])
        out.append(Photo(path.name, str(path), {"source": str(path)}))
    return out


def pipeline_rate(
    todo: list[Photo], actors: int, batch_size: int, forward_batch: int, backbone: str
) -> tuple[float, float]:
    """(steady images/s, seconds until the first batch). The steady rate is taken between the deliveries of
    the first and the last quarter of the images: before it, actors start and batches in flight pile up
    (up to a few per actor, delivered in a burst); after it, the pool drains with idle actors."""
    t0 = time.perf_counter()
    marks: list[tuple[float, int]] = []  # (time, images delivered so far)
    delivered, failed = 0, 0
    batches = embedded_batches(
        todo,
        size=BACKBONES[backbone].default_size,
        backbone=backbone,
        max_pixels=MAX_PIXELS,
        actors=actors,
        batch_size=batch_size,
        forward_batch=forward_batch,
    )
    for batch in batches:
        failed += int((batch["kind"] != "").sum())
        delivered += len(batch["id"])
        marks.append((time.perf_counter(), delivered))
    if failed:
        raise RuntimeError(f"{failed} photos failed to embed")
    lo = next(m for m in marks if m[1] >= delivered / 4)
    hi = next(m for m in marks if m[1] >= delivered * 3 / 4)
    rate = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else 0.0
    return rate, marks[0][0] - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=3000, help="images per pipeline run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16, help="the pipeline's Ray batch")
    ap.add_argument("--forward-batch", type=int, default=FORWARD_BATCH, help="images per forward in an actor")
    ap.add_argument("--raw-seconds", type=float, default=3, help="per raw configuration in the sweep")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--backbone", default="mobilenet_v2", choices=sorted(BACKBONES), help="the pipeline's default"
    )
    args = ap.parse_args()
    print(banner(), flush=True)  # the machine, and its sgemm bound, with every result
    cores = os.cpu_count() or 1
    print(f"machine: {cpu_model()}, {cores} cores, load average {os.getloadavg()[0]:.2f} at start")

    size = BACKBONES[args.backbone].default_size
    raw = Raw(photos(64, size), args.backbone)
    grid = {
        cfg: raw.rate(*cfg, args.raw_seconds)
        for cfg in [(1, cores, b) for b in (1, 2, 4, 8, 16)] + [(cores, 1, b) for b in (4, 8, 16)]
    }
    for (threads, streams, batch), r in grid.items():
        print(f"raw forward: {streams} stream(s) x {threads} thread(s), batch {batch:>2}: {r:6.1f} images/s")
    best = max(grid, key=grid.__getitem__)
    print(f"best raw layout: {best[1]} stream(s) x {best[0]} thread(s), batch {best[2]}")

    start_ray(None, cores)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        todo = write_photos(Path(tmp), args.photos, size)
        for n in range(args.rounds):
            with CpuSteal() as steal:
                one, start_one = pipeline_rate(todo, 1, args.batch_size, args.forward_batch, args.backbone)
                two, start_two = pipeline_rate(
                    todo, min(2, cores), args.batch_size, args.forward_batch, args.backbone
                )
                # The raw forward's time matches one pipeline run's, so both see the same drift.
                r_best = raw.rate(*best, max(args.raw_seconds, args.photos / max(two, 1.0)))
                r_one = raw.rate(1, 1, best[2], max(args.raw_seconds, args.photos / max(two, 1.0) / 2))
            rounds.append({"ray_1_actor": one, "ray_2_actors": two, "raw_best": r_best,
                           "raw_one_stream": r_one, "startup_s_1": start_one, "startup_s_2": start_two,
                           "hypervisor_steal": steal.share})  # fmt: skip
            print(
                f"round {n + 1}: ray 1 actor {one:6.1f} images/s, 2 actors {two:6.1f} "
                f"(x{two / one:.2f}); best raw layout {r_best:6.1f} (2 actors / raw {two / r_best:.3f}); "
                f"raw one stream {r_one:6.1f} (raw best / one stream x{r_best / r_one:.2f}); "
                f"actor start-up {start_one:.1f} s / {start_two:.1f} s; {steal}"
            )
    scaling = statistics.median(r["ray_2_actors"] / r["ray_1_actor"] for r in rounds)
    vs_raw = statistics.median(r["ray_2_actors"] / r["raw_best"] for r in rounds)
    raw_scaling = statistics.median(r["raw_best"] / r["raw_one_stream"] for r in rounds)
    print(f"median over {args.rounds} round(s): 2 actors / 1 actor {scaling:.2f} (target >= 1.7; raw torch's "
          f"own best / one stream {raw_scaling:.2f}); 2 actors / best raw layout {vs_raw:.3f} "
          "(target >= 0.90)")  # fmt: skip
    result = {
        "cpu": cpu_model(), "cores": cores, "photos": args.photos, "batch_size": args.batch_size,
        "forward_batch": args.forward_batch, "backbone": args.backbone,
        "raw_grid": {f"threads={k[0]} streams={k[1]} batch={k[2]}": v for k, v in grid.items()},
        "best_layout": best, "rounds": rounds, "median_2_over_1": scaling, "median_2_over_raw": vs_raw,
        "median_raw_best_over_one_stream": raw_scaling,
        "loadavg_at_end": os.getloadavg(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
