"""all-MiniLM-L6-v2 run directly on torch: the BERT encoder, mean pooling over real tokens, unit length.

sentence-transformers computes exactly this, but importing it brings transformers, torch._dynamo, Triton,
scikit-learn, SciPy, pandas and Arrow into the server (938 against 514 MB of RSS for torch, ``tokenizers``
and ``safetensors``), for one six-layer encoder. ``tests/test_minilm.py`` holds this module equal to
sentence-transformers on the same texts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer


class MiniLMEncoder:
    def __init__(self, model_dir: Path, *, max_tokens: int | None = None) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir} is not the BERT encoder this module runs")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.dim = int(config["hidden_size"])
        if max_tokens is None:  # sentence-transformers' own limit for this model (256), not the tokenizer's
            max_tokens = int(
                json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
            )
        self._w = load_file(str(model_dir / "model.safetensors"))
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest of the batch

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self._w[f"{name}.weight"], self._w[f"{name}.bias"], self.eps)

    def _dense(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w[f"{name}.weight"], self._w[f"{name}.bias"])

    def _forward(self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w, (batch, length) = self._w, ids.shape
        x = w["embeddings.word_embeddings.weight"][ids]
        x = (
            x
            + w["embeddings.position_embeddings.weight"][:length]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        keep = mask[:, None, None, :].bool()  # padding is never attended to
        head_dim = self.dim // self.heads
        for n in range(self.layers):
            p = f"encoder.layer.{n}"
            q, k, v = (
                self._dense(x, f"{p}.attention.self.{part}")
                .view(batch, length, self.heads, head_dim)
                .transpose(1, 2)
                for part in ("query", "key", "value")
            )
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1 / math.sqrt(head_dim))
            att = att.transpose(1, 2).reshape(batch, length, self.dim)
            x = self._norm(
                x + self._dense(att, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm"
            )
            hidden = F.gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._norm(x + self._dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        weights = mask[:, :, None].to(x.dtype)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors. Texts are batched by length, as sentence-transformers does,
        so that a long one does not pad the rest."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                encodings = self._tokenizer.encode_batch([texts[i] for i in chunk])
                ids = torch.tensor([e.ids for e in encodings])
                types = torch.tensor([e.type_ids for e in encodings])
                mask = torch.tensor([e.attention_mask for e in encodings])
                out[chunk] = self._forward(ids, types, mask).numpy()
        return out
