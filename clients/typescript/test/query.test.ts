// The query contract through VisionSearchClient against a live server: typed payloads out and back, the shop
// query ("similar shirts, in stock, under 30, size M") against brute force over the passing items, scroll
// over 3,000 items, searchBatch against single searches, recommend against a search by the average vector,
// setPayload / deletePayloadKeys changing what filters find, count and delete by filter, updateCollection
// with a field mask, scoreThreshold, and the server's refusals of bad filters.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Code,
  ConnectError,
  type Filter,
  IndexType,
  type Payload,
  VisionSearchClient,
  asDouble,
  between,
  exists,
  hasId,
  match,
  nested,
  where,
} from "../src/index.js";
import { type LiveServer, liveServer } from "./server.js";

const DIM = 8;
const N = 3000;

/** mulberry32: a small seeded generator, so that every run builds the same collection. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = random(11);
const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];

function unit(): Float32Array {
  const v = Array.from({ length: DIM }, () => rand() * 2 - 1);
  const norm = Math.hypot(...v);
  return Float32Array.from(v, (x) => x / norm);
}

interface Product extends Payload {
  category: string;
  price: number;
  in_stock: boolean;
  sizes: string[];
  stock: number;
  title: string;
}

const ids = Array.from({ length: N }, (_, n) => `p${n}`);
const vectors = new Map(ids.map((id) => [id, unit()]));
const products = new Map<string, Product>(
  ids.map((id, n) => [
    id,
    {
      category: pick(["shirt", "shoe", "hat"]),
      price: Math.round((5 + rand() * 55) * 100) / 100, // some are whole: they travel as integers
      in_stock: rand() < 0.7,
      sizes: ["S", "M", "L", "XL"].filter(() => rand() < 0.5),
      stock: Math.floor(rand() * 50),
      title: `product ${n}`,
    },
  ]),
);
const INDEXES = { category: "keyword", price: "float", in_stock: "bool", sizes: "keyword", stock: "integer" } as const;

const SHOP = where({
  must: [match("category", "shirt"), between("price", { lt: 30 }), match("in_stock", true), match("sizes", "M")],
});
const passesShop = (p: Product): boolean =>
  p.category === "shirt" && p.price < 30 && p.in_stock === true && p.sizes.includes("M");

const dot = (a: Float32Array, b: ArrayLike<number>): number => a.reduce((s, x, i) => s + x * b[i], 0);

/** Ids of the k items nearest to `query` among those that pass, best first (brute force). */
function nearest(query: ArrayLike<number>, k: number, passes: (id: string) => boolean): string[] {
  return ids
    .filter(passes)
    .map((id) => [id, dot(vectors.get(id)!, query)] as const)
    .sort((a, b) => b[1] - a[1])
    .slice(0, k)
    .map(([id]) => id);
}

async function refused(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    return err;
  }
  assert.fail("the server accepted a call it must refuse");
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

describe("the query contract from TypeScript", () => {
  let server: LiveServer;
  let vs: VisionSearchClient;
  const name = `ts_query_${process.pid}_${Date.now()}`;
  const mine: string[] = [];

  before(async () => {
    server = await liveServer();
    vs = new VisionSearchClient(server.address, { timeoutMs: 120_000 });
    mine.push(name);
    await vs.createCollection({ name, dim: DIM, payloadIndexes: INDEXES });
    for (let start = 0; start < N; start += 1000) {
      const batch = ids.slice(start, start + 1000);
      await vs.upsert(name, batch.map((id) => ({ id, vector: vectors.get(id)!, payload: products.get(id)! })));
    }
  });

  after(async () => {
    try {
      const present = new Set((await vs.listCollections()).map((c) => c.config?.name));
      for (const c of mine) if (present.has(c)) await vs.dropCollection(c);
    } finally {
      vs.close();
      await server.stop();
    }
  });

  test("typed payloads: split on the wire, merged on return; whole numbers travel as integers", async () => {
    const typed = `${name}_types`;
    mine.push(typed);
    await vs.createCollection({ name: typed, dim: 2, payloadIndexes: { stock: "integer" } });
    const payload = {
      title: "lion tee",
      price: 24.9,
      whole: 30,
      forced: asDouble(30),
      big: 2n ** 60n,
      on: true,
      sizes: ["S", "M"],
      counts: [1, 2n, -3],
      stock: 7,
    };
    await vs.upsert(typed, [{ id: "a", vector: [1, 0], payload }]);
    const [item] = await vs.getItems(typed, ["a"]);
    assert.deepEqual(item.payload, {
      title: "lion tee", price: 24.9, whole: 30, forced: 30, big: 2n ** 60n, on: true, sizes: ["S", "M"],
      counts: [1, 2, -3], stock: 7,
    });
    const [hit] = (await vs.search(typed, { vector: [1, 0] }, { k: 1 })).hits;
    assert.deepEqual(hit.payload, item.payload);

    // What the wire carried: strings in `payload`, the rest in `fields` with the documented types.
    const raw = (await vs.collectionService.getItems({ collection: typed, ids: ["a"] })).items[0];
    assert.deepEqual({ ...raw.payload }, { title: "lion tee" });
    const kinds = Object.fromEntries(Object.entries(raw.fields).map(([k, v]) => [k, v.kind.case]));
    assert.deepEqual(kinds, {
      price: "number", whole: "integer", forced: "number", big: "integer", on: "boolean", sizes: "texts",
      counts: "integers", stock: "integer",
    });

    // Refused before any call: values the proto cannot carry.
    for (const bad of [[1.5, 2], [true], ["a", 1], null, { a: 1 }, undefined]) {
      await assert.rejects(vs.upsert(typed, [{ id: "b", vector: [0, 1], payload: { bad: bad as never } }]), TypeError);
    }
    assert.throws(() => match("price", 2.5), /use between/);
    // Refused by the server: an indexed field given another type.
    const err = await refused(vs.upsert(typed, [{ id: "b", vector: [0, 1], payload: { stock: 2.5 } }]));
    assert.equal(err.code, Code.InvalidArgument);
    assert.match(err.rawMessage, /payload key 'stock' is indexed as integer/);
  });

  test("the shop query: similar, filtered, in one call, equal to brute force over the passing items", async () => {
    const res = await vs.search(name, { id: "p0" }, { k: 10, filter: SHOP });
    const want = nearest(vectors.get("p0")!, 10, (id) => id !== "p0" && passesShop(products.get(id)!));
    assert.equal(want.length, 10);
    assert.deepEqual(res.hits.map((h) => h.id), want);
    for (const h of res.hits) assert.deepEqual(h.payload, products.get(h.id));
    assert.ok(res.notes.some((n) => n.includes("pass the filter")), res.notes.join("; "));
    const passing = ids.filter((id) => passesShop(products.get(id)!)).length;
    assert.equal(await vs.count(name, { filter: SHOP }), passing);
    assert.equal(await vs.count(name), N);
  });

  test("scroll walks 3,000 items in id order, each once, following cursors", async () => {
    const walked = await collect(vs.scroll(name, { pageSize: 250 }));
    const got = walked.map((i) => i.id);
    assert.equal(new Set(got).size, got.length, "an id came twice");
    assert.deepEqual(got, [...ids].sort());
    for (const item of walked.slice(0, 50)) assert.deepEqual(item.payload, products.get(item.id));

    const cheap = where({ must: [between("stock", { lte: 4 })], mustNot: [match("category", "hat")] });
    const want = ids.filter((id) => products.get(id)!.stock <= 4 && products.get(id)!.category !== "hat");
    const filtered = await collect(vs.scroll(name, { filter: cheap, pageSize: 7, withPayload: false }));
    assert.deepEqual(filtered.map((i) => i.id).sort(), [...want].sort());
    assert.deepEqual(filtered[0].payload, {});
    assert.equal(await vs.count(name, { filter: cheap }), want.length);

    const either = where({ should: [hasId(["p1", "p2"]), nested(where({ must: [match("stock", [0, 49])] }))] });
    const wantEither = ids.filter((id) => id === "p1" || id === "p2" || [0, 49].includes(products.get(id)!.stock));
    assert.deepEqual((await collect(vs.scroll(name, { filter: either }))).map((i) => i.id).sort(), wantEither.sort());
  });

  test("searchBatch equals single searches, each with its own k, filter and threshold", async () => {
    const queries = ids.slice(0, 8).map((id) => ({ query: { vector: vectors.get(id)! }, k: 5 }));
    const batch = await vs.searchBatch(name, [
      ...queries,
      { query: { id: "p3" }, k: 4, filter: SHOP, withPayload: false },
      { query: { vector: vectors.get("p7")! }, k: 3, withVector: true, scoreThreshold: 0.2 },
    ]);
    assert.equal(batch.length, 10);
    for (const [n, q] of queries.entries()) {
      const single = await vs.search(name, q.query, { k: 5 });
      const pairs = (r: typeof single): [string, string][] => r.hits.map((h) => [h.id, h.score.toFixed(5)]);
      assert.deepEqual(pairs(batch[n]), pairs(single));
    }
    const filtered = await vs.search(name, { id: "p3" }, { k: 4, filter: SHOP });
    assert.deepEqual(batch[8].hits.map((h) => h.id), filtered.hits.map((h) => h.id));
    assert.deepEqual(batch[8].hits[0].payload, {});
    assert.ok(batch[9].hits.every((h) => h.score >= 0.2) && batch[9].hits[0].vector?.length === DIM);
  });

  test("recommend: the average-vector strategy, with a filter", async () => {
    const [p1, p2, p3] = ["p1", "p2", "p3"].map((id) => vectors.get(id)!);
    const target = p1.map((x, i) => x + p2[i] - p3[i]); // 2 * mean(positive) - mean(negative)
    const res = await vs.recommend(name, { positive: ["p1", "p2"], negative: ["p3"], k: 5 });
    const examples = new Set(["p1", "p2", "p3"]);
    assert.deepEqual(res.hits.map((h) => h.id), nearest(target, 5, (id) => !examples.has(id)));

    const byVector = await vs.recommend(name, { positive: [p1, "p2"], negative: [p3], k: 5, filter: SHOP });
    assert.equal(byVector.hits.length, 5);
    assert.ok(byVector.hits.every((h) => passesShop(products.get(h.id)!)));
    const err = await refused(vs.recommend(name, { positive: [], negative: ["p3"] }));
    assert.equal(err.code, Code.InvalidArgument);
    assert.match(err.rawMessage, /no positive example/);
  });

  test("scoreThreshold keeps only hits at least that close", async () => {
    const q = vectors.get("p0")!;
    const res = await vs.search(name, { vector: q }, { k: 50, scoreThreshold: 0.85 });
    const above = (t: number): number => Math.min(50, ids.filter((id) => dot(vectors.get(id)!, q) >= t).length);
    assert.ok(res.hits.every((h) => h.score >= 0.85));
    assert.ok(res.hits.length >= above(0.85 + 1e-5) && res.hits.length <= above(0.85 - 1e-5), `${res.hits.length}`);
    assert.ok(above(0.85) > 0 && above(0.85) < 50, "the threshold must cut the list for this test to mean anything");
  });

  test("a filter on an undeclared field or a range on a keyword: INVALID_ARGUMENT, the server's message", async () => {
    const colour = where({ must: [match("colour", "red")] });
    for (const call of [
      () => vs.search(name, { id: "p0" }, { filter: colour }),
      () => vs.count(name, { filter: colour }),
      () => vs.searchBatch(name, [{ query: { id: "p0" }, filter: colour }]),
      () => collect(vs.scroll(name, { filter: colour })),
      () => vs.delete(name, { filter: colour }),
      () => vs.recommend(name, { positive: ["p0"], filter: colour }),
    ]) {
      const err = await refused(call());
      assert.equal(err.code, Code.InvalidArgument);
      assert.match(err.rawMessage, /payload key 'colour' is not indexed \(indexed: category \(keyword\), in_stock/);
      assert.match(err.rawMessage, /declare it in CollectionConfig\.payload_indexes/);
    }
    const range = await refused(vs.count(name, { filter: where({ must: [between("category", { lt: 3 })] }) }));
    assert.equal(range.code, Code.InvalidArgument);
    assert.match(range.rawMessage, /a range on payload key 'category', which is indexed as keyword/);
    const empty = await refused(vs.count(name, { filter: where({}) }));
    assert.match(empty.rawMessage, /filter has no conditions/);
    assert.equal(await vs.count(name), N, "a refused delete deleted nothing");
  });

  test("setPayload and deletePayloadKeys change what filters find", async () => {
    const hats = ids.filter((id) => products.get(id)!.category === "hat").slice(0, 20);
    const before = await vs.count(name, { filter: SHOP });
    const change = { category: "shirt", price: 9.5, in_stock: true, sizes: ["M"] };
    assert.equal(await vs.setPayload(name, [...hats, "no-such-id"], change), hats.length);
    assert.equal(await vs.count(name, { filter: SHOP }), before + hats.length);
    const found = await collect(vs.scroll(name, { filter: where({ must: [hasId(hats)] }) }));
    for (const item of found) assert.deepEqual(item.payload, { ...products.get(item.id), ...change });
    const res = await vs.search(name, { vector: vectors.get(hats[0])! }, { k: 1, filter: SHOP });
    assert.equal(res.hits[0].id, hats[0]);

    assert.equal(await vs.deletePayloadKeys(name, hats.slice(0, 5), ["in_stock"]), 5);
    const noStock: Filter = where({ mustNot: [exists("in_stock")] });
    const unstocked = await collect(vs.scroll(name, { filter: noStock }));
    assert.deepEqual(unstocked.map((i) => i.id).sort(), hats.slice(0, 5).sort());
    assert.equal(await vs.count(name, { filter: SHOP }), before + hats.length - 5);
  });

  test("delete by filter removes exactly the passing items", async () => {
    const cheap = where({ must: [between("price", { lt: 7 })] });
    const n = await vs.count(name, { filter: cheap });
    assert.ok(n > 0);
    assert.equal(await vs.delete(name, { filter: cheap }), n);
    assert.equal(await vs.count(name, { filter: cheap }), 0);
    assert.equal(await vs.count(name), N - n);
  });

  test("updateCollection changes only the fields given (a field mask)", async () => {
    const u = `${name}_u`;
    mine.push(u);
    await vs.createCollection({ name: u, dim: 4, index: IndexType.INDEX_HNSW, recallTarget: 0.9 });
    await vs.upsert(u, [{ id: "a", vector: [1, 0, 0, 0], payload: { n: "x" } }]);
    let info = await vs.updateCollection(u, { recallTarget: 0.97 });
    assert.equal(info.config?.index, IndexType.INDEX_HNSW); // not reset to AUTO
    assert.ok(Math.abs((info.config?.recallTarget ?? 0) - 0.97) < 1e-6);
    info = await vs.updateCollection(u, { payloadIndexes: { n: "keyword" } });
    assert.deepEqual(info.config?.payloadIndexes.map((p) => p.key), ["n"]);
    assert.equal(info.config?.index, IndexType.INDEX_HNSW);
    assert.equal(await vs.count(u, { filter: where({ must: [match("n", "x")] }) }), 1);
    const err = await refused(vs.updateCollection(u, { index: IndexType.INDEX_EXACT }));
    assert.equal(err.code, Code.FailedPrecondition);
    await assert.rejects(vs.updateCollection(u, {}), TypeError);
  });
});
