"""Exact uint8 × int8 convolutions on AVX2, for CPUs without VNNI (bitsmith's own kernel).

The products run on `vpmaddubsw` (32 unsigned × signed byte products a cycle per port, adjacent
pairs added into 16 bits) and `vpmaddwd` by ones (pairs of those into 32 bits); the kernel is
`u8s8_avx2.c`, built with the package and called through ctypes. On this project's AVX2-only
machine it runs 2× oneDNN's float32 convolutions on the same layers (docs/arithmetic.md §7a).

Exactness. `vpmaddubsw` saturates its pair sums a0·w0 + a1·w1 at 16 bits, so a plain int8 GEMM on
it is not exact (fbgemm's answer is to quantize activations to 7 bits). Here the *weights* are
arranged so that no pair can saturate for any activation the layer can be given:

  For activations a in [a_lo, a_hi] (0 ≤ a_lo ≤ a_hi ≤ 255, the input carrier's proven range with
  the padding value), a pair (w0, w1) of one output channel reaches at most
  Σ max(w_j·a_lo, w_j·a_hi) and at least Σ min(w_j·a_lo, w_j·a_hi). A pair is *safe* when both
  stay inside [−32768, 32767]. A single weight always is: |w| ≤ 128 and a ≤ 255 give at most
  32,640. Every unsafe pair (any output channel) gives its second weight to a second, sparse set
  of weights (`pack`), so W = W_a + W_b with every pair of W_a and of W_b safe; W_b's 4-byte
  groups with a nonzero weight are run as extra entries over the same activations. Then every
  16-bit pair sum is the true integer, `vpmaddwd` and the int32 adds are exact while
  Σ|w|·a_hi < 2^31 (the caller checks), and the constant `add` = bias − z·Σw is added in wrapping
  int32 arithmetic, which is exact because the result (proved below 2^24 by the caller) fits.

Layout: the input is a channels-last uint8 tensor; it is copied once per call into a padded
[N, H+pads, W+pads, C4] buffer (C rounded up to 4, padding holding the zero point, so that a
padded position contributes w·(z − z) = 0 after the `add` correction). The output is the float32
accumulator, channels-last, as oneDNN's int8 kernels give it (`bitsmith.integer.int8_gemm`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

import numpy as np
import torch

INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
_LIBRARY = "bitsmith.integer._u8s8_avx2"  # the compiled u8s8_avx2.c (setup.py)


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they were not built (no compiler at install time) or
    the CPU lacks AVX2."""
    try:
        spec = importlib.util.find_spec(_LIBRARY)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    if not lib.bitsmith_u8s8_supported():
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.bitsmith_u8_pad.argtypes = [p, p, i, i, i, i, i, i, i, i, i, ctypes.c_uint8]
    lib.bitsmith_u8_pad.restype = None
    lib.bitsmith_u8s8_conv.argtypes = [p, i, i, i, i, i, i, p, i, p, p, i, p]
    lib.bitsmith_u8s8_conv.restype = None
    d = ctypes.c_double
    lib.bitsmith_u8s8_conv_requant.argtypes = [p, i, i, i, i, i, i, p, i, p, p, i, p, p, p, p, i, d, d, d, d, p]
    lib.bitsmith_u8s8_conv_requant.restype = None
    lib.bitsmith_u8_maxpool.argtypes = [p, p, i, i, i, i, i, i, i, i]
    lib.bitsmith_u8_maxpool.restype = None
    return lib


def available() -> bool:
    """Are the AVX2 kernels built and usable on this CPU?"""
    return _library() is not None


def safe_pairs(w: np.ndarray, a_lo: int, a_hi: int) -> np.ndarray:
    """For weights [..., 2·P] (pairs along the last axis): which pairs [..., P] keep every
    a0·w0 + a1·w1, a in [a_lo, a_hi], inside int16."""
    w = w.astype(np.int64)
    ends = np.stack([w * a_lo, w * a_hi])
    top = ends.max(axis=0).reshape(*w.shape[:-1], -1, 2).sum(axis=-1)
    bottom = ends.min(axis=0).reshape(*w.shape[:-1], -1, 2).sum(axis=-1)
    return (top <= INT16_MAX) & (bottom >= INT16_MIN)


def pack(w_groups: np.ndarray, a_lo: int, a_hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights [O, E, 4] (E groups of 4 bytes, one per activation group) → (packed weights
    [ceil(O/16), E', 16, 4], the activation group each packed entry reads [E']), E' ≥ E: the
    safe part W_a in the first E entries, then W_b's nonzero groups (module docstring)."""
    n_out, n_groups, _ = w_groups.shape
    safe = np.repeat(safe_pairs(w_groups, a_lo, a_hi), 2, axis=-1)  # [O, E, 4], per byte of its pair
    second = np.tile(np.array([False, True, False, True]), (n_out, n_groups, 1))
    moved = ~safe & second
    w_a = np.where(moved, 0, w_groups)
    w_b = np.where(moved, w_groups, 0)
    extra = np.flatnonzero(w_b.any(axis=(0, 2)))
    entries = np.concatenate([w_a, w_b[:, extra]], axis=1)
    assert safe_pairs(entries, a_lo, a_hi).all()  # a single weight is always safe (docstring)
    o_pad = -n_out % 16
    entries = np.concatenate([entries, np.zeros((o_pad, *entries.shape[1:]), entries.dtype)])
    packed = entries.reshape(-1, 16, entries.shape[1], 4).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed, dtype=np.int8), np.concatenate([np.arange(n_groups), extra])


class U8S8Conv:
    """Conv2d (groups 1) of uint8 codes with int8 weights [O, C, KH, KW]: the float32 accumulator
    Σ w·(x − z) + bias, channels-last, exactly (module docstring); padding counts as z.

    `a_range` bounds the carrier values the input can hold (z, the padding value, is added to
    it here). `pads` is (top, left, bottom, right).

    The input is copied into a padded buffer [N, Hp, Wp, Cb]. Without dilation along the width, a
    kernel row's KW·C activations are one contiguous run of that buffer (Cb = C), read 4 bytes at
    a time (the last group padded with zero weights): a one-channel 3×3 layer is 3 groups, not 9.
    With dilation, each tap's C channels are a run (Cb = C rounded up to 4)."""

    def __init__(self, weight: torch.Tensor, zero_point: int, *, stride, pads, dilation,
                 bias: torch.Tensor | None = None, a_range: tuple[int, int] = (0, 255)):
        lib = _library()
        if lib is None:
            raise RuntimeError("the AVX2 kernels are not available (u8s8.available())")
        if weight.dtype != torch.int8 or weight.dim() != 4:
            raise ValueError("U8S8Conv needs int8 weight codes [O, C, KH, KW]")
        if not 0 <= zero_point <= 255:
            raise ValueError(f"zero point {zero_point} is not a uint8 carrier value")
        self.lib = lib
        n_out, channels, kh, kw = weight.shape
        self.n_out, self.channels, self.kernel = n_out, channels, (kh, kw)
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.pads = tuple(pads)  # top, left, bottom, right
        self.zero_point = int(zero_point)
        a_lo, a_hi = min(a_range[0], zero_point), max(a_range[1], zero_point)
        hwc = weight.permute(0, 2, 3, 1).numpy().astype(np.int64)  # [O, KH, KW, C]
        if self.dilation[1] == 1:  # one run per kernel row
            self.buffer_channels = channels
            run = kw * channels
            w = np.zeros((n_out, kh, -(-run // 4) * 4), dtype=np.int64)
            w[..., :run] = hwc.reshape(n_out, kh, run)
            per_row = w.shape[2] // 4
            row, column = np.divmod(np.arange(kh * per_row), per_row)
            column = 4 * column
        else:  # one run per tap
            self.buffer_channels = -(-channels // 4) * 4
            w = np.zeros((n_out, kh, kw, self.buffer_channels), dtype=np.int64)
            w[..., :channels] = hwc
            per_tap = self.buffer_channels // 4
            tap, sub = np.divmod(np.arange(kh * kw * per_tap), per_tap)
            row, column = tap // kw, (tap % kw) * self.dilation[1] * self.buffer_channels + 4 * sub
        w = w.reshape(n_out, -1, 4)
        self.weights, groups = pack(w, a_lo, a_hi)
        self.extra_entries = len(groups) - w.shape[1]  # W_b's groups (module docstring)
        # entry e reads 4 bytes at row[e]·dh·Wp·Cb + column[e] from its output pixel's window corner
        self._row, self._column = row[groups], column[groups]
        self._layouts: dict[tuple[int, ...], tuple] = {}
        add = -self.zero_point * weight.to(torch.int64).reshape(n_out, -1).sum(dim=1)
        if bias is not None:
            add = add + bias.to(torch.int64)
        add = torch.cat([add, torch.zeros(-n_out % 16, dtype=torch.int64)])
        # reduced mod 2^32: the kernel adds in wrapping int32 arithmetic (exact, see the docstring)
        self.add = ((add.numpy() + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)

    def _layout(self, shape: tuple[int, ...]) -> tuple:
        """Per input shape [N, C, H, W], made once: (padded buffer size, output [N, OH, OW, O],
        the pad call's size arguments, the kernel's leading arguments without the buffer's
        address, the offsets array they point into). Plain ints: numpy's `.ctypes` and ctypes' conversions cost microseconds a call,
        which a single image feels."""
        got = self._layouts.get(shape)
        if got is not None:
            return got
        if len(self._layouts) >= 64:  # many batch sizes (a server): start over rather than grow
            self._layouts.clear()
        if len(shape) != 4 or shape[1] != self.channels:
            raise ValueError(f"expected [N, {self.channels}, H, W], got {shape}")
        n, _, h, w = shape
        top, left, bottom, right = self.pads
        hp, wp = h + top + bottom, w + left + right
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        out_h, out_w = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
        cb = self.buffer_channels
        # entry e reads 4 bytes at row[e]·dh·Wp·Cb + column[e] from its output pixel's window corner
        offsets = np.ascontiguousarray(self._row * (dh * wp * cb) + self._column, dtype=np.int32)
        got = self._layouts[shape] = (
            n * hp * wp * cb + 4,  # +4: zeroed by the pad call, read with zero weights
            (n, out_h, out_w, self.n_out),
            (n, h, w, self.channels, cb, top, bottom, left, right, self.zero_point),
            (hp * wp * cb, sh * wp * cb, sw * cb, n, out_h, out_w, offsets.ctypes.data, len(offsets),
             self.weights.ctypes.data, self.add.ctypes.data, self.n_out),
            offsets)  # kept alive with the address above
        return got

    def _padded(self, x: torch.Tensor) -> tuple[tuple, tuple, tuple]:
        """x (uint8 [N, C, H, W], any layout) copied into the padded buffer; (the arrays the
        arguments point into, output shape, the kernel's leading arguments)."""
        if x.dtype != torch.uint8:
            raise ValueError(f"expected uint8 codes, got {x.dtype}")
        size, out_shape, pad_args, conv_args, offsets = self._layout(tuple(x.shape))
        nhwc = x.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            nhwc = nhwc.contiguous()
        padded = torch.empty(size, dtype=torch.uint8)
        self.lib.bitsmith_u8_pad(nhwc.data_ptr(), padded.data_ptr(), *pad_args)
        # the caller holds `alive` until the kernel returns (another thread may clear the cache)
        return (padded, offsets), out_shape, (padded.data_ptr(), *conv_args)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        alive, out_shape, args = self._padded(x)
        out = torch.empty(out_shape, dtype=torch.float32)
        self.lib.bitsmith_u8s8_conv(*args, out.data_ptr())
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


class U8S8Linear:
    """x·Wᵀ + bias of uint8 codes [M, K] with int8 weights [N, K]: a 1×1 convolution of M one-pixel
    images (U8S8Conv), exactly under the same conditions."""

    def __init__(self, weight: torch.Tensor, zero_point: int, bias: torch.Tensor | None = None,
                 a_range: tuple[int, int] = (0, 255)):
        self.conv = U8S8Conv(weight.reshape(*weight.shape, 1, 1), zero_point, stride=(1, 1), pads=(0, 0, 0, 0),
                             dilation=(1, 1), bias=bias, a_range=a_range)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.reshape(*x.shape, 1, 1)).reshape(x.shape[0], -1)


class ConvRequant:
    """A U8S8Conv (or U8S8Linear) whose accumulators are requantized to uint8 codes in the kernel's
    own epilogue, with a CodeRequant's arithmetic operation for operation (`requant4` in
    u8s8_avx2.c), then max-pooled if the CodeRequant pools: max commutes with the non-decreasing
    requantization (`engine._Compiler._pool_first`), and a uint8 pool reads 1/4 of the bytes."""

    def __init__(self, layer: U8S8Conv | U8S8Linear, requant):
        self.conv = layer.conv if isinstance(layer, U8S8Linear) else layer
        self.linear = isinstance(layer, U8S8Linear)
        self.pool = requant.pool
        z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset = requant.channel_args
        o_pad = self.conv.n_out + (-self.conv.n_out % 16)

        def per_channel(t: np.ndarray) -> np.ndarray:  # one float64 per packed output channel
            out = np.zeros(o_pad)
            out[: self.conv.n_out] = np.broadcast_to(t, (self.conv.n_out,))
            return out

        self._tables = [per_channel(t) for t in (scale, offset, v_min, v_max)]
        self.tables = [t.ctypes.data for t in self._tables]  # addresses, taken once
        self.scalars = (int(clamped), float(z_in), float(lo), float(hi), float(code_offset))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        n = x.shape[0]
        alive, (_, out_h, out_w, n_out), args = conv._padded(x.reshape(*x.shape, 1, 1) if self.linear else x)
        codes = torch.empty((n, out_h, out_w, n_out), dtype=torch.uint8)
        conv.lib.bitsmith_u8s8_conv_requant(*args, *self.tables, *self.scalars, codes.data_ptr())
        if self.linear:
            return codes.reshape(n, -1)
        if self.pool is not None:
            (kh, kw), (sh, sw) = self.pool
            pooled = torch.empty((n, (out_h - kh) // sh + 1, (out_w - kw) // sw + 1, n_out), dtype=torch.uint8)
            conv.lib.bitsmith_u8_maxpool(codes.data_ptr(), pooled.data_ptr(), n, out_h, out_w, n_out, kh, kw, sh, sw)
            codes = pooled
        return codes.permute(0, 3, 1, 2)
