// Vectors travel as packed little-endian float32 bytes (visionsearch.v1.Vector.f32).

/** Packs numbers as little-endian float32 bytes, whatever the host's byte order. */
export function toF32Bytes(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i], true);
  return out;
}

/** Unpacks little-endian float32 bytes (the bytes need not be 4-byte aligned). */
export function fromF32Bytes(bytes: Uint8Array): Float32Array {
  if (bytes.length % 4 !== 0) throw new RangeError(`vector of ${bytes.length} bytes is not float32 data`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
  return out;
}
