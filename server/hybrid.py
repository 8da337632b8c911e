"""Hybrid search: BM25 over named payload fields fused with the dense joint-space ranking.

The lexical index of a collection's payload text is built on the first hybrid query for a set of fields and
kept until the collection changes (``Collection.text_version``); a few such indexes are cached, the least
recently used dropped first (an entry holds its collection, so a dropped one lingers only until then).
Fusion is reciprocal rank fusion (Cormack, Clarke and Buettcher, 2009): rank
positions, not scores, are added, so BM25's unbounded scores and cosines need no common scale.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyroaring import BitMap

from kernels.lexical import LexicalIndex
from server.errors import Error, fail
from server.storage import Collection
from server.storage.collection import Hit

DEFAULT_RRF_K = 60
MAX_RRF_K = 10_000
MAX_LEXICAL_WEIGHT = 100.0
MAX_FIELDS = 16
MAX_FIELD_CHARS = 64
CACHED_INDEXES = 8


@dataclass(frozen=True)
class HybridOptions:
    fields: tuple[str, ...]
    rrf_k: int = DEFAULT_RRF_K
    lexical_weight: float = 1.0


def check_options(fields: Sequence[str], rrf_k: int, lexical_weight: float) -> HybridOptions:
    """Validated options of a request (INVALID_ARGUMENT naming the field otherwise)."""
    if not fields:
        fail(Error.BAD_REQUEST, "hybrid.text_fields is empty: name the payload fields to score, e.g. label")
    if len(fields) > MAX_FIELDS:
        fail(Error.BAD_REQUEST, f"hybrid.text_fields has {len(fields)} names; at most {MAX_FIELDS}")
    for f in fields:
        if not f.strip() or len(f) > MAX_FIELD_CHARS:
            fail(
                Error.BAD_REQUEST,
                f"hybrid.text_fields: name {f[:MAX_FIELD_CHARS]!r} must be 1-{MAX_FIELD_CHARS} characters",
            )
    if not 0 <= rrf_k <= MAX_RRF_K:
        fail(
            Error.BAD_REQUEST, f"hybrid.rrf_k must be in 1..{MAX_RRF_K} (0 for {DEFAULT_RRF_K}), got {rrf_k}"
        )
    if math.isnan(lexical_weight) or not 0 <= lexical_weight <= MAX_LEXICAL_WEIGHT:
        fail(
            Error.BAD_REQUEST,
            f"hybrid.lexical_weight must be in 0..{MAX_LEXICAL_WEIGHT:g} (0 for 1), got {lexical_weight}",
        )
    return HybridOptions(tuple(dict.fromkeys(fields)), rrf_k or DEFAULT_RRF_K, lexical_weight or 1.0)


def depth(k: int) -> int:
    """How many items of each ranking take part in the fusion."""
    return max(100, 4 * k)


@dataclass
class _Entry:
    collection: Collection  # held, so that its id() is not reused while the entry lives
    version: int
    index: LexicalIndex
    ids: list[str]
    payloads: list[dict[str, Any]]
    position: dict[str, int]


class LexicalIndexes:
    def __init__(self, capacity: int = CACHED_INDEXES) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, tuple[str, ...]], _Entry] = OrderedDict()

    def get(self, c: Collection, fields: tuple[str, ...]) -> _Entry:
        key = (id(c), fields)
        version = c.text_version()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.collection is c and entry.version == version:
                self._entries.move_to_end(key)
                return entry
        # Built outside the lock: another collection's hybrid queries need not wait for this one. Collections
        # are keyed by the object, so a dropped and re-created one never meets its predecessor's index.
        version, ids, payloads = c.live_items()
        # Payload values may be typed (numbers, lists): their text is what is scored.
        index = LexicalIndex([" ".join(str(p.get(f, "")) for f in fields) for p in payloads])
        entry = _Entry(c, version, index, ids, payloads, {i: n for n, i in enumerate(ids)})
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return entry


def fuse(
    dense: Sequence[Hit],
    entry: _Entry,
    text: str,
    options: HybridOptions,
    k: int,
    collection: Collection,
    allowed: BitMap | None = None,
) -> list[Hit]:
    """The best ``k`` items by reciprocal rank fusion of the dense hits and the BM25 ranking of ``text``.
    With ``allowed`` (a request's filter), lexical hits outside it are left out as the dense ones were."""
    rows, _ = entry.index.search(text, depth(k))
    fused: dict[str, float] = {}
    items: dict[str, Hit] = {}
    for rank, h in enumerate(dense, 1):
        fused[h.id] = fused.get(h.id, 0.0) + 1.0 / (options.rrf_k + rank)
        items[h.id] = h
    lexical = [entry.ids[r] for r in rows]
    if allowed is not None:
        now = dict(zip(lexical, collection.rows_for_ids(lexical), strict=False))
        lexical = [i for i in lexical if i in now and now[i] in allowed]
    for rank, item_id in enumerate(lexical, 1):
        fused[item_id] = fused.get(item_id, 0.0) + options.lexical_weight / (options.rrf_k + rank)
        if item_id not in items:
            items[item_id] = Hit(item_id, 0.0, entry.payloads[entry.position[item_id]], -1)
    best = sorted(fused, key=lambda i: -fused[i])[:k]
    return [Hit(i, fused[i], items[i].payload, items[i].row) for i in best]
