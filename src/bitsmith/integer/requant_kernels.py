"""Requantization to 8-bit codes in one pass, optionally after a max-pool (numba).

The fast engine's float64 requantization (`engine.FloatRequant`) as torch operations is five or
six passes over the accumulator; here it is one loop that reads each accumulator once and writes
a uint8 code, with the max-pool that may precede it (`engine._Compiler._pool_first`) in the same
loop. The arithmetic is FloatRequant's, operation for operation, in float64:

    v = acc − z_in;  v = clamp(v, A_c, B_c) (only when FloatRequant needs it);
    q = clamp(floor(v · scale_c + offset_c), lo, hi);  stored as q + code_offset (a uint8)

and `float_requant` proves each of those operations exact for the layer, whether or not the
multiply and add are fused, so the codes equal the reference interpreter's. No fastmath: nothing
is reordered.

Arrays are [N, P, C] views (P = pixels) of channels-last tensors, so the inner loop over channels
runs over contiguous memory.
"""

from __future__ import annotations


import numba
import numpy as np
import torch

#: How every engine kernel is compiled: no fastmath (nothing reordered), one thread, cached on disk.
COMPILE = dict(nogil=True, cache=True, fastmath=False, boundscheck=False)
INLINE = dict(inline="always", nogil=True, fastmath=False, boundscheck=False)


@numba.njit(**INLINE)
def requant_value(acc, z_in, scale, offset, v_min, v_max, clamped, lo, hi):
    """The code (float64) of one accumulator: FloatRequant's operations, one by one."""
    v = np.float64(acc) - z_in
    if clamped:
        v = min(max(v, v_min), v_max)
    return min(max(np.floor(v * scale + offset), lo), hi)


@numba.njit(**INLINE)
def _requant_row(src, dst, z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset):
    """dst[j] = the code of src[j] (+ code_offset), converted to dst's dtype (uint8 carriers, or
    float32 codes for the single-image program: exact either way, the code is an integer in range);
    the saturation clamp in its own loop, so that the common loop has no branch."""
    if clamped:
        for j in range(src.shape[0]):
            dst[j] = requant_value(src[j], z_in, scale[j], offset[j], v_min[j], v_max[j], True, lo, hi) + code_offset
    else:
        for j in range(src.shape[0]):
            dst[j] = requant_value(src[j], z_in, scale[j], offset[j], 0.0, 0.0, False, lo, hi) + code_offset


def _requant_rows(acc, z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset, out):
    """acc [R, B] → out [R, B]; the parameters are per column (tiled channels, so rows are long)."""
    for r in range(acc.shape[0]):
        _requant_row(acc[r], out[r], z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset)


def _pool_requant_rows(acc, channels, kh, kw, sh, sw, z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset,
                       out):
    """acc [N, H, W·C] → out [N, OH, OW·C]: window maxima, requantized; the parameters are tiled
    over OW·C. Maxima first over the kh input rows (whole rows at a time), then over kw neighbours
    (max is exact in any dtype)."""
    n_images, _, row_in = acc.shape
    _, out_h, row_out = out.shape
    out_w = row_out // channels
    for n in range(n_images):
        column_max = np.empty(row_in, dtype=acc.dtype)
        best = np.empty(row_out, dtype=acc.dtype)
        for oh in range(out_h):
            first = acc[n, oh * sh]
            for k in range(row_in):
                column_max[k] = first[k]
            for i in range(1, kh):
                row = acc[n, oh * sh + i]
                for k in range(row_in):
                    column_max[k] = max(column_max[k], row[k])
            for ow in range(out_w):
                src, dst = ow * sw * channels, ow * channels
                for c in range(channels):
                    best[dst + c] = column_max[src + c]
                for j in range(1, kw):
                    right = src + j * channels
                    for c in range(channels):
                        best[dst + c] = max(best[dst + c], column_max[right + c])
            _requant_row(best, out[n, oh], z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset)


def _pool_requant_strided(acc, kh, kw, sh, sw, z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset, out):
    """acc [N, H, W, C] with any strides (an NCHW tensor's permuted view) → out [N, OH, OW, C];
    the parameters are per channel. For the small batches of the float path: no layout copy."""
    n_images, _, width, channels = acc.shape
    _, out_h, out_w, _ = out.shape
    for n in range(n_images):
        column_max = np.empty((width, channels), dtype=acc.dtype)
        for oh in range(out_h):
            for w in range(width):
                for c in range(channels):
                    column_max[w, c] = acc[n, oh * sh, w, c]
            for i in range(1, kh):
                for w in range(width):
                    for c in range(channels):
                        column_max[w, c] = max(column_max[w, c], acc[n, oh * sh + i, w, c])
            for ow in range(out_w):
                for c in range(channels):
                    best = column_max[ow * sw, c]
                    for j in range(1, kw):
                        best = max(best, column_max[ow * sw + j, c])
                    q = requant_value(best, z_in, scale[c], offset[c], v_min[c], v_max[c], clamped, lo, hi)
                    out[n, oh, ow, c] = np.uint8(q + code_offset)


def _requant_planes(acc, z_in, scale, offset, v_min, v_max, clamped, lo, hi, code_offset, out):
    """acc [N, C, P] (an NCHW tensor) → out [N, P, C] (its channels-last codes); the parameters
    are per channel. Reads whole channel planes, so an NCHW accumulator needs no layout copy."""
    n_images, channels, pixels = acc.shape
    for n in range(n_images):
        for c in range(channels):
            src, dst = acc[n, c], out[n, :, c]
            s, o, a, b = scale[c], offset[c], v_min[c], v_max[c]
            if clamped:
                for p in range(pixels):
                    dst[p] = np.uint8(requant_value(src[p], z_in, s, o, a, b, True, lo, hi) + code_offset)
            else:
                for p in range(pixels):
                    dst[p] = np.uint8(requant_value(src[p], z_in, s, o, 0.0, 0.0, False, lo, hi) + code_offset)


# One thread per call: the engine runs chunks side by side on its own workers instead. (numba's
# OpenMP layer would also make a process that used it unable to fork: a DataLoader worker would
# be terminated.)
_REQUANT = numba.njit(**COMPILE)(_requant_rows)
_POOL_REQUANT = numba.njit(**COMPILE)(_pool_requant_rows)
_POOL_REQUANT_STRIDED = numba.njit(**COMPILE)(_pool_requant_strided)
_REQUANT_PLANES = numba.njit(**COMPILE)(_requant_planes)


#: Elements per row of `_requant_rows`: rows this long keep the vector loop busy.
ROW = 512


class CodeRequant:
    """A FloatRequant (per tensor or per channel) writing uint8 codes shifted by `code_offset`
    (codes in [lo, hi] land in [0, 255]), for accumulators of one per-image shape: [C] or
    [C, H, W], float32 or float64, optionally max-pooled first (`pool` = (kernel, stride)).
    4-d results are channels-last. `one_image_hwc` runs it on one image's channels-last arrays
    into a given output of any dtype (the single-image program's float32 codes, offset 0)."""

    def __init__(self, requant, shape: tuple[int, ...], z_in: int, code_offset: int, pool=None,
                 uint8: bool = True):
        if uint8 and not (0 <= requant.lo + code_offset and requant.hi + code_offset <= 255):
            raise ValueError("codes do not fit uint8 with this offset")
        self.shape, self.pool = tuple(shape), pool
        channels = self.shape[0]
        if pool is not None:
            (kh, kw), (sh, sw) = pool
            self.out_hw = ((shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1)
            repeats = self.out_hw[1]  # one output row of OW pixels
        elif len(shape) == 3:
            pixels = shape[1] * shape[2]
            repeats = max(k for k in range(1, pixels + 1) if pixels % k == 0 and (k * channels <= ROW or k == 1))
        else:
            repeats = 1
        self.width = repeats * channels

        def tiled(t):
            per_channel = np.broadcast_to(t.reshape(-1).numpy().astype(np.float64), (channels,))
            return np.ascontiguousarray(np.tile(per_channel, repeats))

        self.clamped = requant.v_min is not None
        zeros = np.zeros(self.width)
        self.args = (float(z_in), tiled(requant.scale), tiled(requant.offset),
                     tiled(requant.v_min) if self.clamped else zeros, tiled(requant.v_max) if self.clamped else zeros,
                     self.clamped, float(requant.lo), float(requant.hi), int(code_offset))
        # per channel (the first `channels` of each tiled row), for `_requant_planes`
        self.channel_args = (self.args[0], *(np.ascontiguousarray(t[:channels]) for t in self.args[1:5]),
                             *self.args[5:])

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        """Codes of accumulators [N, *shape] (any layout); 4-d results are channels-last."""
        n = acc.shape[0]
        if self.pool is not None and not acc.is_contiguous(memory_format=torch.channels_last):
            (kh, kw), (sh, sw) = self.pool
            out = torch.empty((n, self.shape[0], *self.out_hw), dtype=torch.uint8, memory_format=torch.channels_last)
            _POOL_REQUANT_STRIDED(acc.permute(0, 2, 3, 1).numpy(), kh, kw, sh, sw, *self.args,
                                            out.permute(0, 2, 3, 1).numpy())
            return out
        if self.pool is None and acc.dim() == 4 and not acc.is_contiguous(memory_format=torch.channels_last) \
                and acc.is_contiguous():
            # NCHW (oneDNN's choice for a one-channel input): read by planes, no transposing copy
            out = torch.empty(acc.shape, dtype=torch.uint8, memory_format=torch.channels_last)
            _REQUANT_PLANES(acc.reshape(n, self.shape[0], -1).numpy(), *self.channel_args,
                            out.permute(0, 2, 3, 1).reshape(n, -1, self.shape[0]).numpy())
            return out
        if acc.dim() == 4:
            acc = acc.contiguous(memory_format=torch.channels_last)
            nhwc = acc.permute(0, 2, 3, 1)
        else:
            nhwc = acc = acc.contiguous()
        if self.pool is None:
            out = torch.empty_like(acc, dtype=torch.uint8)
            out_rows = out.permute(0, 2, 3, 1) if out.dim() == 4 else out
            _REQUANT(nhwc.reshape(-1, self.width).numpy(), *self.args,
                               out_rows.reshape(-1, self.width).numpy())
            return out
        (kh, kw), (sh, sw) = self.pool
        oh, ow = self.out_hw
        out = torch.empty((n, self.shape[0], oh, ow), dtype=torch.uint8, memory_format=torch.channels_last)
        _POOL_REQUANT(nhwc.reshape(n, nhwc.shape[1], -1).numpy(), self.shape[0], kh, kw, sh, sw, *self.args,
                                out.permute(0, 2, 3, 1).reshape(n, oh, -1).numpy())
        return out

    def one_image_hwc(self, acc: np.ndarray, out: np.ndarray):
        """A call that requantizes (and pools) acc [H, W, C] into out [OH, OW, C], both C-contiguous
        numpy arrays made once (the views are taken here, not per call)."""
        if len(self.shape) != 3 or not (acc.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError("one_image_hwc needs C-contiguous [H, W, C] arrays of a [C, H, W] shape")
        if self.pool is None:
            rows = (acc.reshape(-1, self.width), *self.args, out.reshape(-1, self.width))
            return lambda: _REQUANT(*rows)
        (kh, kw), (sh, sw) = self.pool
        pooled = (acc.reshape(1, acc.shape[0], -1), self.shape[0], kh, kw, sh, sw, *self.args,
                  out.reshape(1, out.shape[0], -1))
        return lambda: _POOL_REQUANT(*pooled)

