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

def _requant(layer: HlsLayer, acc: np.ndarray) -> np.ndarray:
    """acc [N, och, pixels] → the layer's folded requant (clip unless RAW)."""
    inc = np.asarray(layer.inc, dtype=np.int64).reshape(1, -1, 1)
    bias = np.asarray(layer.bias, dtype=np.int64).reshape(1, -1, 1)
    y = hls_requant(acc, inc, bias, layer.l_shift, layer.out_lo, layer.out_hi, clip=not layer.raw)
    return y.reshape(acc.shape[0], layer.ofm_ch, layer.ofm_row, layer.ofm_col)


def _conv(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    k, s = layer.k, layer.s
    top, left, bottom, right = layer.pads
    x = x.reshape(-1, layer.ifm_ch, layer.ifm_row, layer.ifm_col)
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=layer.pad_val)
    rows, cols = s * (layer.ofm_row - 1) + 1, s * (layer.ofm_col - 1) + 1
    icg, ocg = layer.ifm_ch // layer.groups, layer.ofm_ch // layer.groups
    acc = []
    for g in range(layer.groups):
        xg = x[:, g * icg:(g + 1) * icg]
        # im2col with the terms in the weights' [kc][kr][ich/groups] order.
        patches = [xg[:, :, kr:kr + rows:s, kc:kc + cols:s] for kc in range(k) for kr in range(k)]
        columns = np.stack(patches, axis=1).reshape(x.shape[0], layer.terms, -1)     # [N, K, pixels]
        acc.append(np.matmul(layer.weights[g * ocg:(g + 1) * ocg], columns))          # [N, och/groups, pixels]
    return _requant(layer, np.concatenate(acc, axis=1))


def _maxpool(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    k, s = layer.k, layer.s
    x = x.reshape(-1, layer.ifm_ch, layer.ifm_row, layer.ifm_col)
    rows, cols = s * (layer.ofm_row - 1) + 1, s * (layer.ofm_col - 1) + 1
    windows = [x[:, :, ky:ky + rows:s, kx:kx + cols:s] for ky in range(k) for kx in range(k)]
    return np.max(np.stack(windows), axis=0)


def _reorg(layer: HlsLayer, x: np.ndarray) -> np.ndarray:
    """out[c·S² + i·S + j, y, x] = in[c, y·S + i, x·S + j]."""
    s = layer.s
    x = x.reshape(-1, layer.ifm_ch, layer.ofm_row, s, layer.ofm_col, s)          # [N, c, y, i, x, j]
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(-1, layer.ofm_ch, layer.ofm_row, layer.ofm_col)


def _concat(layer: HlsLayer, parts: list[np.ndarray]) -> np.ndarray:
    n = parts[0].shape[0]
    return np.concatenate([p.reshape(n, c, layer.ofm_row, layer.ofm_col) for p, c in zip(parts, layer.in_chs)], axis=1)


def _add(layer: HlsLayer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    acc = a.reshape(n, layer.ofm_ch, -1) * layer.m_a + b.reshape(n, layer.ofm_ch, -1) * layer.m_b
    return _requant(layer, acc)


def run_hls_layers(parsed: list[HlsLayer], input_codes) -> list[np.ndarray]:
    """Every layer's output, [N, C, H, W] int64, computed from the parsed files only, in the order
    of `parsed`. The input codes are the one tensor the layers read that none of them produces."""
    produced = {layer.name for layer in parsed}
    inputs = {name for layer in parsed for name in layer.inputs} - produced
    if len(inputs) != 1:
        raise ValueError(f"the layers read {sorted(inputs)} besides each other's outputs; expected one input")
    acts = {inputs.pop(): np.asarray(input_codes, dtype=np.int64)}
    outputs = []
    for layer in parsed:
        ins = [acts[name] for name in layer.inputs]
        if layer.kind == "conv":
            y = _conv(layer, ins[0])
        elif layer.kind == "pool":
            y = _maxpool(layer, ins[0])
        elif layer.kind == "reorg":
            y = _reorg(layer, ins[0])
        elif layer.kind == "concat":
            y = _concat(layer, ins)
        else:
            y = _add(layer, *ins)
        acts[layer.name] = y
        outputs.append(y)
    return outputs
