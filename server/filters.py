"""Typed payloads and filters at the API boundary: proto messages to Python values and filter trees,
checked against the fields a collection indexes, with a status that names the field and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from visionsearch.v1 import visionsearch_pb2 as pb

from kernels.payload_index import Clause, Exists, HasIds, Match, Node, Range
from server.errors import Error, fail, quote
from server.limits import MAX_IDS
from server.storage.collection import fits

MAX_DEPTH = 16
MAX_ANY_OF = 1024
MAX_PAYLOAD_INDEXES = 64
TYPE_NAMES = {
    pb.PAYLOAD_TYPE_KEYWORD: "keyword",
    pb.PAYLOAD_TYPE_INTEGER: "integer",
    pb.PAYLOAD_TYPE_FLOAT: "float",
    pb.PAYLOAD_TYPE_BOOL: "bool",
}
TYPE_ENUMS = {v: k for k, v in TYPE_NAMES.items()}
Payload = dict[str, Any]


# ------------------------------------------------------------------ payload values


def value_from_pb(v: pb.PayloadValue, where: str) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "text":
        return v.text
    if kind == "integer":
        return int(v.integer)
    if kind == "number":
        return float(v.number)
    if kind == "boolean":
        return bool(v.boolean)
    if kind == "texts":
        return list(v.texts.values)
    if kind == "integers":
        return [int(x) for x in v.integers.values]
    fail(
        Error.BAD_REQUEST, f"{where} has no value: set one of text, integer, number, boolean, texts, integers"
    )


def value_to_pb(value: Any) -> pb.PayloadValue:
    if isinstance(value, bool):
        return pb.PayloadValue(boolean=value)
    if isinstance(value, int):
        return pb.PayloadValue(integer=value)
    if isinstance(value, float):
        return pb.PayloadValue(number=value)
    if isinstance(value, str):
        return pb.PayloadValue(text=value)
    if value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return pb.PayloadValue(integers=pb.IntList(values=value))
    return pb.PayloadValue(texts=pb.StringList(values=[str(x) for x in value]))


def payload_from_pb(strings: Mapping[str, str], fields: Mapping[str, pb.PayloadValue], where: str) -> Payload:
    """One payload from an item's two maps; a key in both is refused."""
    out: Payload = dict(strings)
    for key, value in fields.items():
        if key in out:
            fail(
                Error.BAD_REQUEST, f"{where}: payload key {quote(key, 40)} is in both `payload` and `fields`"
            )
        out[key] = value_from_pb(value, f"{where}: fields[{quote(key, 40)}]")
    return out


def split_payload(payload: Payload) -> tuple[dict[str, str], dict[str, pb.PayloadValue]]:
    """A stored payload as the two maps of the wire: its strings, and its typed values."""
    strings = {k: v for k, v in payload.items() if isinstance(v, str)}
    typed = {k: value_to_pb(v) for k, v in payload.items() if not isinstance(v, str)}
    return strings, typed


def check_types(payload: Payload, indexes: Mapping[str, str], where: str) -> None:
    """Values of indexed fields must have the field's type (every element of a list)."""
    for key, kind in indexes.items():
        if key in payload and not fits(payload[key], kind):
            fail(
                Error.BAD_REQUEST,
                f"{where}: payload key {quote(key, 40)} is indexed as {kind} but holds "
                f"{quote(payload[key], 40)}: send a {kind} value (in `fields` unless it is a keyword)",
            )


# ------------------------------------------------------------------ filters


def compile_filter(f: pb.Filter, indexes: Mapping[str, str]) -> Node:
    """A filter tree (``kernels.payload_index`` nodes) checked against the collection's indexed fields; each
    storage backend evaluates it (roaring bitmaps locally, an expression in Milvus)."""
    return _clause(f, indexes, depth=1, where="filter")


def _clause(f: pb.Filter, indexes: Mapping[str, str], depth: int, where: str) -> Clause:
    if depth > MAX_DEPTH:
        fail(Error.BAD_REQUEST, f"{where} is nested more than {MAX_DEPTH} levels deep: flatten it")
    if not (f.must or f.should or f.must_not):
        fail(Error.BAD_REQUEST, f"{where} has no conditions: give must, should or must_not (or no filter)")

    def each(conditions: Any, part: str) -> tuple[Node, ...]:
        return tuple(_condition(c, indexes, depth, f"{where}.{part}[{n}]") for n, c in enumerate(conditions))

    return Clause(each(f.must, "must"), each(f.should, "should"), each(f.must_not, "must_not"))


def _field(key: str, indexes: Mapping[str, str], where: str, allowed: tuple[str, ...], what: str) -> str:
    if key not in indexes:
        declared = ", ".join(f"{k} ({t})" for k, t in sorted(indexes.items())) or "none"
        fail(
            Error.BAD_REQUEST,
            f"{where}: payload key {quote(key, 40)} is not indexed (indexed: {declared}); declare it in "
            "CollectionConfig.payload_indexes (UpdateCollection) to filter on it",
        )
    if indexes[key] not in allowed:
        fail(
            Error.BAD_REQUEST,
            f"{where}: {what} on payload key {quote(key, 40)}, which is indexed as {indexes[key]}: "
            f"{what} needs a field of type {' or '.join(allowed)}",
        )
    return key


def _condition(c: pb.Condition, indexes: Mapping[str, str], depth: int, where: str) -> Node:
    kind = c.WhichOneof("condition")
    if kind == "match":
        m = c.match
        value = m.WhichOneof("value")
        if value == "keyword":
            return Match(_field(m.key, indexes, where, ("keyword",), "a keyword match"), (m.keyword,))
        if value == "integer":
            return Match(_field(m.key, indexes, where, ("integer",), "an integer match"), (int(m.integer),))
        if value == "boolean":
            return Match(_field(m.key, indexes, where, ("bool",), "a bool match"), (bool(m.boolean),))
        if value in ("any_keywords", "any_integers"):
            values = list(m.any_keywords.values) if value == "any_keywords" else list(m.any_integers.values)
            if not values:
                fail(Error.BAD_REQUEST, f"{where}: an any-of match with no values")
            if len(values) > MAX_ANY_OF:
                fail(
                    Error.BAD_REQUEST,
                    f"{where}: an any-of match with {len(values):,} values, over the limit of "
                    f"{MAX_ANY_OF:,}: "
                    "split it over several should conditions, or index a coarser field",
                )
            types = ("keyword",) if value == "any_keywords" else ("integer",)
            return Match(_field(m.key, indexes, where, types, "an any-of match"), tuple(values))
        fail(
            Error.BAD_REQUEST, f"{where}: a match needs a value (keyword, integer, boolean or an any-of list)"
        )
    if kind == "range":
        r = c.range
        bounds = {b: getattr(r, b) for b in ("gt", "gte", "lt", "lte") if r.HasField(b)}
        if not bounds:
            fail(Error.BAD_REQUEST, f"{where}: a range needs at least one of gt, gte, lt, lte")
        return Range(_field(r.key, indexes, where, ("integer", "float"), "a range"), **bounds)
    if kind == "exists":
        return Exists(_field(c.exists, indexes, where, ("keyword", "integer", "float", "bool"), "exists"))
    if kind == "has_id":
        ids = list(c.has_id.ids)
        if len(ids) > MAX_IDS:
            fail(Error.BAD_REQUEST, f"{where}: has_id lists {len(ids):,} ids, over the limit of {MAX_IDS:,}")
        return HasIds(tuple(ids))
    if kind == "filter":
        return _clause(c.filter, indexes, depth + 1, f"{where}.filter")
    fail(Error.BAD_REQUEST, f"{where} is empty: set match, range, exists, has_id or filter")


def indexes_from_pb(declared: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if len(declared) > MAX_PAYLOAD_INDEXES:
        fail(Error.BAD_REQUEST, f"{len(declared)} payload indexes, over the limit of {MAX_PAYLOAD_INDEXES}")
    for n, p in enumerate(declared):
        if not 1 <= len(p.key) <= 64:
            fail(Error.BAD_REQUEST, f"payload_indexes[{n}]: key {quote(p.key, 40)} must be 1-64 characters")
        if p.type not in TYPE_NAMES:
            fail(Error.BAD_REQUEST, f"payload_indexes[{n}] ({p.key}): type {p.type} is not a PayloadType")
        if p.key in out:
            fail(Error.BAD_REQUEST, f"payload_indexes: key {quote(p.key, 40)} is declared twice")
        out[p.key] = TYPE_NAMES[p.type]
    return out
