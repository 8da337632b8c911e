"""Conversions between protobuf messages and numpy, with the checks that belong at the API boundary."""

from __future__ import annotations

import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb

from server.errors import Error, fail

METRIC_NAMES = {pb.METRIC_COSINE: "cosine", pb.METRIC_INNER_PRODUCT: "inner_product"}
METRIC_ENUMS = {v: k for k, v in METRIC_NAMES.items()}


def vector_from_pb(vector: pb.Vector, what: str = "vector") -> np.ndarray:
    raw = vector.f32
    if not raw:
        fail(Error.BAD_REQUEST, f"{what} is empty: send dim * 4 bytes of little-endian float32 in Vector.f32")
    if len(raw) % 4:
        fail(Error.BAD_REQUEST, f"{what} has {len(raw)} bytes, not a multiple of 4 (float32)")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)


def vector_to_pb(vector: np.ndarray) -> pb.Vector:
    return pb.Vector(f32=np.ascontiguousarray(vector, dtype="<f4").tobytes())


def check_k(k: int, cap: int) -> int:
    if k < 1:
        fail(Error.BAD_REQUEST, f"k must be at least 1, got {k}")
    if k > cap:
        fail(Error.BAD_REQUEST, f"k={k} is over this server's cap of {cap} (VISIONSEARCH_MAX_K)")
    return k
