// A thin typed client over the generated descriptors: one method per RPC, plain objects in and out,
// vectors as Float32Array. Errors are ConnectError with a gRPC status `code` (Code.NotFound, ...).
import { type CallOptions, type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Pem, type Security, security, securityInterceptors } from "./security.js";
import {
  type CollectionConfigSchema,
  type CollectionInfo,
  CollectionService,
  EmbedService,
  type GetServerInfoResponse,
  IndexType,
  type Item as ItemMessage,
  type ItemSchema,
  type SearchRequestSchema,
  SearchService,
  ServerService,
  Space,
  TagService,
  type WordHit,
} from "./gen/visionsearch/v1/visionsearch_pb.js";
import { fromF32Bytes, toF32Bytes } from "./vectors.js";

export interface ClientOptions {
  /** Deadline for every call, in milliseconds (0: none). Default 60 s. */
  timeoutMs?: number;
  /** Largest message sent or received. Default 64 MiB. */
  maxMessageBytes?: number;
  /** API key, sent with every call as `authorization: Bearer <key>` (`visionsearch-admin keys add` prints it). */
  apiKey?: string;
  /**
   * Speak TLS. On when any certificate below is given or the address is an https:// URL; without
   * `rootCertificates` Node's bundled CA roots verify the server.
   */
  tls?: boolean;
  /** PEM text of the CA certificate(s) that verify the server, e.g. `readFileSync("ca.pem")`. */
  rootCertificates?: Pem;
  /** PEM text of this client's private key, for a server that requires client certificates (mTLS). */
  privateKey?: Pem;
  /** PEM text of this client's certificate chain; goes with `privateKey`. */
  certificateChain?: Pem;
}

/** What to search with: exactly one of these. */
export type Query =
  | { image: Uint8Array }
  | { vector: ArrayLike<number> }
  | { id: string }
  | { words: string[] }
  | { sentence: string };

export interface SearchOptions {
  k?: number;
  withPayload?: boolean;
  withVector?: boolean;
  space?: Space;
  exact?: boolean;
  effort?: number;
}

export interface Hit {
  id: string;
  score: number;
  distance: number;
  payload: Record<string, string>;
  /** Present when the search asked for vectors. */
  vector?: Float32Array;
}

export interface SearchResult {
  hits: Hit[];
  /** What the server did with the query that the caller should know, e.g. words it skipped. */
  notes: string[];
}

export interface Embedding {
  vector: Float32Array;
  model: string;
}

export interface TagOptions {
  k?: number;
  /** The words to choose from; empty or absent: the whole vocabulary. */
  vocabulary?: string[];
  /** The joint space, e.g. "conse:spacy" (the server's default), "conse:minilm", "head:NAME". */
  joint?: string;
}

/** An item to upsert: an image or a vector, with an optional payload. */
export interface ItemInput {
  id: string;
  image?: Uint8Array;
  vector?: ArrayLike<number>;
  payload?: Record<string, string>;
}

export interface StoredItem {
  id: string;
  payload: Record<string, string>;
  vector?: Float32Array;
}

/** A collection's settings: name, dim (vector-only), metric, embedder, joint, index, recallTarget, hnsw. */
export type CollectionInit = MessageInitShape<typeof CollectionConfigSchema> & { name: string };

type SearchInit = MessageInitShape<typeof SearchRequestSchema>;
type ItemInit = MessageInitShape<typeof ItemSchema>;

function queryInit(query: Query): SearchInit["query"] {
  if ("image" in query) return { case: "image", value: query.image };
  if ("vector" in query) return { case: "vector", value: { f32: toF32Bytes(query.vector) } };
  if ("id" in query) return { case: "id", value: query.id };
  if ("words" in query) return { case: "text", value: { text: { case: "words", value: { words: query.words } } } };
  return { case: "text", value: { text: { case: "sentence", value: query.sentence } } };
}

function itemInit(item: ItemInput): ItemInit {
  if ((item.image === undefined) === (item.vector === undefined)) {
    throw new TypeError(`item ${JSON.stringify(item.id)}: give exactly one of image and vector`);
  }
  const data: ItemInit["data"] =
    item.image !== undefined
      ? { case: "image", value: item.image }
      : { case: "vector", value: { f32: toF32Bytes(item.vector as ArrayLike<number>) } };
  return { id: item.id, data, payload: item.payload ?? {} };
}

function storedItem(item: ItemMessage): StoredItem {
  const out: StoredItem = { id: item.id, payload: { ...item.payload } };
  if (item.data.case === "vector") out.vector = fromF32Bytes(item.data.value.f32);
  return out;
}

export class VisionSearchClient {
  readonly embedService: Client<typeof EmbedService>;
  readonly searchService: Client<typeof SearchService>;
  readonly tagService: Client<typeof TagService>;
  readonly collectionService: Client<typeof CollectionService>;
  readonly serverService: Client<typeof ServerService>;
  private readonly session: Http2SessionManager;
  private readonly timeoutMs: number;

  /**
   * `new VisionSearchClient("127.0.0.1:50051")` speaks plaintext without a key. On a network:
   * `new VisionSearchClient("search.internal:50051", { apiKey, rootCertificates: readFileSync("ca.pem") })`.
   * Throws TypeError for options that contradict each other (see ClientOptions).
   */
  constructor(address: string, options: ClientOptions = {}) {
    const sec: Security = security(address, options);
    const maxBytes = options.maxMessageBytes ?? 64 * 1024 * 1024;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    // One HTTP/2 connection shared by the services; close() ends it so that Node can exit.
    this.session = new Http2SessionManager(sec.url, undefined, sec.nodeOptions);
    const transport = createGrpcTransport({
      baseUrl: sec.url,
      sessionManager: this.session,
      readMaxBytes: maxBytes,
      writeMaxBytes: maxBytes,
      interceptors: securityInterceptors(sec, options.apiKey, () => {
        const state = this.session.state();
        return state === "closed" || state === "error";
      }),
    });
    this.embedService = createClient(EmbedService, transport);
    this.searchService = createClient(SearchService, transport);
    this.tagService = createClient(TagService, transport);
    this.collectionService = createClient(CollectionService, transport);
    this.serverService = createClient(ServerService, transport);
  }

  private opts(call?: CallOptions): CallOptions {
    return { timeoutMs: this.timeoutMs, ...call };
  }

  close(): void {
    this.session.abort();
  }

  // ---------------------------------------------------------------- server

  /**
   * The server's version, limits (largest message, k, pixels, ...), embedders, joint spaces and index kinds,
   * and whether it requires API keys, TLS and client certificates.
   */
  async serverInfo(call?: CallOptions): Promise<GetServerInfoResponse> {
    return this.serverService.getServerInfo({}, this.opts(call));
  }

  // ---------------------------------------------------------------- embed

  async embedImage(image: Uint8Array, call?: CallOptions): Promise<Embedding> {
    const res = await this.embedService.embed({ input: { case: "image", value: image } }, this.opts(call));
    return { vector: fromF32Bytes(res.vector?.f32 ?? new Uint8Array()), model: res.model };
  }

  async embedWord(word: string, call?: CallOptions): Promise<Embedding> {
    const res = await this.embedService.embed({ input: { case: "word", value: word } }, this.opts(call));
    return { vector: fromF32Bytes(res.vector?.f32 ?? new Uint8Array()), model: res.model };
  }

  // ---------------------------------------------------------------- search and tag

  async search(collection: string, query: Query, options: SearchOptions = {}, call?: CallOptions): Promise<SearchResult> {
    const res = await this.searchService.search(
      {
        collection,
        query: queryInit(query),
        k: options.k ?? 10,
        withPayload: options.withPayload ?? true,
        withVector: options.withVector ?? false,
        space: options.space ?? Space.UNSPECIFIED,
        exact: options.exact ?? false,
        effort: options.effort ?? 0,
      },
      this.opts(call),
    );
    const hits = res.hits.map((h): Hit => {
      const hit: Hit = { id: h.id, score: h.score, distance: h.distance, payload: { ...h.payload } };
      if (h.vector !== undefined) hit.vector = fromF32Bytes(h.vector.f32);
      return hit;
    });
    return { hits, notes: [...res.notes] };
  }

  async nearestWords(word: string, k = 10, call?: CallOptions): Promise<WordHit[]> {
    return (await this.searchService.nearestWords({ word, k }, this.opts(call))).hits;
  }

  async tag(image: Uint8Array, options: TagOptions = {}, call?: CallOptions): Promise<WordHit[]> {
    const req = { image, k: options.k ?? 10, vocabulary: options.vocabulary ?? [], joint: options.joint ?? "" };
    return (await this.tagService.tag(req, this.opts(call))).tags;
  }

  // ---------------------------------------------------------------- collections

  async createCollection(config: CollectionInit, call?: CallOptions): Promise<CollectionInfo> {
    return this.collectionService.createCollection({ config }, this.opts(call));
  }

  async getCollection(name: string, call?: CallOptions): Promise<CollectionInfo> {
    return this.collectionService.getCollection({ name }, this.opts(call));
  }

  async listCollections(call?: CallOptions): Promise<CollectionInfo[]> {
    return (await this.collectionService.listCollections({}, this.opts(call))).collections;
  }

  async dropCollection(name: string, call?: CallOptions): Promise<void> {
    await this.collectionService.dropCollection({ name }, this.opts(call));
  }

  /** Changes an empty collection's index type and recall target (FAILED_PRECONDITION once it holds items). */
  async updateCollection(
    name: string,
    update: { index?: IndexType; recallTarget?: number },
    call?: CallOptions,
  ): Promise<CollectionInfo> {
    const req = { name, index: update.index ?? IndexType.INDEX_UNSPECIFIED, recallTarget: update.recallTarget ?? 0 };
    return this.collectionService.updateCollection(req, this.opts(call));
  }

  /** Inserts or replaces items, all or nothing; returns the collection's count after the call. */
  async upsert(collection: string, items: ItemInput[], call?: CallOptions): Promise<number> {
    const res = await this.collectionService.upsert({ collection, items: items.map(itemInit) }, this.opts(call));
    return Number(res.count);
  }

  /** Deletes items by id; returns how many existed. */
  async delete(collection: string, ids: string[], call?: CallOptions): Promise<number> {
    return (await this.collectionService.delete({ collection, ids }, this.opts(call))).deleted;
  }

  async getItems(collection: string, ids: string[], withVector = false, call?: CallOptions): Promise<StoredItem[]> {
    const res = await this.collectionService.getItems({ collection, ids, withVector }, this.opts(call));
    return res.items.map(storedItem);
  }

  async count(collection: string, call?: CallOptions): Promise<number> {
    return Number((await this.collectionService.count({ collection }, this.opts(call))).count);
  }
}
