// Building filters (visionsearch.v1.Filter), as the Python client's filters.py does:
//
//   const shirts = where({ must: [match("category", "shirt"), between("price", { lt: 30 }),
//                                 match("in_stock", true), match("sizes", "M")] });
//   await vs.search("shop", { id: "sku-1" }, { k: 10, filter: shirts });
//
// A condition on a field that holds a list holds when any element does. Only fields the collection indexes
// (CollectionConfig.payload_indexes) can be filtered on; the server refuses others with INVALID_ARGUMENT.
import { create } from "@bufbuild/protobuf";
import {
  type Condition,
  ConditionSchema,
  type FieldMatchSchema,
  type Filter,
  FilterSchema,
} from "./gen/visionsearch/v1/visionsearch_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";

export type { Condition, Filter };

type MatchValue = MessageInitShape<typeof FieldMatchSchema>["value"];

const isWhole = (x: unknown): x is number | bigint =>
  typeof x === "bigint" || (typeof x === "number" && Number.isSafeInteger(x));

function matchValue(key: string, value: unknown): MatchValue {
  if (typeof value === "string") return { case: "keyword", value };
  if (typeof value === "boolean") return { case: "boolean", value };
  if (isWhole(value)) return { case: "integer", value: BigInt(value) };
  if (Array.isArray(value)) {
    if (value.every((x) => typeof x === "string")) return { case: "anyKeywords", value: { values: value } };
    if (value.every(isWhole)) return { case: "anyIntegers", value: { values: value.map((x) => BigInt(x)) } };
  }
  throw new TypeError(
    `match(${JSON.stringify(key)}): takes a string, a whole number, a boolean, or a list of strings or of ` +
      `whole numbers (any of them); for other numbers use between(key, { gte, lte })`,
  );
}

/** Equal to `value`; a list means any of its values. */
export function match(
  key: string,
  value: string | number | bigint | boolean | string[] | Array<number | bigint>,
): Condition {
  return create(ConditionSchema, { condition: { case: "match", value: { key, value: matchValue(key, value) } } });
}

/** Bounds on a number field; bounds left out are open. */
export function between(key: string, bounds: { gt?: number; gte?: number; lt?: number; lte?: number }): Condition {
  const { gt, gte, lt, lte } = bounds;
  return create(ConditionSchema, { condition: { case: "range", value: { key, gt, gte, lt, lte } } });
}

/** The item has this payload key, with any value. */
export function exists(key: string): Condition {
  return create(ConditionSchema, { condition: { case: "exists", value: key } });
}

/** The item's id is one of these. */
export function hasId(ids: string[]): Condition {
  return create(ConditionSchema, { condition: { case: "hasId", value: { ids } } });
}

/** A filter: every `must` holds, at least one `should` holds (when there are any), no `mustNot` holds. */
export function where(clauses: { must?: Condition[]; should?: Condition[]; mustNot?: Condition[] }): Filter {
  return create(FilterSchema, {
    must: clauses.must ?? [],
    should: clauses.should ?? [],
    mustNot: clauses.mustNot ?? [],
  });
}

/** A filter as one condition of another, e.g. `where({ should: [hasId(["a"]), nested(cheapShirts)] })`. */
export function nested(filter: Filter): Condition {
  return create(ConditionSchema, { condition: { case: "filter", value: filter } });
}
