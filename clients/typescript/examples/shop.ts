// The shop query: items similar to one product that are shirts, in stock, under 30 and come in size M, in one
// call, then how many items pass the filter at all.
//   node dist/examples/shop.js COLLECTION PRODUCT_ID [K]      (server: VISIONSEARCH_ADDRESS or 127.0.0.1:50051)
// The collection indexes category and sizes (keyword), price (float) and in_stock (bool). Prints one line per
// hit, `id  score  payload-as-JSON`, then `passing: N`. VISIONSEARCH_CA and VISIONSEARCH_API_KEY as in
// search_and_tag.ts.
import { readFileSync } from "node:fs";
import { Code, ConnectError, VisionSearchClient, between, match, where } from "../src/index.js";

// Integers beyond 2^53 come back as bigints, which JSON.stringify refuses: print them as numbers.
const json = (value: unknown): string =>
  JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? Number(v) : v));

async function main(): Promise<number> {
  const [collection, productId, k = "10"] = process.argv.slice(2);
  if (!collection || !productId) {
    console.error("usage: shop COLLECTION PRODUCT_ID [K]");
    return 2;
  }
  const { VISIONSEARCH_ADDRESS: address, VISIONSEARCH_CA: ca, VISIONSEARCH_API_KEY: apiKey } = process.env;
  const vs = new VisionSearchClient(address ?? "127.0.0.1:50051", {
    rootCertificates: ca ? readFileSync(ca) : undefined,
    apiKey: apiKey || undefined,
  });
  try {
    const shirts = where({
      must: [match("category", "shirt"), between("price", { lt: 30 }), match("in_stock", true), match("sizes", "M")],
    });
    const { hits, notes } = await vs.search(collection, { id: productId }, { k: Number(k), filter: shirts });
    for (const note of notes) console.error(`note: ${note}`);
    for (const hit of hits) console.log(`${hit.id}\t${hit.score.toFixed(4)}\t${json(hit.payload)}`);
    console.log(`passing: ${await vs.count(collection, { filter: shirts })}`);
    return 0;
  } catch (err) {
    if (err instanceof ConnectError) {
      console.error(`refused: ${Code[err.code]} (${err.code}): ${err.rawMessage}`);
      return 1;
    }
    throw err;
  } finally {
    vs.close();
  }
}

process.exitCode = await main();
