"""Filter trees (``kernels.payload_index`` nodes) as Milvus boolean expressions.

Milvus evaluates a comparison on a missing JSON key, or ``json_contains_any`` on a value that is not a list,
as unknown, and ``not (unknown)`` excludes an item where the local index would include it. So each row also
carries what the expressions need, always present and always of one shape (``index_fields``): ``terms`` maps
every indexed keyword, integer and bool field to the list of its values (empty when the item has none), and
``nums`` maps indexed numeric fields holding a single number to it; every comparison on ``nums`` is guarded
by ``exists``. A condition on a list holds when any element does, as locally, with one documented
difference: Milvus has no "any element in range", so a range holds for single numbers only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kernels.payload_index import Clause, Exists, HasIds, HasRows, Match, Node, Range

TRUE = 'id != ""'  # every item: Milvus expressions have no literal true


def index_fields(
    payload: Mapping[str, Any], indexed: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``terms`` and ``nums`` JSON of a row, from its payload and the collection's indexed fields."""
    terms: dict[str, Any] = {}
    nums: dict[str, Any] = {}
    for key, kind in indexed.items():
        value = payload.get(key)
        values = value if isinstance(value, list) else ([] if value is None else [value])
        if kind in ("keyword", "integer", "bool"):
            terms[key] = values
        if kind in ("integer", "float") and isinstance(value, int | float) and not isinstance(value, bool):
            nums[key] = value
    return terms, nums


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def expression(node: Node) -> str:
    if isinstance(node, Match):
        values = "[" + ", ".join(_literal(v) for v in node.values) + "]"
        return f"json_contains_any(terms[{json.dumps(node.key)}], {values})"
    if isinstance(node, Range):
        path = f"nums[{json.dumps(node.key)}]"
        parts = [f"exists {path}"]
        for op, bound in ((">", node.gt), (">=", node.gte), ("<", node.lt), ("<=", node.lte)):
            if bound is not None:
                parts.append(f"{path} {op} {float(bound)!r}")
        return "(" + " and ".join(parts) + ")"
    if isinstance(node, Exists):
        return f"exists payload[{json.dumps(node.key)}]"
    if isinstance(node, HasIds):
        return f"id in {json.dumps(list(node.ids))}" if node.ids else f"not ({TRUE})"
    if isinstance(node, HasRows):
        raise ValueError("row numbers have no meaning in Milvus")
    return _clause(node)


def _clause(node: Clause) -> str:
    parts = [f"({expression(n)})" for n in node.must]
    if node.should:
        parts.append("(" + " or ".join(f"({expression(n)})" for n in node.should) + ")")
    parts += [f"not ({expression(n)})" for n in node.must_not]
    return " and ".join(parts) if parts else TRUE
