"""How vectors should travel: packed float32 bytes against ``repeated float``, encode and decode, from numpy.

This is the measurement behind the choice documented on ``visionsearch.v1.Vector``. Both messages are built
at run time from a descriptor (no generated code needed) and timed with ``timeit`` on the installed protobuf
runtime. Run: ``.venv/bin/python bench/vector_wire.py``.
"""

from __future__ import annotations

import timeit

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def _messages() -> tuple[type, type]:
    fd = descriptor_pb2.FileDescriptorProto(name="wire_bench.proto", package="wire_bench", syntax="proto3")
    packed = fd.message_type.add(name="Packed")
    packed.field.add(name="f32", number=1, type=12, label=1)  # bytes
    repeated = fd.message_type.add(name="Repeated")
    repeated.field.add(name="v", number=1, type=2, label=3)  # repeated float (packed on the wire)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("wire_bench.Packed")), get(
        pool.FindMessageTypeByName("wire_bench.Repeated")
    )


def _time_dim(packed_cls: type, repeated_cls: type, x: np.ndarray, n: int = 20_000) -> None:
    wire_p = packed_cls(f32=x.tobytes()).SerializeToString()
    wire_r = repeated_cls(v=x.tolist()).SerializeToString()

    def enc_p() -> bytes:
        return packed_cls(f32=x.tobytes()).SerializeToString()

    def enc_r() -> bytes:
        return repeated_cls(v=x.tolist()).SerializeToString()

    def dec_p() -> np.ndarray:
        m = packed_cls()
        m.ParseFromString(wire_p)
        return np.frombuffer(m.f32, dtype="<f4")

    def dec_r() -> np.ndarray:
        m = repeated_cls()
        m.ParseFromString(wire_r)
        return np.array(m.v, dtype=np.float32)

    for form, enc, dec, wire in (("bytes", enc_p, dec_p, wire_p), ("repeated", enc_r, dec_r, wire_r)):
        te = timeit.timeit(enc, number=n) / n * 1e6
        td = timeit.timeit(dec, number=n) / n * 1e6
        print(f"{x.size:>5} {form:>9} {te:>10.2f} {td:>10.2f} {len(wire):>6}")


def main() -> None:
    packed_cls, repeated_cls = _messages()
    rng = np.random.default_rng(0)
    print(f"{'dim':>5} {'form':>9} {'encode us':>10} {'decode us':>10} {'bytes':>6}")
    for dim in (300, 1280):
        _time_dim(packed_cls, repeated_cls, rng.standard_normal(dim).astype(np.float32))


if __name__ == "__main__":
    main()
