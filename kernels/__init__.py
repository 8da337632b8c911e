"""Numba kernels and vector indexes. No gRPC and no torch here: arrays in, arrays out.

Kernels never validate (a compiled loop cannot raise a useful error); the Python functions that call
them check dtypes, shapes and ranges first.
"""

from kernels.exact import ExactIndex
from kernels.normalize import has_nonfinite, l2_normalize, row_norms
from kernels.topk import topk_inner_product

__all__ = ["ExactIndex", "has_nonfinite", "l2_normalize", "row_norms", "topk_inner_product"]
