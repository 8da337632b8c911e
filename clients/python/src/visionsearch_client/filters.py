"""Building filters (``visionsearch.v1.Filter``) in Python.

    from visionsearch_client.filters import where, match, between
    shop = where(must=[match("category", "shirt"), between("price", lt=30), match("in_stock", True),
                       match("sizes", "M")])
    client.search("products", id="sku-1", filter=shop, k=10)

A condition on a field that holds a list holds when any element does. Only fields the collection indexes
(``CollectionConfig.payload_indexes``) can be filtered on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from visionsearch.v1 import visionsearch_pb2 as pb

Condition = pb.Condition


def match(key: str, value: str | int | bool | Sequence[str] | Sequence[int]) -> pb.Condition:
    """Equal to ``value``; a list means any of its values."""
    m = pb.FieldMatch(key=key)
    if isinstance(value, bool):
        m.boolean = value
    elif isinstance(value, int):
        m.integer = value
    elif isinstance(value, str):
        m.keyword = value
    else:
        values = list(value)
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            m.any_integers.values.extend(values)  # type: ignore[arg-type]
        else:
            m.any_keywords.values.extend(str(v) for v in values)
    return pb.Condition(match=m)


def between(
    key: str,
    *,
    gt: float | None = None,
    gte: float | None = None,
    lt: float | None = None,
    lte: float | None = None,
) -> pb.Condition:
    r = pb.FieldRange(key=key)
    for name, bound in (("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)):
        if bound is not None:
            setattr(r, name, bound)
    return pb.Condition(range=r)


def exists(key: str) -> pb.Condition:
    return pb.Condition(exists=key)


def has_id(ids: Iterable[str]) -> pb.Condition:
    return pb.Condition(has_id=pb.HasId(ids=list(ids)))


def where(
    must: Iterable[pb.Condition] = (),
    should: Iterable[pb.Condition] = (),
    must_not: Iterable[pb.Condition] = (),
) -> pb.Filter:
    return pb.Filter(must=list(must), should=list(should), must_not=list(must_not))


def nested(f: pb.Filter) -> pb.Condition:
    return pb.Condition(filter=f)
