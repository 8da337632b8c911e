// Calls every RPC of the four services through VisionSearchClient against a live server, plus two calls
// the server must refuse (unknown collection: NOT_FOUND; bytes that are no image: INVALID_ARGUMENT).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError, IndexType, Metric, Space, VisionSearchClient } from "../src/index.js";
import { type LiveServer, liveServer } from "./server.js";

const STAMPS = "/usr/share/tuxpaint/stamps";
const photo = (path: string): Uint8Array => new Uint8Array(readFileSync(`${STAMPS}/${path}`));
const LION = photo("animals/mammals/cats/lion.png");
const PHOTOS: Record<string, [Uint8Array, string]> = {
  lion: [LION, "lion"],
  apple: [photo("food/fruit/apple_red.png"), "apple"],
  pineapple: [photo("food/fruit/pineapple.png"), "pineapple"],
  wrench: [photo("household/tools/wrench_adjustable.png"), "wrench"],
};

/** Awaits a call that must fail, and returns its status code. */
async function refusedWith(call: Promise<unknown>): Promise<Code> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    return err.code;
  }
  assert.fail("the server accepted a call it must refuse");
}

describe("visionsearch over gRPC from TypeScript", () => {
  let server: LiveServer;
  let vs: VisionSearchClient;
  // Unique per run: the server may be shared with other tests.
  const name = `ts_${process.pid}_${Date.now()}`;

  before(async () => {
    server = await liveServer();
    vs = new VisionSearchClient(server.address, { timeoutMs: 120_000 });
  });

  after(async () => {
    try {
      if ((await vs.listCollections()).some((c) => c.config?.name === name)) await vs.dropCollection(name);
    } finally {
      vs.close();
      await server.stop();
    }
  });

  test("EmbedService.Embed: an image and a word", async () => {
    const image = await vs.embedImage(LION);
    assert.equal(image.vector.length, 1280);
    assert.equal(image.model, "efficientnet_lite1"); // the server's default backbone
    const word = await vs.embedWord("cat");
    assert.equal(word.vector.length, 300);
    assert.ok(word.vector.some((x) => x !== 0));
  });

  test("SearchService.NearestWords: the word itself first", async () => {
    const hits = await vs.nearestWords("cat", 5);
    assert.equal(hits.length, 5);
    assert.equal(hits[0].word, "cat");
    assert.ok(Math.abs(hits[0].distance) < 1e-5);
  });

  test("TagService.Tag: a lion is a cat rather than a car or a spoon", async () => {
    const tags = await vs.tag(LION, { k: 3, vocabulary: ["car", "cat", "spoon"] });
    assert.equal(tags.length, 3);
    assert.equal(tags[0].word, "cat");
  });

  test("CollectionService.CreateCollection, GetCollection, ListCollections, UpdateCollection", async () => {
    const created = await vs.createCollection({ name, embedder: "efficientnet_lite1", joint: "conse:spacy" });
    assert.equal(created.config?.name, name);
    assert.equal(created.config?.dim, 1280);
    assert.equal(created.jointDim, 300);
    const got = await vs.getCollection(name);
    assert.equal(got.config?.metric, Metric.COSINE);
    assert.ok((await vs.listCollections()).some((c) => c.config?.name === name));
    const updated = await vs.updateCollection(name, { index: IndexType.INDEX_EXACT, recallTarget: 0.9 });
    assert.equal(updated.config?.index, IndexType.INDEX_EXACT);
  });

  test("CollectionService.Upsert and Count: photos by image, one by vector", async () => {
    const items = Object.entries(PHOTOS).map(([id, [image, label]]) => ({ id, image, payload: { label } }));
    assert.equal(await vs.upsert(name, items), 4);
    const { vector } = await vs.embedImage(PHOTOS.apple[0]);
    assert.equal(await vs.upsert(name, [{ id: "apple-vector", vector, payload: { label: "apple" } }]), 5);
    assert.equal(await vs.count(name), 5);
  });

  test("SearchService.Search: by image, vector, id, words and sentence", async () => {
    const byImage = await vs.search(name, { image: LION }, { k: 3 });
    assert.equal(byImage.hits[0].id, "lion");
    assert.equal(byImage.hits[0].payload.label, "lion");
    assert.ok(byImage.hits[0].score > 0.99);

    const byVector = await vs.search(name, { vector: (await vs.embedImage(LION)).vector }, { k: 1, withVector: true });
    assert.equal(byVector.hits[0].id, "lion");
    assert.equal(byVector.hits[0].vector?.length, 1280);

    const byId = await vs.search(name, { id: "apple" }, { k: 1, exact: true });
    assert.equal(byId.hits[0].id, "apple-vector"); // the item itself is left out; its twin comes first

    const byWords = await vs.search(name, { words: ["cat", "qwxzzvk"] }, { k: 1, space: Space.JOINT });
    assert.equal(byWords.hits[0].id, "lion");
    assert.ok(byWords.notes.some((n) => n.includes("qwxzzvk")), byWords.notes.join("; "));

    const bySentence = await vs.search(name, { sentence: "a big cat" }, { k: 1 });
    assert.equal(bySentence.hits[0].id, "lion");
  });

  test("CollectionService.GetItems and Delete", async () => {
    const items = await vs.getItems(name, ["lion", "nope", "apple-vector"], true);
    assert.deepEqual(items.map((i) => i.id), ["lion", "apple-vector"]);
    assert.equal(items[1].payload.label, "apple");
    assert.equal(items[1].vector?.length, 1280);
    assert.equal(await vs.delete(name, ["apple-vector", "nope"]), 1);
    assert.equal(await vs.count(name), 4);
  });

  test("refused: an unknown collection is NOT_FOUND, bytes that are no image are INVALID_ARGUMENT", async () => {
    assert.equal(await refusedWith(vs.search("no_such_collection", { words: ["cat"] })), Code.NotFound);
    assert.equal(await refusedWith(vs.tag(new TextEncoder().encode("not an image"))), Code.InvalidArgument);
    assert.equal(await refusedWith(vs.count("no_such_collection")), Code.NotFound);
  });

  test("CollectionService.DropCollection: gone afterwards", async () => {
    await vs.dropCollection(name);
    assert.equal(await refusedWith(vs.getCollection(name)), Code.NotFound);
  });
});
