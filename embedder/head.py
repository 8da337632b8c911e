"""The DeViSE-style head: image features -> dense 2000 -> dense to the text space's width.

Trained so that an image lands near the text vector of its label (Frome et al., 2013, "DeViSE: A Deep
Visual-Semantic Embedding Model"): a hinge rank loss against the other labels' vectors, or a cosine loss.
Checkpoints are safetensors (no pickle) with the metadata needed to refuse a mismatched backbone, input
size or text space.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from embedder.text import TextSpace

FORMAT = "visionsearch.devise-head.v1"


class HeadMismatch(ValueError):
    """A checkpoint that does not fit the backbone, input size or text space it is used with."""


@dataclass(frozen=True)
class HeadMeta:
    backbone: str
    input_size: int
    feature_dim: int
    text: str
    dim: int
    hidden: int
    loss: str
    labels: list[str]
    held_out: list[str] = field(default_factory=list)
    dataset: str = ""


class DeviseHead(torch.nn.Module):
    def __init__(self, feature_dim: int, hidden: int, dim: int) -> None:
        super().__init__()
        # Standardisation of the (post-ReLU, unnormalised) CNN features, fitted on the training set.
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(feature_dim, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return torch.nn.functional.normalize(self.net((x - mean) / std), dim=1)


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


def save_head(path: Path, head: DeviseHead, meta: HeadMeta) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(asdict(meta))})
    tmp.replace(path)


def read_meta(path: Path) -> HeadMeta:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        raise HeadMismatch(f"{path} is not a visionsearch head checkpoint (format {found!r})")
    return HeadMeta(**json.loads(metadata["meta"]))


def load_head(path: Path) -> tuple[DeviseHead, HeadMeta]:
    meta = read_meta(path)
    head = DeviseHead(meta.feature_dim, meta.hidden, meta.dim)
    state = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            state[key] = f.get_tensor(key)
    head.load_state_dict(state)
    head.eval()
    return head, meta


class HeadSpace:
    """A trained head served as a joint space (the JointSpace protocol of embedder.joint)."""

    def __init__(self, name: str, path: Path, text: TextSpace, backbone: str, feature_dim: int) -> None:
        self.head, self.meta = load_head(path)
        if self.meta.backbone != backbone or self.meta.feature_dim != feature_dim:
            raise HeadMismatch(
                f"head {name!r} was trained on {self.meta.backbone} features ({self.meta.feature_dim}-d), "
                f"not {backbone} ({feature_dim}-d)"
            )
        if self.meta.text != text.name or self.meta.dim != text.dim:
            raise HeadMismatch(
                f"head {name!r} maps into the {self.meta.text} text space ({self.meta.dim}-d), "
                f"not {text.name} ({text.dim}-d)"
            )
        self.name = f"head:{name}"
        self.text = text
        self.dim = self.meta.dim
        self.input_size = self.meta.input_size

    def project(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.head(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()
