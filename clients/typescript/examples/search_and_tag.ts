// Embeds an image file, finds the most similar photos of a collection and tags the image with words.
//   node dist/examples/search_and_tag.js IMAGE [COLLECTION]     (server: VISIONSEARCH_ADDRESS or 127.0.0.1:50051)
// A server with TLS and keys: VISIONSEARCH_CA names the CA's PEM file, VISIONSEARCH_API_KEY holds the key.
import { readFileSync } from "node:fs";
import { Code, ConnectError, VisionSearchClient } from "../src/index.js";

async function main(): Promise<number> {
  const [imagePath, collection = "default"] = process.argv.slice(2);
  if (!imagePath) {
    console.error("usage: search_and_tag IMAGE [COLLECTION]");
    return 2;
  }
  const image = new Uint8Array(readFileSync(imagePath));
  const { VISIONSEARCH_ADDRESS: address, VISIONSEARCH_CA: ca, VISIONSEARCH_API_KEY: apiKey } = process.env;
  const vs = new VisionSearchClient(address ?? "127.0.0.1:50051", {
    timeoutMs: 30_000,
    rootCertificates: ca ? readFileSync(ca) : undefined,
    apiKey: apiKey || undefined,
  });
  try {
    const { vector, model } = await vs.embedImage(image);
    console.log(`embedding: ${vector.length}-d from ${model}`);
    const { hits } = await vs.search(collection, { image }, { k: 5 });
    for (const hit of hits) console.log(`similar: ${hit.id}\t${hit.score.toFixed(3)}\t${hit.payload.label ?? ""}`);
    const tags = await vs.tag(image, { k: 5 });
    console.log(`tags: ${tags.map((t) => `${t.word} (${t.score.toFixed(2)})`).join(", ")}`);
    return 0;
  } catch (err) {
    if (err instanceof ConnectError) {
      // err.code is the gRPC status (a Code enum value); rawMessage is the server's explanation.
      console.error(`refused: ${Code[err.code]} (${err.code}): ${err.rawMessage}`);
      return 1;
    }
    throw err;
  } finally {
    vs.close();
  }
}

process.exitCode = await main();
