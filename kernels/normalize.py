"""Row norms and L2 normalisation for float32 matrices."""

import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _row_norms_parallel(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.empty(n, dtype=np.float32)
    for i in prange(n):
        s = np.float32(0.0)
        for j in range(d):
            s += x[i, j] * x[i, j]
        out[i] = np.sqrt(s)
    return out


@njit(fastmath=True, cache=True, nogil=True)
def _row_norms_serial(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        s = np.float32(0.0)
        for j in range(d):
            s += x[i, j] * x[i, j]
        out[i] = np.sqrt(s)
    return out


# Below this many elements, waking Numba's worker threads costs more than the sum itself; under load, when
# those threads are descheduled, it cost a single-query search as much as its HNSW lookup (py-spy profile of
# bench/latency.py).
_PARALLEL_FROM = 1 << 16


def _row_norms(x: np.ndarray) -> np.ndarray:
    return _row_norms_parallel(x) if x.size >= _PARALLEL_FROM else _row_norms_serial(x)


@njit(cache=True, nogil=True)
def _has_nonfinite(x: np.ndarray) -> bool:
    flat = x.reshape(-1)
    # An explicit loop: Numba cannot compile a generator inside any(), and the loop exits at the first hit.
    for i in range(flat.size):  # noqa: SIM110
        if not np.isfinite(flat[i]):
            return True
    return False


def _as_f32_matrix(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    return x


def row_norms(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, as float32."""
    return _row_norms(_as_f32_matrix(x))


def has_nonfinite(x: np.ndarray) -> bool:
    """True if any element is NaN or +-Inf."""
    return bool(_has_nonfinite(np.ascontiguousarray(x, dtype=np.float32)))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """A new float32 matrix whose rows have unit norm. Rows must be finite and non-zero."""
    x = _as_f32_matrix(x)
    norms = _row_norms(x)
    if np.any(norms == 0):
        raise ValueError("cannot normalise a zero vector")
    return x / norms[:, None]
