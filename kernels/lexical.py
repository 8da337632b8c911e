"""BM25 over short texts (payload fields such as names and captions), through bm25s.

bm25s keeps the scores as a sparse matrix and scores a query by summing its tokens' rows. Texts and queries
are tokenised alike: lower case, English stop words out, Snowball-stemmed (PyStemmer), so "lions" finds
"Lions live in Africa.". Lucene's BM25 (k1 = 1.5, b = 0.75).
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenizer


class LexicalIndex:
    def __init__(self, texts: Sequence[str]) -> None:
        self._tokenizer = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")
        ids = self._tokenizer.tokenize(list(texts), return_as="ids", show_progress=False)
        self._n = len(texts)
        self._bm25 = bm25s.BM25()
        if self._n:
            self._bm25.index(ids, show_progress=False)
        # bm25s gives an empty text the token "" (and maps unknown query words onto it): never score it.
        self._empty = self._tokenizer.get_vocab_dict().get("")

    def __len__(self) -> int:
        return self._n

    def scores(self, query: str) -> np.ndarray:
        """(len(texts),) BM25 scores of every text for the query; all zero if no query word occurs."""
        ids = self._tokenizer.tokenize([query], update_vocab=False, return_as="ids", show_progress=False)[0]
        ids = [i for i in ids if i != self._empty]
        if not ids or not self._n:
            return np.zeros(self._n, np.float32)
        return np.asarray(self._bm25.get_scores(ids), np.float32)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the texts with a positive score, best first (at most ``k``), and their scores."""
        s = self.scores(query)
        rows = np.flatnonzero(s > 0)
        rows = rows[np.argsort(-s[rows], kind="stable")][:k]
        return rows, s[rows]
