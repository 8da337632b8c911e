"""Filter trees (``kernels.payload_index`` nodes) as Milvus boolean expressions over the payload JSON.

A condition on a payload field that holds a list holds when any element satisfies it, as locally: a match is
``payload["k"] == v or json_contains(payload["k"], v)``. One difference remains, and is documented: Milvus
has no "any element in range" for JSON lists, so a range holds for scalar values only.
"""

from __future__ import annotations

import json

from kernels.payload_index import Clause, Exists, HasIds, HasRows, Match, Node, Range

TRUE = 'id != ""'  # every item: Milvus expressions have no literal true


def _path(key: str) -> str:
    return f"payload[{json.dumps(key)}]"


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def expression(node: Node) -> str:
    if isinstance(node, Match):
        path = _path(node.key)
        values = list(node.values)
        if isinstance(values[0], bool):
            return " or ".join(f"{path} == {_literal(v)}" for v in values)
        equal = " or ".join(f"{path} == {_literal(v)}" for v in values)
        contains = f"json_contains_any({path}, {json.dumps(values)})"
        return f"({equal} or {contains})"
    if isinstance(node, Range):
        path = _path(node.key)
        parts = []
        for op, bound in ((">", node.gt), (">=", node.gte), ("<", node.lt), ("<=", node.lte)):
            if bound is not None:
                parts.append(f"{path} {op} {float(bound)!r}")
        return "(" + " and ".join(parts) + ")"
    if isinstance(node, Exists):
        return f"exists {_path(node.key)}"
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
