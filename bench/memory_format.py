"""Channels-last (NHWC) image networks against the same networks in torch's default NCHW layout.

``embedder.backbones`` stores every image network's weights channels-last and ``ImageNetwork`` hands it
channels-last crops. This measures why: for each backbone, the network as built (channels-last) and a copy
converted back to NCHW, fed NCHW tensors, each as one one-thread stream and as one one-thread stream per
core (threads of this process, as bench/embed_throughput.py's raw layouts), at batches 1, 2 and 4, on Tux
Paint photos decoded beforehand. The two layouts alternate within every round (this machine drifts by
20-30% over minutes) and the median of the per-round ratios is printed. The two layouts' features are
compared too. Results: ``bench/results/memory_format.json``.

    .venv/bin/python bench/memory_format.py
    .venv/bin/python bench/memory_format.py --rounds 1 --seconds 0.5 --backbones mobilenet_v2   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import CpuSteal, banner  # bench/ is on sys.path when a bench script runs
from embed_throughput import streams_rate  # bench/ is on sys.path when a bench script runs

from embedder.backbones import BACKBONES
from embedder.datasets import tuxpaint_photos
from embedder.heap import reuse_freed_memory
from embedder.image import ImageNetwork, decode_pixels

OUT = Path(__file__).resolve().parent / "results" / "memory_format.json"


def inferring(network: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``network``'s forward without autograd, in whichever thread calls it (inference mode is per thread)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return network(x)

    return forward


def one_backbone(name: str, rounds: int, seconds: float) -> dict[str, Any]:
    spec = BACKBONES[name]
    network = ImageNetwork(str(spec.weights()), name)
    nhwc = network.features
    nchw = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format)
    crops = np.stack(
        [decode_pixels(p.path.read_bytes(), 40_000_000, spec.default_size) for p in tuxpaint_photos()[:4]]
    )
    # The crops normalised as ImageNetwork.forward_pixels does, then laid out for each network.
    with torch.inference_mode():
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).to(torch.float32).div(255.0)
        x = x.sub(network._mean).div(network._std)
        x_nchw = x.contiguous()
        x_nhwc = x.contiguous(memory_format=torch.channels_last)
        a, b = nhwc(x_nhwc), nchw(x_nchw)
        max_diff = float((a - b).abs().max() / b.abs().max())
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"size": spec.default_size, "features_max_diff_relative": max_diff, "cases": {}}
    print(
        f"{name}: channels-last features within {max_diff:.1e} of the NCHW network's (relative)", flush=True
    )
    for streams in (1, cores):
        for batch in (1, 2, 4):
            ratios, last, first = [], [], []
            for r in range(rounds):
                with CpuSteal() as steal:
                    # Alternate which layout goes first, so neither always gets the warmer machine.
                    order = [("nhwc", nhwc, x_nhwc), ("nchw", nchw, x_nchw)][:: 1 if r % 2 == 0 else -1]
                    got = {
                        k: streams_rate(inferring(net), xx[:batch], streams, seconds) for k, net, xx in order
                    }
                ratios.append(got["nhwc"] / got["nchw"])
                last.append(got["nhwc"])
                first.append(got["nchw"])
                case = f"  {streams} stream(s), batch {batch}"
                print(f"{case}, round {r + 1}: channels-last {got['nhwc']:6.1f} images/s, "
                      f"NCHW {got['nchw']:6.1f} (x{ratios[-1]:.2f}); {steal}", flush=True)  # fmt: skip
            med = statistics.median(ratios)
            print(f"  {streams} stream(s), batch {batch}: median x{med:.2f} (rounds "
                  f"{min(ratios):.2f}-{max(ratios):.2f})", flush=True)  # fmt: skip
            out["cases"][f"{streams} streams, batch {batch}"] = {
                "channels_last": last, "nchw": first, "ratios": ratios, "median_ratio": med
            }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="efficientnet_lite1,mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per layout, case and round")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    print(banner(), flush=True)
    reuse_freed_memory()  # as in the server's workers, the ingest actors and the other raw baselines
    torch.set_num_threads(1)
    result = {"machine": banner(), "backbones": {}}
    for name in args.backbones.split(","):
        result["backbones"][name] = one_backbone(name, args.rounds, args.seconds)  # type: ignore[index]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
