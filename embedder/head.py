"""The DeViSE-style head: image features -> dense 2000 -> dense to the text space's width.

Trained so that an image lands near the text vector of its label (Frome et al., 2013, "DeViSE: A Deep
Visual-Semantic Embedding Model"): a hinge rank loss against the other labels' vectors, or a cosine loss.
Checkpoints are safetensors (no pickle) with the metadata needed to refuse a mismatched backbone, input
size or text space.
"""

from __future__ import annotations

import json
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
        self.backbone = backbone
        self.text = text
        self.dim = self.meta.dim
        self.input_size = self.meta.input_size

    def project(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.head(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()
