"""Numba kernels and vector indexes. No gRPC and no torch here: arrays in, arrays out.

Kernels never validate (a compiled loop cannot raise a useful error); the Python functions that call
them check dtypes, shapes and ranges first.
"""

import numba

# Searches run concurrently from the server's worker threads; Numba's default fallback layer (workqueue)
# aborts the process when parallel kernels are entered from several threads at once. OpenMP and TBB do not.
numba.config.THREADING_LAYER = "threadsafe"  # type: ignore[attr-defined]

from kernels.exact import ExactIndex  # noqa: E402
from kernels.normalize import has_nonfinite, l2_normalize, row_norms  # noqa: E402
from kernels.topk import topk_inner_product  # noqa: E402

__all__ = ["ExactIndex", "has_nonfinite", "l2_normalize", "row_norms", "topk_inner_product"]
