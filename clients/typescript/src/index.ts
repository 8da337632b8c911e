export { Code, ConnectError } from "@connectrpc/connect";
export * from "./client.js";
export type { Pem } from "./security.js";
export { fromF32Bytes, toF32Bytes } from "./vectors.js";
// The generated messages and service descriptors, for calls the wrapper does not cover.
export * as pb from "./gen/visionsearch/v1/visionsearch_pb.js";
export { IndexType, Metric, Space } from "./gen/visionsearch/v1/visionsearch_pb.js";
