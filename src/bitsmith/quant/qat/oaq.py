"""Outlier-aware weights (Park et al., ECCV 2018): most weights on a low-bit grid, the largest few
on a fine grid, both one integer tensor at one scale — so the IR's Conv2d/Linear computes it as is.

Per layer (one scale for the whole tensor, as in the paper), with b the low width, b_o the outlier
width, L = 2^(b−1) − 1 and L_o = 2^(b_o−1) − 1:

    outliers   the round(f·N) weights of largest |w| (ties at the threshold stay normal)
    t          the largest |w| among the normal weights
    s_n        max(t / L, max|w| / L_o)            normal step (the second term only when the
                                                   outliers would not fit b_o bits otherwise)
    k          the largest k ≥ 0 with max|w| · 2^k ≤ L_o · s_n
    s_o        s_n / 2^k                           the layer's one scale (a power-of-two finer)
    code       outlier: clamp(round(w / s_o), ±L_o);  normal: clamp(round(w / s_n), ±L) · 2^k

Nothing is clipped: every weight is on one of the two grids. Normal codes are multiples of 2^k
within ±L·2^k ≤ L_o, so `bitsmith.integer.outliers.outlier_split(codes, b, k)` recovers the dense
b-bit codes and the sparse outliers. Gradient: straight through (identity), as nothing clips.
"""

from __future__ import annotations

import math

import torch

from bitsmith.errors import ConfigError
from bitsmith.quant.qat.weights import WeightQuantizer

#: Outlier code widths (the paper keeps outliers at 8 or 16 bits).
OUTLIER_BITS = (8, 16)


def check_outlier_settings(fraction: float, outlier_bits: int) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"outlier_fraction={fraction!r}; allowed: a fraction in [0, 1), e.g. 0.01")
    if outlier_bits not in OUTLIER_BITS or isinstance(outlier_bits, bool):
        raise ConfigError(f"outlier_bits={outlier_bits!r}; allowed: {', '.join(map(str, OUTLIER_BITS))}")


class OutlierAwareWeight(WeightQuantizer):
    """OAQ weights: `bits`-bit normal codes, the largest `outlier_fraction` at `outlier_bits` bits.

    `code_bits` is `outlier_bits` (what the graph stores); `split_parameters(w)` gives the
    (low_bits, shift) that split those codes back into the two streams.
    """

    def __init__(self, bits: int, outlier_fraction: float = 0.01, outlier_bits: int = 8) -> None:
        super().__init__(bits, per_channel=False)
        check_outlier_settings(outlier_fraction, outlier_bits)
        if bits > outlier_bits:
            raise ConfigError(f"OAQ: {bits}-bit normal weights need outliers at least as wide; outlier_bits="
                              f"{outlier_bits}")
        self.outlier_fraction = float(outlier_fraction)
        self.code_bits = outlier_bits
        self.levels = (1 << (bits - 1)) - 1
        self.outlier_levels = (1 << (outlier_bits - 1)) - 1

    def outlier_count(self, n: int) -> int:
        """round(f·N), halves up: the number of weights selected as outliers (before ties)."""
        return math.floor(self.outlier_fraction * n + 0.5)

    def grid(self, w: torch.Tensor) -> tuple[torch.Tensor, float, int]:
        """(outlier mask, normal step s_n as a float32 value, shift k) for weights `w`."""
        a = w.detach().abs().reshape(-1)
        amax = float(a.max()) if a.numel() else 0.0
        n_out = min(self.outlier_count(a.numel()), a.numel() - 1) if a.numel() else 0
        if n_out > 0:
            t = float(torch.kthvalue(a, a.numel() - n_out).values)
            mask = w.detach().abs() > t
        else:
            t, mask = amax, torch.zeros_like(w, dtype=torch.bool)
        s_n = max(t / self.levels, amax / self.outlier_levels)
        s_n = float(torch.tensor(s_n, dtype=torch.float32))  # the float32 step, as stored
        if not s_n > 0:
            return mask, 1.0, 0  # all zero: any grid holds it
        k = 0
        while k < 62 and amax * 2.0 ** (k + 1) <= self.outlier_levels * s_n and self.levels << (k + 1) <= \
                self.outlier_levels:
            k += 1
        return mask, s_n, k

    def split_parameters(self, w: torch.Tensor) -> dict[str, int]:
        """The IR node's "outlier" attr: what storage needs to split this layer's codes
        (bitsmith.integer.outliers.outlier_split)."""
        _, _, k = self.grid(w)
        return {"low_bits": self.bits, "shift": k, "outlier_bits": self.code_bits}

    def _codes_scale(self, w):
        w = w.detach()
        mask, s_n, k = self.grid(w)
        s_o = math.ldexp(s_n, -k)  # exact: a power-of-two division of a float32
        normal = torch.clamp(torch.round(w / s_n), -self.levels, self.levels) * float(1 << k)
        outlier = torch.clamp(torch.round(w / s_o), -self.outlier_levels, self.outlier_levels)
        return torch.where(mask, outlier, normal), torch.tensor(s_o, dtype=torch.float32)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, outlier_bits={self.code_bits}, outlier_fraction={self.outlier_fraction}, "
                "per layer")
