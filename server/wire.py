"""Conversions between protobuf messages and numpy, with the checks that belong at the API boundary."""

from __future__ import annotations

import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb

from server.errors import Error, fail

METRIC_NAMES = {pb.METRIC_COSINE: "cosine", pb.METRIC_INNER_PRODUCT: "inner_product"}
METRIC_ENUMS = {v: k for k, v in METRIC_NAMES.items()}
INDEX_NAMES: dict[int, str] = {
    pb.INDEX_UNSPECIFIED: "auto",
    pb.INDEX_AUTO: "auto",
    pb.INDEX_EXACT: "exact",
    pb.INDEX_LSH: "lsh",
    pb.INDEX_HNSW: "hnsw",
}
INDEX_ENUMS = {"auto": pb.INDEX_AUTO, "exact": pb.INDEX_EXACT, "lsh": pb.INDEX_LSH, "hnsw": pb.INDEX_HNSW}
MAX_EFFORT = 1024


def index_name(value: int) -> str:
    if value not in INDEX_NAMES:
        fail(Error.BAD_REQUEST, f"index {value} is not a known IndexType (AUTO, EXACT, LSH or HNSW)")
    return INDEX_NAMES[value]


def recall_target(value: float) -> float:
    if value == 0:
        return 0.95
    if not 0 < value <= 1:
        fail(Error.BAD_REQUEST, f"recall_target must be in (0, 1], got {value}")
    return float(value)


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
