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
  type Filter,
  type GetServerInfoResponse,
  type Hit as HitMessage,
  type IndexType,
  type Item as ItemMessage,
  type ItemSchema,
  type PayloadIndexSchema,
  PayloadType,
  type SearchRequestSchema,
  type SearchResponse,
  SearchService,
  ServerService,
  Space,
  TagService,
  type WordHit,
} from "./gen/visionsearch/v1/visionsearch_pb.js";
import { type Payload, type PayloadInput, mergePayload, splitPayload } from "./payload.js";
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
  /** Number of hits (default 10). */
  k?: number;
  /** Return each hit's payload (default true). */
  withPayload?: boolean;
  withVector?: boolean;
  space?: Space;
  exact?: boolean;
  effort?: number;
  /** Only items that pass (build it with where/match/between/... from "./filters.js"). */
  filter?: Filter;
  /** Only hits whose score is at least this. */
  scoreThreshold?: number;
}

/** One search of a searchBatch call: its query and its own options. */
export type BatchSearch = SearchOptions & { query: Query };

/** Examples for recommend: stored ids or vectors of the space searched. */
export type Example = string | ArrayLike<number>;

export interface RecommendOptions {
  /** At least one positive example in all. */
  positive: Example[];
  negative?: Example[];
  k?: number;
  filter?: Filter;
  space?: Space;
  withPayload?: boolean;
  withVector?: boolean;
  scoreThreshold?: number;
}

export interface ScrollOptions {
  /** Only items that pass. */
  filter?: Filter;
  /** Items per call, 1..1000 (default 100). */
  pageSize?: number;
  withVector?: boolean;
  /** Return payloads (default true). */
  withPayload?: boolean;
}

export interface Hit {
  id: string;
  score: number;
  distance: number;
  /** The stored payload, strings and typed values in one object (see payload.ts for number types). */
  payload: Payload;
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

/**
 * An item to upsert: an image or a vector, with an optional payload of strings, numbers, bigints, booleans
 * and lists of strings or of whole numbers (whole numbers travel as integers: see payload.ts).
 */
export interface ItemInput {
  id: string;
  image?: Uint8Array;
  vector?: ArrayLike<number>;
  payload?: Record<string, PayloadInput>;
}

export interface StoredItem {
  id: string;
  payload: Payload;
  vector?: Float32Array;
}

/** The type of an indexed payload field, by name. */
export type PayloadTypeName = "keyword" | "integer" | "float" | "bool";

const PAYLOAD_TYPES: Record<PayloadTypeName, PayloadType> = {
  keyword: PayloadType.KEYWORD,
  integer: PayloadType.INTEGER,
  float: PayloadType.FLOAT,
  bool: PayloadType.BOOL,
};

/** Payload fields to index, `{ price: "float", sizes: "keyword" }`, or the proto's PayloadIndex list. */
export type PayloadIndexes =
  | Record<string, PayloadTypeName | PayloadType>
  | MessageInitShape<typeof PayloadIndexSchema>[];

// The plain-object form of a CollectionConfig (MessageInitShape is also satisfied by the message itself).
type ConfigInit = Exclude<MessageInitShape<typeof CollectionConfigSchema>, { $typeName: string }>;

/**
 * A collection's settings: name, dim (vector-only), metric, embedder, joint, index, recallTarget, hnsw, and
 * payloadIndexes (the fields filters may use).
 */
export type CollectionInit = Omit<ConfigInit, "payloadIndexes" | "$typeName"> & {
  name: string;
  payloadIndexes?: PayloadIndexes;
};

/** Settings to change; only those given change (the call sends a field mask naming them). */
export interface CollectionUpdate {
  /** Only while the collection is empty (FAILED_PRECONDITION otherwise). */
  index?: IndexType;
  recallTarget?: number;
  /** The full new list of indexed fields; an index on a field is built from the stored payloads. */
  payloadIndexes?: PayloadIndexes;
  /** Only while the collection is empty. */
  hnsw?: { connectivity?: number; expansionAdd?: number };
}

type SearchInit = MessageInitShape<typeof SearchRequestSchema>;
type ItemInit = MessageInitShape<typeof ItemSchema>;
type PayloadIndexInit = MessageInitShape<typeof PayloadIndexSchema>;

function payloadIndexList(indexes: PayloadIndexes | undefined): PayloadIndexInit[] {
  if (indexes === undefined) return [];
  if (Array.isArray(indexes)) return indexes;
  return Object.entries(indexes).map(([key, type]) => {
    if (typeof type === "number") return { key, type };
    const known = PAYLOAD_TYPES[type];
    if (known === undefined) {
      throw new TypeError(
        `payload index ${JSON.stringify(key)}: type must be one of ${Object.keys(PAYLOAD_TYPES).join(", ")}`,
      );
    }
    return { key, type: known };
  });
}

function searchInit(collection: string, query: Query, options: SearchOptions): SearchInit {
  return {
    collection,
    query: queryInit(query),
    k: options.k ?? 10,
    withPayload: options.withPayload ?? true,
    withVector: options.withVector ?? false,
    space: options.space ?? Space.UNSPECIFIED,
    exact: options.exact ?? false,
    effort: options.effort ?? 0,
    filter: options.filter,
    scoreThreshold: options.scoreThreshold,
  };
}

function hit(h: HitMessage): Hit {
  const out: Hit = { id: h.id, score: h.score, distance: h.distance, payload: mergePayload(h.payload, h.fields) };
  if (h.vector !== undefined) out.vector = fromF32Bytes(h.vector.f32);
  return out;
}

function searchResult(res: SearchResponse): SearchResult {
  return { hits: res.hits.map(hit), notes: [...res.notes] };
}

function examples(list: Example[] | undefined): { ids: string[]; vectors: { f32: Uint8Array }[] } {
  const ids: string[] = [];
  const vectors: { f32: Uint8Array }[] = [];
  for (const e of list ?? []) {
    if (typeof e === "string") ids.push(e);
    else vectors.push({ f32: toF32Bytes(e) });
  }
  return { ids, vectors };
}

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
  return { id: item.id, data, ...splitPayload(item.payload) };
}

function storedItem(item: ItemMessage): StoredItem {
  const out: StoredItem = { id: item.id, payload: mergePayload(item.payload, item.fields) };
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
    return searchResult(await this.searchService.search(searchInit(collection, query, options), this.opts(call)));
  }

  /**
   * Several searches of one collection in one call, each with its own query, k, filter and options; results
   * in order. Vector queries without a filter are answered together in one pass. At most 1,024 searches.
   */
  async searchBatch(collection: string, searches: BatchSearch[], call?: CallOptions): Promise<SearchResult[]> {
    const req = { collection, searches: searches.map((s) => searchInit("", s.query, s)) };
    return (await this.searchService.searchBatch(req, this.opts(call))).results.map(searchResult);
  }

  /**
   * Items like the positive examples and unlike the negative ones (ids of stored items or vectors), by
   * Qdrant's average-vector strategy; the examples themselves are not hits.
   */
  async recommend(collection: string, options: RecommendOptions, call?: CallOptions): Promise<SearchResult> {
    const positive = examples(options.positive);
    const negative = examples(options.negative);
    const req = {
      collection,
      positiveIds: positive.ids,
      positiveVectors: positive.vectors,
      negativeIds: negative.ids,
      negativeVectors: negative.vectors,
      k: options.k ?? 10,
      filter: options.filter,
      space: options.space ?? Space.UNSPECIFIED,
      withPayload: options.withPayload ?? true,
      withVector: options.withVector ?? false,
      scoreThreshold: options.scoreThreshold,
    };
    return searchResult(await this.searchService.recommend(req, this.opts(call)));
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
    const init = { ...config, payloadIndexes: payloadIndexList(config.payloadIndexes) };
    return this.collectionService.createCollection({ config: init }, this.opts(call));
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

  /**
   * Changes only the settings given, sent with a field mask naming them: `{ recallTarget: 0.97 }` leaves the
   * index as it is. The index and HNSW settings change only while the collection is empty.
   */
  async updateCollection(name: string, update: CollectionUpdate, call?: CallOptions): Promise<CollectionInfo> {
    const config: ConfigInit = {};
    const paths: string[] = [];
    if (update.index !== undefined) {
      config.index = update.index;
      paths.push("index");
    }
    if (update.recallTarget !== undefined) {
      config.recallTarget = update.recallTarget;
      paths.push("recall_target");
    }
    if (update.payloadIndexes !== undefined) {
      config.payloadIndexes = payloadIndexList(update.payloadIndexes);
      paths.push("payload_indexes");
    }
    if (update.hnsw?.connectivity !== undefined || update.hnsw?.expansionAdd !== undefined) {
      config.hnsw = { connectivity: update.hnsw.connectivity ?? 0, expansionAdd: update.hnsw.expansionAdd ?? 0 };
      if (update.hnsw.connectivity !== undefined) paths.push("hnsw.connectivity");
      if (update.hnsw.expansionAdd !== undefined) paths.push("hnsw.expansion_add");
    }
    if (paths.length === 0) {
      throw new TypeError("updateCollection: give at least one of index, recallTarget, payloadIndexes, hnsw");
    }
    const req = { name, config, updateMask: { paths } };
    return this.collectionService.updateCollection(req, this.opts(call));
  }

  /** Inserts or replaces items, all or nothing; returns the collection's count after the call. */
  async upsert(collection: string, items: ItemInput[], call?: CallOptions): Promise<number> {
    const res = await this.collectionService.upsert({ collection, items: items.map(itemInit) }, this.opts(call));
    return Number(res.count);
  }

  /** Deletes items by id, or every item that passes `{ filter }`; returns how many were deleted. */
  async delete(collection: string, target: string[] | { filter: Filter }, call?: CallOptions): Promise<number> {
    const req = Array.isArray(target) ? { collection, ids: target } : { collection, filter: target.filter };
    return (await this.collectionService.delete(req, this.opts(call))).deleted;
  }

  async getItems(collection: string, ids: string[], withVector = false, call?: CallOptions): Promise<StoredItem[]> {
    const res = await this.collectionService.getItems({ collection, ids, withVector }, this.opts(call));
    return res.items.map(storedItem);
  }

  /**
   * How many items the collection holds, or how many pass `filter`. The second argument also takes the call
   * options (`{ filter, timeoutMs, signal }`), as it took them alone before filters existed.
   */
  async count(collection: string, options: { filter?: Filter } & CallOptions = {}): Promise<number> {
    const { filter, ...call } = options;
    return Number((await this.collectionService.count({ collection, filter }, this.opts(call))).count);
  }

  /**
   * Every item (that passes `filter`) in id order, a page per call, following the server's cursors:
   * `for await (const item of vs.scroll("shop")) ...`. An item present for the whole walk comes exactly
   * once; items written meanwhile may or may not.
   */
  async *scroll(collection: string, options: ScrollOptions = {}, call?: CallOptions): AsyncGenerator<StoredItem> {
    let cursor = "";
    do {
      const req = {
        collection,
        limit: options.pageSize ?? 100,
        cursor,
        filter: options.filter,
        withVector: options.withVector ?? false,
        withoutPayload: !(options.withPayload ?? true),
      };
      const res = await this.collectionService.scroll(req, this.opts(call));
      for (const item of res.items) yield storedItem(item);
      cursor = res.nextCursor;
    } while (cursor !== "");
  }

  /** Sets these payload keys of the items (their other keys stay); returns how many items changed. */
  async setPayload(
    collection: string,
    ids: string[],
    payload: Record<string, PayloadInput>,
    call?: CallOptions,
  ): Promise<number> {
    const req = { collection, ids, ...splitPayload(payload) };
    return (await this.collectionService.setPayload(req, this.opts(call))).updated;
  }

  /** Removes these payload keys from the items; returns how many items changed. */
  async deletePayloadKeys(collection: string, ids: string[], keys: string[], call?: CallOptions): Promise<number> {
    return (await this.collectionService.deletePayloadKeys({ collection, ids, keys }, this.opts(call))).updated;
  }
}
