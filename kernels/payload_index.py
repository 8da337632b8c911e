"""Payload indexes and filters: which rows of a collection pass a filter, as a roaring bitmap (pyroaring).

Fields are declared with a type. ``keyword`` and ``bool`` fields map each value to the bitmap of rows that
hold it; ``integer`` and ``float`` fields keep (value, row) pairs in arrays sorted by value, so a range is two
binary searches. Rows written since those arrays were sorted (new rows, changed payloads) are a small delta
checked directly; the arrays are re-sorted once the delta passes a tenth of the rows. A field holding a list
holds each of its elements (a filter matches when any element does, as in Qdrant).

Not thread-safe on its own: the collection serialises writers, and readers evaluate under ``lock``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyroaring import BitMap

FIELD_TYPES = ("keyword", "integer", "float", "bool")
Scalar = str | int | float | bool


# ------------------------------------------------------------------ filters


@dataclass(frozen=True)
class Match:
    key: str
    values: tuple[Scalar, ...]  # any of them


@dataclass(frozen=True)
class Range:
    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def bounds(self) -> tuple[float, bool, float, bool]:
        """(low, low inclusive, high, high inclusive)."""
        low, low_in = -math.inf, True
        if self.gte is not None:
            low, low_in = self.gte, True
        if self.gt is not None and (self.gt > low or (self.gt == low and low_in)):
            low, low_in = self.gt, False
        high, high_in = math.inf, True
        if self.lte is not None:
            high, high_in = self.lte, True
        if self.lt is not None and (self.lt < high or (self.lt == high and high_in)):
            high, high_in = self.lt, False
        return low, low_in, high, high_in


@dataclass(frozen=True)
class Exists:
    key: str


@dataclass(frozen=True)
class HasRows:
    """Rows given directly."""

    rows: tuple[int, ...]


@dataclass(frozen=True)
class HasIds:
    """Items by id: ``evaluate`` resolves them to rows with the caller's ``id_rows``."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class Clause:
    """All of ``must``, at least one of ``should`` (when there are any), none of ``must_not``."""

    must: tuple[Node, ...] = ()
    should: tuple[Node, ...] = ()
    must_not: tuple[Node, ...] = ()


Node = Match | Range | Exists | HasRows | HasIds | Clause
IdRows = Callable[[list[str]], tuple[int, ...]]


# ------------------------------------------------------------------ numeric fields


class _Sorted:
    """(value, row) pairs of one numeric field, sorted by value, plus the rows changed since the sort."""

    def __init__(self) -> None:
        self.values = np.empty(0, np.float64)
        self.rows = np.empty(0, np.uint32)
        self.current: dict[int, tuple[float, ...]] = {}  # row -> its values now (rows holding the field)
        self.changed = BitMap()

    def set(self, row: int, values: tuple[float, ...]) -> None:
        if values:
            self.current[row] = values
        else:
            self.current.pop(row, None)
        self.changed.add(row)

    def _resort(self) -> None:
        pairs = [(v, r) for r, vs in self.current.items() for v in vs]
        pairs.sort()
        self.values = np.fromiter((v for v, _ in pairs), np.float64, len(pairs))
        self.rows = np.fromiter((r for _, r in pairs), np.uint32, len(pairs))
        self.changed = BitMap()

    def range(self, low: float, low_in: bool, high: float, high_in: bool) -> BitMap:
        if len(self.changed) > max(1024, len(self.current) // 10):
            self._resort()
        a = np.searchsorted(self.values, low, side="left" if low_in else "right")
        b = np.searchsorted(self.values, high, side="right" if high_in else "left")
        out = BitMap(self.rows[a:b]) if b > a else BitMap()
        if self.changed:
            out -= self.changed  # their sorted entries may be stale: judge them by their values now
            for row in self.changed:
                for v in self.current.get(row, ()):
                    if (v > low or (low_in and v == low)) and (v < high or (high_in and v == high)):
                        out.add(row)
                        break
        return out


# ------------------------------------------------------------------ the index


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


class PayloadIndex:
    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = dict(fields)
        self.lock = threading.Lock()
        self.live = BitMap()
        self._exists = {f: BitMap() for f in fields}
        self._terms: dict[str, dict[Scalar, BitMap]] = {
            f: {} for f, t in fields.items() if t in ("keyword", "bool", "integer")
        }
        self._numeric = {f: _Sorted() for f, t in fields.items() if t in ("integer", "float")}

    def add(self, row: int, payload: dict[str, Any]) -> None:
        with self.lock:
            self.live.add(row)
            for f in self.fields:
                if f in payload:
                    self._index(f, row, _as_tuple(payload[f]))

    def remove(self, row: int, payload: dict[str, Any]) -> None:
        with self.lock:
            self.live.discard(row)
            for f in self.fields:
                if f in payload:
                    self._unindex(f, row, _as_tuple(payload[f]))

    def replace(self, row: int, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The payload of a live row changed (SetPayload, DeletePayloadKeys)."""
        with self.lock:
            for f in self.fields:
                if f in old:
                    self._unindex(f, row, _as_tuple(old[f]))
                if f in new:
                    self._index(f, row, _as_tuple(new[f]))

    def _index(self, f: str, row: int, values: tuple[Any, ...]) -> None:
        self._exists[f].add(row)
        terms = self._terms.get(f)
        if terms is not None:
            for v in values:
                terms.setdefault(v, BitMap()).add(row)
        numeric = self._numeric.get(f)
        if numeric is not None:
            numeric.set(row, tuple(float(v) for v in values))

    def _unindex(self, f: str, row: int, values: tuple[Any, ...]) -> None:
        self._exists[f].discard(row)
        terms = self._terms.get(f)
        if terms is not None:
            for v in values:
                rows = terms.get(v)
                if rows is not None:
                    rows.discard(row)
                    if not rows:
                        del terms[v]
        numeric = self._numeric.get(f)
        if numeric is not None:
            numeric.set(row, ())

    # ---------------------------------------------------------------- reads

    def evaluate(self, node: Node, id_rows: IdRows | None = None) -> BitMap:
        """The live rows that pass ``node`` (a new bitmap, the caller's to keep)."""
        with self.lock:
            return self._eval(node, id_rows) & self.live

    def count(self) -> int:
        return len(self.live)

    def _eval(self, node: Node, id_rows: IdRows | None = None) -> BitMap:
        if isinstance(node, Match):
            terms = self._terms[node.key]
            return BitMap.union(BitMap(), *(terms.get(v, BitMap()) for v in node.values))
        if isinstance(node, Range):
            return self._numeric[node.key].range(*node.bounds())
        if isinstance(node, Exists):
            return self._exists[node.key].copy()
        if isinstance(node, HasRows):
            return BitMap(node.rows)
        if isinstance(node, HasIds):
            if id_rows is None:
                raise ValueError("a filter on ids needs id_rows")
            return BitMap(id_rows(list(node.ids)))
        out = self.live.copy()
        for n in node.must:
            out &= self._eval(n, id_rows)
        if node.should:
            out &= BitMap.union(BitMap(), *(self._eval(n, id_rows) for n in node.should))
        for n in node.must_not:
            out -= self._eval(n, id_rows)
        return out


def build(fields: dict[str, str], payloads: Iterable[tuple[int, dict[str, Any]]]) -> PayloadIndex:
    index = PayloadIndex(fields)
    for row, payload in payloads:
        index.add(row, payload)
    return index


def rows_of(bitmap: BitMap) -> np.ndarray:
    """A bitmap's rows as an int64 array, in increasing order."""
    return np.frombuffer(bitmap.to_array(), dtype=np.uint32).astype(np.int64)
