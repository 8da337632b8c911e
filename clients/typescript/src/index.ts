export { Code, ConnectError } from "@connectrpc/connect";
export * from "./client.js";
export { between, type Condition, exists, type Filter, hasId, match, nested, where } from "./filters.js";
export { asDouble, asInteger, type Payload, type PayloadInput, type PayloadValue } from "./payload.js";
export type { Pem } from "./security.js";
export { fromF32Bytes, toF32Bytes } from "./vectors.js";
// The generated messages and service descriptors, for calls the wrapper does not cover.
export * as pb from "./gen/visionsearch/v1/visionsearch_pb.js";
export { IndexType, Metric, PayloadType, Space } from "./gen/visionsearch/v1/visionsearch_pb.js";
