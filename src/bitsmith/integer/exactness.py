"""When integer arithmetic may run in floats, exactly (docs/arithmetic.md §7).

Integers of magnitude below 2^24 (2^53) are exact in float32 (float64), and so is every sum and
product that stays below that bound, in any order. The reference interpreter and the fast engine
both pick their compute dtype here, from a static bound on the values a layer can produce.
"""

from __future__ import annotations

import torch

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
def compute_dtype(bound: int) -> torch.dtype:
    """The cheapest dtype in which every integer of magnitude below `bound` is exact."""
    if bound < FLOAT32_EXACT:
        return torch.float32
    if bound < FLOAT64_EXACT:
        return torch.float64
    return torch.int64


def float32_gemm_is_ieee() -> bool:
    """False when the user allowed reduced-precision (TF32/BF16) float32 matmuls or convolutions.

    The exactness argument of §7 needs IEEE float32 products and sums; with such a setting the
    engine computes those layers in float64 instead.
    """
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = torch.backends.mkldnn
    settings = [getattr(mkldnn, "fp32_precision", "none")]
    settings += [getattr(getattr(mkldnn, part, None), "fp32_precision", "none") for part in ("matmul", "conv")]
    return all(v in ("none", "ieee") for v in settings)


def gemm_dtype(bound: int, ieee_float32: bool) -> torch.dtype:
    dtype = compute_dtype(bound)
    return torch.float64 if dtype == torch.float32 and not ieee_float32 else dtype
