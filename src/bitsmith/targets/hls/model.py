"""The parsed HLS layers computed in numpy (int64) from the files alone: what the C++ reference
computes, written a second time in Python. Its requant (`hls_requant`, the source's folded
inc/bias/T form) is deliberately separate from `bitsmith.integer.arithmetic.requantize`: it checks
that the exported constants reproduce the IR's arithmetic, so it must not share that code."""

from __future__ import annotations

import numpy as np

from .layers import HlsLayer


def hls_requant(acc: np.ndarray, inc: np.ndarray, bias: np.ndarray, T: int, lo: int, hi: int,
                clip: bool = True) -> np.ndarray:
    """The source's requant `clip((acc·inc + bias + 2^(T−1)) >> T, lo, hi)` (floor shift).

    `inc` / `bias` broadcast against `acc` (one per channel along dimension 1). Works on int64
    arrays (the exporter proves no overflow) and on object arrays of Python ints (exact always).
    """
    rounding = (1 << (T - 1)) if T > 0 else 0
    y = (acc * inc + bias + rounding) >> T
    return np.minimum(np.maximum(y, lo), hi) if clip else y



# -- the numpy model of the layers -------------------------------------------------------------

def _conv(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    k, s, p = layer.k, layer.s, layer.p
    x = x.reshape(-1, layer.ifm_ch, layer.ifm_row, layer.ifm_col)
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=layer.pad_val)
    rows, cols = s * (layer.ofm_row - 1) + 1, s * (layer.ofm_col - 1) + 1
    # im2col with the terms in the weights' [kc][kr][ich] order.
    patches = [x[:, :, kr:kr + rows:s, kc:kc + cols:s] for kc in range(k) for kr in range(k)]
    columns = np.stack(patches, axis=1).reshape(x.shape[0], layer.terms, -1)   # [N, K, pixels]
    acc = np.matmul(layer.weights, columns)                                      # [N, och, pixels]
    inc = np.asarray(layer.inc, dtype=np.int64).reshape(1, -1, 1)
    bias = np.asarray(layer.bias, dtype=np.int64).reshape(1, -1, 1)
    y = hls_requant(acc, inc, bias, layer.l_shift, layer.out_lo, layer.out_hi, clip=not layer.raw)
    return y.reshape(x.shape[0], layer.ofm_ch, layer.ofm_row, layer.ofm_col)


def _maxpool(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    k, s = layer.k, layer.s
    x = x.reshape(-1, layer.ifm_ch, layer.ifm_row, layer.ifm_col)
    rows, cols = s * (layer.ofm_row - 1) + 1, s * (layer.ofm_col - 1) + 1
    windows = [x[:, :, ky:ky + rows:s, kx:kx + cols:s] for ky in range(k) for kx in range(k)]
    return np.max(np.stack(windows), axis=0)


def run_hls_layers(parsed: list[HlsLayer], input_codes) -> list[np.ndarray]:
    """Every layer's output, [N, C, H, W] int64, computed from the parsed files only."""
    x = np.asarray(input_codes, dtype=np.int64)
    outputs = []
    for layer in parsed:
        x = _conv(layer, x) if layer.kind == "conv" else _maxpool(layer, x)
        outputs.append(x)
    return outputs
