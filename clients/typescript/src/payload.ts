// Typed payloads. On the wire an item's payload is two maps (visionsearch.v1.Item): `payload` for strings and
// `fields` for typed values (PayloadValue). Callers see one object; this module splits it on the way out and
// merges it on the way back, as the Python client's _convert.py does.
//
// JavaScript has one number type, so whole numbers and floats are told apart by value:
//   - a number that is a safe integer (Number.isSafeInteger: 3, -7, 30) and a bigint travel as `integer`;
//   - any other number (24.9, 1e300, NaN) travels as `number` (a double);
//   - asDouble(30) forces a whole number to travel as `number`, asInteger(x) insists on `integer`.
// A float field (PAYLOAD_TYPE_FLOAT) takes integers as well, so `price: 30` is accepted there. Coming back,
// an integer is a number when it is a safe integer and a bigint otherwise (no precision is lost); a double is
// a number. Lists hold strings or whole numbers only, as the proto does (StringList, IntList).
import { create, isMessage } from "@bufbuild/protobuf";
import { type PayloadValue as PayloadValueMessage, PayloadValueSchema } from "./gen/visionsearch/v1/visionsearch_pb.js";

/** A payload value as callers write and read it. */
export type PayloadValue = string | number | bigint | boolean | string[] | Array<number | bigint>;

/** A payload value to send: a plain value, or one wrapped by asDouble / asInteger to fix its wire type. */
export type PayloadInput = PayloadValue | PayloadValueMessage;

/** An item's payload: every key, whether the wire carries it in `payload` or in `fields`. */
export type Payload = Record<string, PayloadValue>;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

function int64(key: string, v: number | bigint): bigint {
  const b = typeof v === "bigint" ? v : BigInt(v);
  if (b < INT64_MIN || b > INT64_MAX) {
    throw new RangeError(`payload key ${JSON.stringify(key)}: ${b} is outside the 64-bit integer range`);
  }
  return b;
}

const isWhole = (x: unknown): x is number | bigint =>
  typeof x === "bigint" || (typeof x === "number" && Number.isSafeInteger(x));

/** Sends a number as a double (PayloadValue.number) even when it is whole: `price: asDouble(30)`. */
export function asDouble(value: number): PayloadValueMessage {
  if (typeof value !== "number") throw new TypeError(`asDouble takes a number, not ${typeof value}`);
  return create(PayloadValueSchema, { kind: { case: "number", value } });
}

/** Sends a whole number as an integer (PayloadValue.integer); RangeError for a fraction or beyond int64. */
export function asInteger(value: number | bigint): PayloadValueMessage {
  if (typeof value === "number" && !Number.isInteger(value)) {
    throw new RangeError(`asInteger takes a whole number, not ${value}`);
  }
  return create(PayloadValueSchema, { kind: { case: "integer", value: int64("asInteger", value) } });
}

function typedValue(key: string, v: Exclude<PayloadInput, string>): PayloadValueMessage {
  if (isMessage(v, PayloadValueSchema)) return v;
  if (typeof v === "boolean") return create(PayloadValueSchema, { kind: { case: "boolean", value: v } });
  if (isWhole(v)) return create(PayloadValueSchema, { kind: { case: "integer", value: int64(key, v) } });
  if (typeof v === "number") return create(PayloadValueSchema, { kind: { case: "number", value: v } });
  if (Array.isArray(v)) {
    const list: unknown[] = v;
    if (list.every((x) => typeof x === "string")) {
      return create(PayloadValueSchema, { kind: { case: "texts", value: { values: list as string[] } } });
    }
    if (list.every(isWhole)) {
      const values = (list as Array<number | bigint>).map((x) => int64(key, x));
      return create(PayloadValueSchema, { kind: { case: "integers", value: { values } } });
    }
    throw new TypeError(
      `payload key ${JSON.stringify(key)}: a list holds only strings or only whole numbers ` +
        `(the proto has no list of floats, bools or mixed values)`,
    );
  }
  const what = v === null ? "null" : typeof v;
  throw new TypeError(
    `payload key ${JSON.stringify(key)}: ${what} is not a payload value ` +
      `(string, number, bigint, boolean, or a list of strings or of whole numbers)`,
  );
}

/** One payload as the wire's two maps: its strings, and its typed values. */
export function splitPayload(payload: Record<string, PayloadInput> | undefined): {
  payload: Record<string, string>;
  fields: Record<string, PayloadValueMessage>;
} {
  const strings: Record<string, string> = {};
  const fields: Record<string, PayloadValueMessage> = {};
  for (const [key, v] of Object.entries(payload ?? {})) {
    if (typeof v === "string") strings[key] = v;
    else fields[key] = typedValue(key, v);
  }
  return { payload: strings, fields };
}

const fromInt64 = (b: bigint): number | bigint =>
  b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;

/** A received PayloadValue as a plain value (an integer: a number when safe, a bigint otherwise). */
export function fromPayloadValue(v: PayloadValueMessage): PayloadValue | undefined {
  switch (v.kind.case) {
    case "text":
    case "number":
    case "boolean":
      return v.kind.value;
    case "integer":
      return fromInt64(v.kind.value);
    case "texts":
      return [...v.kind.value.values];
    case "integers":
      return v.kind.value.values.map(fromInt64);
    default:
      return undefined;
  }
}

/** The wire's two maps as one payload. */
export function mergePayload(
  strings: Record<string, string>,
  fields: Record<string, PayloadValueMessage>,
): Payload {
  const out: Payload = { ...strings };
  for (const [key, v] of Object.entries(fields)) {
    const value = fromPayloadValue(v);
    if (value !== undefined) out[key] = value;
  }
  return out;
}
