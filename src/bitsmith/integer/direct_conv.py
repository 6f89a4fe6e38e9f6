"""Small convolutions fused with their requantization (and max-pool) in one numba pass.

A first layer reads one or three input channels: its GEMM has 9 to 75 products per output, too
short for oneDNN's int8 kernels to pay for their set-up and for writing a float32 accumulator per
output, which a separate pass then reads back to requantize. Here each output row is summed in
float32 registers-worth of scratch, max-pooled and requantized before the next row, and only the
uint8 codes are written.

Exactness: the products (x − z)·w and every partial sum are integers below 2^24 in magnitude (the
caller proves Σ|w|·max|x − z| + |B| < 2^24), so float32 sums them exactly in any order (as the
float GEMM path does, docs/arithmetic.md §7); max is exact; the requantization is
`requant_kernels`' float64 formula, operation for operation.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from bitsmith.integer.requant_kernels import CodeRequant

_COMPILE = dict(nogil=True, cache=True, fastmath=False, boundscheck=False)

#: Convolutions with at most this many products per output (C_in·kh·kw) are fused here.
MAX_PRODUCTS = 75


def _conv_pool_requant(x, weight, bias, z_x, pad_h, pad_w, kh, kw, sh, sw,
                       z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset, out):
    """x uint8 [N, H, W, C] (any strides), weight float32 [O, C, KH, KW], bias float32 [O] →
    out uint8 [N, OH, OW, O]: stride-1 convolution (zero-point padding), (kh, kw)/(sh, sw) max-pool
    ((1, 1)/(1, 1): none), requantization with per-channel parameters."""
    n_images, height, width, channels = x.shape
    outputs, _, k_h, k_w = weight.shape
    conv_w = width + 2 * pad_w - k_w + 1
    _, out_h, out_w, _ = out.shape
    for n in numba.prange(n_images):
        plane = np.zeros((channels, height + 2 * pad_h, width + 2 * pad_w), dtype=np.float32)
        for h in range(height):
            for w in range(width):
                for c in range(channels):
                    plane[c, pad_h + h, pad_w + w] = np.float32(x[n, h, w, c]) - z_x
        row = np.empty((outputs, conv_w), dtype=np.float32)
        column_max = np.empty((outputs, conv_w), dtype=np.float32)
        for oh in range(out_h):
            for i in range(kh):
                conv_row = oh * sh + i
                for o in range(outputs):
                    b = bias[o]
                    for t in range(conv_w):
                        row[o, t] = b
                for c in range(channels):
                    for ki in range(k_h):
                        src = plane[c, conv_row + ki]
                        for kj in range(k_w):
                            for o in range(outputs):
                                wv = weight[o, c, ki, kj]
                                for t in range(conv_w):
                                    row[o, t] += wv * src[kj + t]
                if i == 0:
                    column_max[:, :] = row
                else:
                    for o in range(outputs):
                        for t in range(conv_w):
                            column_max[o, t] = max(column_max[o, t], row[o, t])
            for ow in range(out_w):
                for o in range(outputs):
                    best = column_max[o, ow * sw]
                    for j in range(1, kw):
                        best = max(best, column_max[o, ow * sw + j])
                    v = np.float64(best) - z_in
                    if clamped:
                        v = min(max(v, v_min[o]), v_max[o])
                    out[n, oh, ow, o] = np.uint8(min(max(np.floor(v * scale[o] + offset[o]), lo), hi) + code_offset)


_KERNELS = (numba.njit(parallel=False, **_COMPILE)(_conv_pool_requant),
            numba.njit(parallel=True, **_COMPILE)(_conv_pool_requant))


class DirectConvRequant:
    """A stride-1 Conv2d of uint8 carriers (zero point `z_x` as the carrier holds it) with integer
    weights and bias, optionally max-pooled, requantized by `requant` (a CodeRequant's parameters)
    into uint8 codes [N, O, OH, OW], channels-last."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, z_x: int, padding, requant: CodeRequant,
                 out_shape: tuple[int, int, int], pool=None):
        self.weight = weight.to(torch.float32).contiguous().numpy()
        self.bias = (bias.to(torch.float32) if bias is not None else torch.zeros(weight.shape[0])).contiguous().numpy()
        self.z_x, self.padding = float(z_x), tuple(padding)
        self.pool = pool or ((1, 1), (1, 1))
        self.out_shape = tuple(out_shape)
        channels = weight.shape[0]
        # The requantization's parameters per channel (a CodeRequant tiles them; the first C are the channels').
        z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset = requant.args
        self.args = (z_in, scale[:channels].copy(), offset[:channels].copy(), v_min[:channels].copy(),
                     v_max[:channels].copy(), clamped, lo, hi, code_offset)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out = torch.empty((n, *self.out_shape), dtype=torch.uint8, memory_format=torch.channels_last)
        (kh, kw), (sh, sw) = self.pool
        parallel = n > 1 and torch.get_num_threads() > 1
        _KERNELS[parallel](x.permute(0, 2, 3, 1).numpy(), self.weight, self.bias, self.z_x, *self.padding,
                           kh, kw, sh, sw, *self.args, out.permute(0, 2, 3, 1).numpy())
        return out
