"""Embedding cost of each image backbone, as a ratio to MobileNetV2 measured in the same run.

Each backbone embeds the same Tux Paint photos (uint8 crops at its own input size, decoded beforehand) with
one torch thread at batch 8, the server's worker layout; the backbones take turns in interleaved rounds (this
machine drifts by 20-30% over minutes) and the median images/s of the rounds, and the median of the per-round
ratios to MobileNetV2, are printed. Results go to ``bench/results/backbones.json``.

    .venv/bin/python bench/backbones.py              # the full run (the lead's timed run)
    .venv/bin/python bench/backbones.py --rounds 1 --images 16   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from embedder.backbones import BACKBONES
from embedder.datasets import tuxpaint_photos
from embedder.heap import reuse_freed_memory
from embedder.image import ImageEmbedder, decode_pixels

OUT = Path(__file__).resolve().parent / "results" / "backbones.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    reuse_freed_memory()  # as in the server's workers and the ingest actors
    torch.set_num_threads(1)
    files = [ph.path.read_bytes() for ph in tuxpaint_photos()[: args.images]]
    embedders, crops = {}, {}
    for name, spec in BACKBONES.items():
        embedders[name] = ImageEmbedder(threads=1, max_pixels=40_000_000, backbone=name)
        crops[name] = np.stack([decode_pixels(f, 40_000_000, spec.default_size) for f in files])
        embedders[name].network.forward_pixels(crops[name][: args.batch])  # warm-up
    rates: dict[str, list[float]] = {n: [] for n in BACKBONES}
    for r in range(args.rounds):
        for name in BACKBONES:
            net, x = embedders[name].network, crops[name]
            t0 = time.perf_counter()
            for s in range(0, len(x), args.batch):
                net.forward_pixels(x[s : s + args.batch])
            rates[name].append(len(x) / (time.perf_counter() - t0))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f}/s" for n in BACKBONES), flush=True)
    base = "mobilenet_v2"
    report = {
        "note": "one torch thread, batch of uint8 crops at each backbone's input size, interleaved rounds",
        "rounds": args.rounds, "images": len(files), "batch": args.batch,
        "backbones": {
            n: {
                "input_size": BACKBONES[n].default_size,
                "images_per_s_median": statistics.median(rates[n]),
                "ratio_to_mobilenet_v2_median": statistics.median(
                    a / b for a, b in zip(rates[n], rates[base], strict=True)
                ),
            }
            for n in BACKBONES
        },
    }  # fmt: skip
    for n, v in report["backbones"].items():
        print(f"{n:20s} {v['input_size']} px  {v['images_per_s_median']:.1f} images/s  "
              f"{v['ratio_to_mobilenet_v2_median']:.2f}x mobilenet_v2")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
