"""Training a DeViSE head (Frome et al., 2013): image features -> the text vector of their label.

The head itself (``embedder.head.DeviseHead``) is served; how it is fitted lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from embedder.head import DeviseHead


@dataclass
class TrainConfig:
    loss: str = "hinge"  # or "cosine"
    margin: float = 0.1
    epochs: int = 8
    batch: int = 256
    lr: float = 1e-3
    hidden: int = 2000
    seed: int = 0


def train_head(
    features: np.ndarray,
    labels: np.ndarray,
    label_vectors: np.ndarray,
    config: TrainConfig,
    progress: Callable[[int, float], None] | None = None,
) -> DeviseHead:
    """Fit a head so that ``head(features[i])`` is near ``label_vectors[labels[i]]`` (unit rows)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    targets = torch.from_numpy(np.ascontiguousarray(label_vectors, dtype=np.float32))
    head = DeviseHead(x.shape[1], config.hidden, targets.shape[1])
    head.get_buffer("mean").copy_(x.mean(0))
    head.get_buffer("std").copy_(x.std(0) + 1e-3)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    steps = config.epochs * -(-len(x) // config.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    head.train()
    for _ in range(config.epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        for start in range(0, len(x), config.batch):
            idx = order[start : start + config.batch]
            out = head(x[idx])
            scores = out @ targets.T  # (b, classes): similarity to every label's vector
            true = scores.gather(1, y[idx, None])
            if config.loss == "hinge":
                # DeViSE: every wrong label must score at least `margin` below the right one.
                violation = torch.clamp(config.margin - true + scores, min=0)
                violation = violation.scatter(1, y[idx, None], 0.0)
                loss = violation.sum(1).mean()
            else:
                loss = (1 - true).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if progress:
                progress(len(idx), float(loss.detach()))
    head.eval()
    return head
