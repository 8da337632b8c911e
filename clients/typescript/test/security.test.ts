// TLS, mTLS and API keys from TypeScript, over real TLS connections to live servers (secureServers(): one with
// TLS and keys, one that also requires client certificates; certificates made fresh for the run), and to
// plain Node TLS servers holding certificates a client must refuse.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createSecureServer } from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError, VisionSearchClient, type ClientOptions } from "../src/index.js";
import { type SecureServers, secureServers } from "./server.js";

const STAMPS = "/usr/share/tuxpaint/stamps";
const photo = (path: string): Uint8Array => new Uint8Array(readFileSync(`${STAMPS}/${path}`));

/** Awaits a call that must fail; returns its ConnectError. */
async function refused(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${String(err)}`);
    return err;
  }
  assert.fail("the call succeeded where it must be refused");
}

describe("visionsearch over TLS with API keys from TypeScript", () => {
  let servers: SecureServers;
  let ca: Buffer;
  const pem = (name: string): Buffer => readFileSync(join(servers.pki, `${name}.pem`));
  const clients: VisionSearchClient[] = [];
  const name = `ts_tls_${process.pid}_${Date.now()}`;

  /** A client of the TLS server (or another), closed after the tests. */
  const connect = (options: ClientOptions, address = servers.tls): VisionSearchClient => {
    const vs = new VisionSearchClient(address, { timeoutMs: 60_000, ...options });
    clients.push(vs);
    return vs;
  };

  before(async () => {
    servers = await secureServers();
    ca = pem("ca");
  });

  after(async () => {
    try {
      const admin = connect({ rootCertificates: ca, apiKey: servers.keys.admin });
      if ((await admin.listCollections()).some((c) => c.config?.name === name)) await admin.dropCollection(name);
    } finally {
      for (const vs of clients) vs.close();
      await servers.stop();
    }
  });

  test("an admin key creates and fills a collection; a read key searches it, over TLS", async () => {
    const admin = connect({ rootCertificates: ca, apiKey: servers.keys.admin });
    await admin.createCollection({ name, embedder: "mobilenet_v2", joint: "conse:spacy" });
    const items = [
      { id: "lion", image: photo("animals/mammals/cats/lion.png") },
      { id: "apple", image: photo("food/fruit/apple_red.png") },
      { id: "wrench", image: photo("household/tools/wrench_adjustable.png") },
    ];
    assert.equal(await admin.upsert(name, items), 3);
    const reader = connect({ rootCertificates: ca, apiKey: servers.keys.read });
    const { hits } = await reader.search(name, { words: ["cat"] }, { k: 3 });
    assert.deepEqual(hits.map((h) => h.id).slice(0, 1), ["lion"]);
    assert.equal(hits.length, 3);
  });

  test("GetServerInfo: the limits the server enforces, and that it speaks TLS and wants keys", async () => {
    const reader = connect({ rootCertificates: ca, apiKey: servers.keys.read });
    const info = await reader.serverInfo();
    assert.match(info.version, /^\d+\.\d+\.\d+/);
    assert.ok(info.tls && info.apiKeysRequired && !info.clientCertificatesRequired);
    const limits = info.limits;
    assert.ok(limits !== undefined && limits.maxK > 0 && limits.maxMessageBytes > 0n && limits.maxPixels > 0n);
    assert.ok(info.embedders.some((e) => e.name === "mobilenet_v2" && e.dim === 1280), JSON.stringify(info.embedders));
    assert.ok(info.jointSpaces.some((j) => j.name === "conse:spacy"));
    // The limit is the one enforced: k = maxK is served, one more is refused.
    assert.equal((await reader.search(name, { words: ["cat"] }, { k: limits.maxK })).hits.length, 3);
    const beyond = await refused(reader.search(name, { words: ["cat"] }, { k: limits.maxK + 1 }));
    assert.equal(beyond.code, Code.InvalidArgument);
    assert.ok(beyond.rawMessage.includes(String(limits.maxK)), beyond.rawMessage);
  });

  test("without a key, or with an unknown one: UNAUTHENTICATED with the server's message", async () => {
    const none = await refused(connect({ rootCertificates: ca }).search(name, { words: ["cat"] }));
    assert.equal(none.code, Code.Unauthenticated);
    assert.match(none.rawMessage, /needs an API key: send `authorization: Bearer <key>`/);
    const unknown = await refused(connect({ rootCertificates: ca, apiKey: "vs_not-a-key" }).count(name));
    assert.equal(unknown.code, Code.Unauthenticated);
    assert.equal(unknown.rawMessage, "unknown API key");
  });

  test("a read key calling admin RPCs: PERMISSION_DENIED naming the role needed", async () => {
    const reader = connect({ rootCertificates: ca, apiKey: servers.keys.read });
    const drop = await refused(reader.dropCollection(name));
    assert.equal(drop.code, Code.PermissionDenied);
    assert.match(drop.rawMessage, /^key '[^']+' has role read; DropCollection needs role admin$/);
    const create = await refused(reader.createCollection({ name: `${name}_2`, dim: 2 }));
    assert.equal(create.code, Code.PermissionDenied);
    assert.match(create.rawMessage, /CreateCollection needs role admin/);
    const upsert = await refused(reader.upsert(name, [{ id: "v", vector: new Float32Array(1280) }]));
    assert.equal(upsert.code, Code.PermissionDenied);
    assert.match(upsert.rawMessage, /Upsert needs role write \(or admin\)/);
    assert.equal(await reader.count(name), 3); // nothing was dropped or written
  });

  test("connection failures are UNAVAILABLE and say what to check", async () => {
    // Plaintext against the TLS port: the server closes the connection.
    const plain = await refused(connect({ apiKey: servers.keys.read }).count(name));
    assert.equal(plain.code, Code.Unavailable);
    assert.match(plain.rawMessage, /closed the connection.*pass rootCertificates/);
    // TLS verified by Node's bundled roots, which do not hold the test CA.
    const roots = await refused(connect({ tls: true, apiKey: servers.keys.read }).count(name));
    assert.equal(roots.code, Code.Unavailable);
    assert.match(roots.rawMessage, /the TLS handshake failed: check that the server's certificate is valid/);
  });

  test("server certificates that are expired, for another host or self-signed: UNAVAILABLE, the handshake", async () => {
    for (const bad of ["expired", "wrong-host", "self-signed"]) {
      // The handshake fails before any gRPC: a Node TLS server with the certificate stands for the server.
      const server = createSecureServer({ cert: pem(bad), key: pem(`${bad}-key`) });
      await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
      try {
        const port = (server.address() as AddressInfo).port;
        const err = await refused(connect({ rootCertificates: ca }, `127.0.0.1:${port}`).serverInfo());
        assert.equal(err.code, Code.Unavailable, `${bad}: ${err.message}`);
        assert.match(err.rawMessage, /the TLS handshake failed: check that the server's certificate is valid/, bad);
      } finally {
        await new Promise((ok) => server.close(ok));
      }
    }
  });

  test("mTLS: a client certificate from the CA is let in; without one, UNAVAILABLE", async () => {
    const cert = { certificateChain: pem("client"), privateKey: pem("client-key") };
    const mine = connect({ rootCertificates: ca, apiKey: servers.keys.read, ...cert }, servers.mtls);
    const info = await mine.serverInfo();
    assert.ok(info.clientCertificatesRequired && info.tls);
    assert.ok(Array.isArray(await mine.listCollections()));
    const stranger = connect({ rootCertificates: ca, apiKey: servers.keys.read }, servers.mtls);
    const without = await refused(stranger.serverInfo());
    assert.equal(without.code, Code.Unavailable);
    assert.match(without.rawMessage, /requires client certificates.*pass privateKey and certificateChain/);
  });

  test("a call the caller cancels stays CANCELED (not taken for a lost connection)", async () => {
    const reader = connect({ rootCertificates: ca, apiKey: servers.keys.read }); // no connection yet
    const err = await refused(reader.count(name, { signal: AbortSignal.abort() }));
    assert.equal(err.code, Code.Canceled);
  });

  test("contradictory options are a TypeError before any call", () => {
    const pem = ca.toString();
    assert.throws(() => new VisionSearchClient(servers.tls, { privateKey: pem }), /go together/);
    const path = join(servers.pki, "ca.pem"); // a file name where PEM text belongs
    assert.throws(() => new VisionSearchClient(servers.tls, { rootCertificates: path }), /PEM text.*readFileSync/);
    assert.throws(() => new VisionSearchClient(servers.tls, { tls: false, rootCertificates: pem }), /tls: false/);
    assert.throws(() => new VisionSearchClient(`http://${servers.tls}`, { rootCertificates: pem }), /http:\/\//);
    assert.throws(() => new VisionSearchClient(servers.tls, { apiKey: "" }), /apiKey is empty/);
    assert.throws(() => new VisionSearchClient(servers.tls, { apiKey: "vs_a b" }), /cannot carry/);
  });
});
