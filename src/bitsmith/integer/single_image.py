"""One image at a time on the fast engine: a layer is one or two compiled calls on buffers made once.

At batch 1 the engine's torch program pays per operation (dispatch, allocation, layout), not per
multiply-add: LeNet-5 is a few hundred thousand MACs, and forty small torch calls cost far more
than that arithmetic here. This program runs the same exact arithmetic with one numba call per
step on numpy buffers allocated when the plan is compiled:

    QuantizeInput   the float32 operations of `arithmetic.quantize_input`, and the finite check
    Conv2d/Linear   im2col of the centred codes x − z_in (zeros for padding), then one float32
                    GEMM with the bias (torch.addmm into the layer's buffer), or for a large
                    convolution one F.conv2d of the centred codes (`DIRECT_CONV_MACS`): every
                    value the layer can produce is an integer below 2^24, so the sums are exact in
                    any order (docs/arithmetic.md §7, the same proof as the torch program's).
                    A large convolution reads and writes channels-last buffers where only
                    Requants touch them (`_Builder.channels_last`): oneDNN's NHWC kernels, and no
                    layout copies
    Requant         `FloatRequant`'s float64 operations, one by one, after the max-pool reading it
                    when there is one (`engine._Compiler._pool_first`); codes stay float32
    MaxPool2d, Add, Flatten   a window maximum, the float64 weighted sum, a view

The program exists only where every step is provably exact this way and no accumulator width
check is needed; otherwise (and for other ops) the engine keeps its torch program. The buffers
belong to the plan, so a call holds the plan's lock; a second thread calling at the same moment
takes the torch program instead of waiting.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

from bitsmith.errors import GraphError
from bitsmith.integer.exactness import FLOAT32_EXACT
from bitsmith.integer.graph import IntegerGraph
from bitsmith.integer.ops import as_pads, symmetric_padding
from bitsmith.integer.reference import require_finite
from bitsmith.integer.ops import as_pair as _pair
from bitsmith.integer.requant_kernels import COMPILE, INLINE, CodeRequant, requant_value

#: Convolutions of at least this many multiply-adds per image run as one F.conv2d call
#: (`_Builder.direct_conv`), smaller ones as im2col + GEMM. Measured one thread, one image, on an
#: AVX2 EPYC: VGG-tiny ×0.25's 2.36M-MAC convs 208 µs direct against 342 µs (im2col 178 + GEMM 164),
#: its 1.18M-MAC ones about even, LeNet-5's 0.24M-MAC conv2 80 µs against 54 µs.
DIRECT_CONV_MACS = 1_000_000


@numba.njit(**COMPILE)
def _quantize(x, scale, z, low, high, finite, out):
    """out = clamp(round_half_even(x / scale), q_min − z, q_max − z) + z in float32, as
    `arithmetic.quantize_input`; False when x holds a NaN, or an infinity where `finite` (a wider
    input, already checked, may round to ±inf in float32: that saturates, as in the reference)."""
    for i in range(x.shape[0]):
        v = x[i]
        if np.isnan(v) or (finite and np.isinf(v)):
            return False
        q = np.rint(v / scale)
        out[i] = min(max(q, low), high) + z
    return True


@numba.njit(**COMPILE)
def _im2col(x, z, kh, kw, sh, sw, top, left, dh, dw, out_h, out_w, cols):
    """cols[(c·kh + i)·kw + j, oy·OW + ox] = x[c, oy·sh − top + i·dh, ox·sw − left + j·dw] − z, or 0
    outside the map (the IR pads the centred input with zeros)."""
    channels, height, width = x.shape
    for c in range(channels):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                for oy in range(out_h):
                    iy = oy * sh - top + i * dh
                    base = oy * out_w
                    if iy < 0 or iy >= height:
                        for ox in range(out_w):
                            row[base + ox] = 0.0
                        continue
                    for ox in range(out_w):
                        ix = ox * sw - left + j * dw
                        row[base + ox] = x[c, iy, ix] - z if 0 <= ix < width else 0.0


@numba.njit(**COMPILE)
def _requant(acc, z_in, scale, offset, v_min, v_max, clamped, lo, hi, out):
    """out[c, y, x] = the Requant of acc[c, y, x] (`requant_kernels.requant_value`); either array
    may be a channels-last buffer's [C, H, W] view."""
    for c in range(out.shape[0]):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                out[c, y, x] = requant_value(acc[c, y, x], z_in, scale[c], offset[c], v_min[c], v_max[c], clamped,
                                             lo, hi)


@numba.njit(**INLINE)
def _window_max(x, c, oy, ox, kh, kw, sh, sw):
    best = x[c, oy * sh, ox * sw]
    for i in range(kh):
        for j in range(kw):
            best = max(best, x[c, oy * sh + i, ox * sw + j])
    return best


@numba.njit(**COMPILE)
def _pool_requant(acc, z_in, scale, offset, v_min, v_max, clamped, lo, hi, kh, kw, sh, sw, out):
    """out[c, oy, ox] = the Requant of the maximum of acc[c] over the kh×kw window at (oy·sh, ox·sw).
    The common 2×2 window of stride 2 reads two rows and has no inner window loop (4× faster on
    VGG-tiny's pools), and the saturation clamp is decided once a row."""
    channels, out_h, out_w = out.shape
    for c in range(channels):
        s, o, a, b = scale[c], offset[c], v_min[c], v_max[c]
        for oy in range(out_h):
            dst = out[c, oy]
            if kh == 2 and kw == 2 and sh == 2 and sw == 2:
                r0, r1 = acc[c, 2 * oy], acc[c, 2 * oy + 1]
                if clamped:
                    for ox in range(out_w):
                        best = max(max(r0[2 * ox], r0[2 * ox + 1]), max(r1[2 * ox], r1[2 * ox + 1]))
                        dst[ox] = requant_value(best, z_in, s, o, a, b, True, lo, hi)
                else:
                    for ox in range(out_w):
                        best = max(max(r0[2 * ox], r0[2 * ox + 1]), max(r1[2 * ox], r1[2 * ox + 1]))
                        dst[ox] = requant_value(best, z_in, s, o, 0.0, 0.0, False, lo, hi)
            else:
                for ox in range(out_w):
                    best = _window_max(acc, c, oy, ox, kh, kw, sh, sw)
                    dst[ox] = requant_value(best, z_in, s, o, a, b, clamped, lo, hi)


@numba.njit(**COMPILE)
def _maxpool(x, kh, kw, sh, sw, out):
    channels, out_h, out_w = out.shape
    for c in range(channels):
        for oy in range(out_h):
            for ox in range(out_w):
                out[c, oy, ox] = _window_max(x, c, oy, ox, kh, kw, sh, sw)


@numba.njit(**COMPILE)
def _window_sum(x, z, kh, kw, sh, sw, out):
    """out[c, oy, ox] = Σ over the kh×kw window of (x − z), in float64 (integers below 2^53)."""
    channels, out_h, out_w = out.shape
    for c in range(channels):
        for oy in range(out_h):
            for ox in range(out_w):
                total = 0.0
                for i in range(kh):
                    for j in range(kw):
                        total += np.float64(x[c, oy * sh + i, ox * sw + j]) - z
                out[c, oy, ox] = total


@numba.njit(**COMPILE)
def _reorg(x, r, out):
    """out[(c·r + i)·r + j, y, x'] = x[c, y·r + i, x'·r + j] (F.pixel_unshuffle)."""
    channels, out_h, out_w = x.shape[0], out.shape[1], out.shape[2]
    for c in range(channels):
        for i in range(r):
            for j in range(r):
                plane = out[(c * r + i) * r + j]
                for y in range(out_h):
                    for xx in range(out_w):
                        plane[y, xx] = x[c, y * r + i, xx * r + j]


@numba.njit(**COMPILE)
def _add(a, b, za, zb, ma, mb, out):
    """out = (a − z_a)·m_a + (b − z_b)·m_b, each partial result an integer below 2^53 in float64."""
    for i in range(out.shape[0]):
        out[i] = (np.float64(a[i]) - za) * ma + (np.float64(b[i]) - zb) * mb


@dataclass
class SingleImageProgram:
    """The compiled steps for one image; `run` is thread-safe (see the module docstring)."""

    image: np.ndarray  # float32 [C·H·W]: the input image is copied here
    quantize: Callable[[bool], bool]  # (refuse ±inf) → False for a non-finite input
    steps: list[Callable[[], object]]
    output: np.ndarray  # the output codes, float32, the graph output's shape
    buffers: dict[str, np.ndarray]  # every tensor's, by name (float32, float64 for wide accumulators)
    needs_check: bool  # some accumulator could leave its declared width: only for check_overflow=False
    lock: threading.Lock
    parallel: frozenset[int] = frozenset()  # the steps that use every torch thread; the rest run on one

    def __post_init__(self):
        self.schedule = [(step, i in self.parallel) for i, step in enumerate(self.steps)]

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """int64 output codes [1, …] of one float image [1, …], or None when another thread holds
        the buffers. Raises GraphError for a NaN or infinite input."""
        x = x.detach()
        wider = x.dtype != torch.float32
        if wider:  # checked before the cast: a finite float64 may round to ±inf in float32
            require_finite(x)
        if not self.lock.acquire(blocking=False):
            return None
        try:
            self.image[:] = x.reshape(-1).to(torch.float32).numpy()  # quantize_input's first step
            if not self.quantize(not wider):
                raise GraphError("graph input contains NaN or infinity")
            self._run_steps()
            return torch.from_numpy(self.output.astype(np.int64)).unsqueeze(0)
        finally:
            self.lock.release()

    def _run_steps(self) -> None:
        """The steps, the small GEMMs on one thread: at one image an OpenMP fork and join costs
        more than a small GEMM saves from it (LeNet-5 on 2 threads: 131 µs of steps against 84 µs
        on one). MKL's thread-local setting does it (`_mkl_local_threads`), not
        torch.set_num_threads, which would also change the default of threads started meanwhile."""
        local = _mkl_local_threads()
        if local is None or torch.get_num_threads() == 1:
            for step in self.steps:
                step()
            return
        before = local(1)
        try:
            for step, parallel in self.schedule:
                if parallel:
                    local(before)
                    step()
                    local(1)
                else:
                    step()
        finally:
            local(before)


@functools.cache
def _mkl_local_threads():
    """MKL's `mkl_set_num_threads_local` (C name `MKL_Set_Num_Threads_Local`) in PyTorch's CPU
    library (it sets the MKL threads of the calling thread only and returns the previous setting;
    0 = the global one), or None when this build has none: torch.addmm's float GEMMs run on MKL.
    Looked up once."""
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        function = library.MKL_Set_Num_Threads_Local   # the C interface (the lower-case names are Fortran: by reference)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


class _Unsupported(Exception):
    """The graph has a step this program does not cover exactly: keep the torch program."""


def compile_single_image(compiler) -> SingleImageProgram | None:
    """The single-image program of the graph `compiler` (an `engine._Compiler` whose torch program
    is compiled, so its value ranges are known), or None where some step is not covered."""
    try:
        return _Builder(compiler).build()
    except _Unsupported:
        return None


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _as_chw(shape) -> tuple[int, int, int]:
    shape = tuple(shape)
    return shape if len(shape) == 3 else (int(np.prod(shape)), 1, 1)


class _Builder:
    def __init__(self, compiler):
        self.c = compiler
        self.g: IntegerGraph = compiler.g
        self.buffers: dict[str, np.ndarray] = {}  # [C, H, W] per tensor, float32 or float64
        self.steps: list[Callable[[], object]] = []
        self.needs_check = any(step.check is not None for step in compiler.steps)
        self.hwc: set[str] = set()
        self.parallel: set[int] = set()   # indices of the steps of DIRECT_CONV_MACS and more

    def float_dtype(self, name: str) -> torch.dtype:
        """The dtype the torch program carries an accumulator in (`engine._Compiler` proved every
        value and partial sum exact there; its float64 kernels here are exact below 2^53 too)."""
        dtype = self.c.dtype[name]
        if dtype not in _NUMPY:
            raise _Unsupported
        return dtype

    def buffer(self, name: str, dtype=np.float32) -> np.ndarray:
        """The tensor's buffer, made (float32 unless its producer asks for float64) on first use: a
        [C, H, W] array, which for a tensor in `self.hwc` is the view of [H, W, C] memory."""
        if name not in self.buffers:
            c, h, w = _as_chw(self.g.tensors[name].shape)
            self.buffers[name] = (np.zeros((h, w, c), dtype=dtype).transpose(2, 0, 1) if name in self.hwc
                                  else np.zeros((c, h, w), dtype=dtype))
        return self.buffers[name]

    def flat(self, name: str, shape) -> np.ndarray:
        """A reshaped view of the tensor's buffer; a channels-last buffer cannot be one (numpy would
        copy, and the step would write to the copy), so the graph keeps the torch program."""
        array = self.buffer(name)
        if not array.flags.c_contiguous:
            raise _Unsupported
        return array.reshape(shape)

    def is_direct_conv(self, node) -> bool:
        """Does this node run as one F.conv2d call (`direct_conv`)?"""
        if node.op != "Conv2d" or symmetric_padding(node.attrs["padding"]) is None:
            return False
        return self.g.macs(node) >= DIRECT_CONV_MACS

    def channels_last(self) -> set[str]:
        """Tensors kept channels-last: (a) a direct convolution's input made by a Requant (pooled
        or not) where every reader is a direct convolution, and (b) a convolution's accumulator
        where every reader is a Requant writing a tensor of (a). A Requant between two of them runs
        on contiguous [H, W, C] rows (`CodeRequant.one_image_hwc`), and the convolutions read and
        write oneDNN's NHWC layout with no copies. Other kernels index [c, y, x] views, so any
        layout is correct for them; reshaping needs contiguous buffers (`flat`)."""
        g, c = self.g, self.c
        users = lambda name: c.consumers.get(name, [])   # noqa: E731  (the compiler's reader lists)
        writes = {}   # the tensor a Requant's step writes: its pool's output when fused with it
        for node in g.nodes:
            if node.op == "Requant":
                fused = c._pool_first(node)
                writes[node.name] = users(node.output)[0].output if fused else node.output
        inputs = set()
        for node in g.nodes:
            src = node.inputs[0] if node.inputs else None
            if (self.is_direct_conv(node) and g.tensors[src].shape[0] > 1 and src not in g.outputs
                    and all(self.is_direct_conv(user) for user in users(src))):
                inputs.add(src)
        made_by_requant = set(writes.values())
        hwc = inputs & made_by_requant
        for node in g.nodes:
            readers = users(node.output)
            if (node.op == "Conv2d" and node.output not in g.outputs and readers
                    and all(user.op == "Requant" and writes[user.name] in hwc for user in readers)):
                hwc.add(node.output)
        return hwc

    def build(self) -> SingleImageProgram:
        g, c = self.g, self.c
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise _Unsupported
        first = g.nodes[0] if g.nodes else None
        if first is None or first.op != "QuantizeInput" or first.inputs[0] != g.inputs[0]:
            raise _Unsupported
        image = np.zeros(int(np.prod(g.input_spec.shape)), dtype=np.float32)
        self.hwc = self.channels_last()
        quantize = self.quantize_input(first, image)
        deferred = {}
        for node in g.nodes[1:]:
            if node.op == "Requant" and c._pool_first(node):
                deferred[node.output] = node
            elif node.op == "MaxPool2d" and node.inputs[0] in deferred:
                self.requant(deferred.pop(node.inputs[0]), node.output, pool=node)
            elif node.op == "Requant":
                self.requant(node, node.output)
            elif node.op in ("Conv2d", "Linear"):
                self.conv_or_linear(node)
            elif node.op == "MaxPool2d":
                self.maxpool(node)
            elif node.op == "Flatten":
                self.buffers[node.output] = self.flat(node.inputs[0], _as_chw(self.g.tensors[node.output].shape))
            elif node.op == "Add":
                self.add(node)
            elif node.op == "AvgPool2d":
                self.avgpool(node)
            elif node.op == "Reorg":
                src = self.buffer(node.inputs[0])
                args = (src, int(node.attrs["stride"]), self.buffer(node.output, src.dtype))
                self.steps.append(lambda args=args: _reorg(*args))
            elif node.op == "Concat":
                parts = [self.buffer(name) for name in node.inputs]
                out, start = self.buffer(node.output, np.result_type(*parts)), 0
                for src in parts:
                    part = out[start: start + src.shape[0]]
                    start += src.shape[0]
                    self.steps.append(lambda part=part, src=src: np.copyto(part, src))
            else:
                raise _Unsupported
        out = self.flat(g.outputs[0], tuple(g.output_spec.shape))
        return SingleImageProgram(image, quantize, self.steps, out, self.buffers, self.needs_check, threading.Lock(),
                                  frozenset(self.parallel))

    def quantize_input(self, node, image: np.ndarray) -> Callable[[], bool]:
        s = self.g.tensors[node.output]
        z, qmin, qmax = s.zero_point, s.qmin, s.qmax
        if max(abs(qmin), abs(qmax), abs(qmin - z), abs(qmax - z)) >= FLOAT32_EXACT:
            raise _Unsupported
        out = self.flat(node.output, -1)
        scale, z32, low, high = np.float32(s.scale), np.float32(z), np.float32(qmin - z), np.float32(qmax - z)
        return lambda finite: _quantize(image, scale, z32, low, high, finite, out)

    def conv_or_linear(self, node) -> None:
        g = self.g
        src = node.inputs[0]
        w = self.c.weights[node.name].to(torch.int64)
        z = g.tensors[src].zero_point
        bias = g.params[node.params["bias"]].to(torch.int64).tolist() if "bias" in node.params else [0] * w.shape[0]
        dtype = self.float_dtype(node.output)  # the torch program's: every partial sum (bias in) exact
        x = self.buffer(src)
        out = self.buffer(node.output, _NUMPY[dtype])
        if node.op == "Linear":
            x = self.flat(src, (-1, 1, 1))
            geometry = (1, 1, 1, 1, 0, 0, 1, 1, 1, 1)
        else:
            a = node.attrs
            kh, kw = w.shape[2:]
            (sh, sw), (dh, dw) = _pair(a["stride"]), _pair(a["dilation"])
            symmetric = symmetric_padding(a["padding"])
            if self.is_direct_conv(node):
                self.direct_conv(x, z, w.to(dtype), torch.tensor(bias, dtype=dtype), out, (sh, sw), symmetric,
                                 (dh, dw), a["groups"])
                return
            top, left, _, _ = as_pads(a["padding"])
            geometry = (kh, kw, sh, sw, top, left, dh, dw, out.shape[1], out.shape[2])
        # a grouped conv's im2col rows are its groups one after the other: one batched GEMM
        groups = node.attrs["groups"] if node.op == "Conv2d" else 1
        terms = int(np.prod(w.shape[1:]))
        if node.op == "Linear" and z == 0 and x.dtype == out.dtype:
            cols = x.reshape(-1, 1)   # the input is its own column: no im2col copy
        else:
            cols = np.zeros((groups * terms, geometry[-2] * geometry[-1]), dtype=out.dtype)
            args = (x, cols.dtype.type(z), *geometry, cols)  # z itself may need float64
            self.steps.append(lambda: _im2col(*args))
        if w.numel() * geometry[-2] * geometry[-1] >= DIRECT_CONV_MACS:
            self.parallel.add(len(self.steps))   # the GEMM, appended next
        if groups == 1 and node.output in self.hwc:
            # [pixels, C] = cols^T · W^T: the accumulator straight into channels-last memory
            weights_t = w.reshape(w.shape[0], -1).to(dtype).t()
            bias_row = torch.tensor(bias, dtype=dtype).reshape(1, -1)
            cols_tt = torch.from_numpy(cols).t()
            memory = out.transpose(1, 2, 0)   # the [H, W, C] memory itself
            if not memory.flags.c_contiguous:
                raise _Unsupported
            acc_rows = torch.from_numpy(memory.reshape(-1, out.shape[0]))
            self.steps.append(lambda: torch.addmm(bias_row, cols_tt, weights_t, out=acc_rows))
        elif groups == 1:
            weights = w.reshape(w.shape[0], -1).to(dtype)
            bias_t = torch.tensor(bias, dtype=dtype).reshape(-1, 1)
            cols_t, acc_t = torch.from_numpy(cols), torch.from_numpy(self.flat(node.output, (out.shape[0], -1)))
            self.steps.append(lambda: torch.addmm(bias_t, weights, cols_t, out=acc_t))
        else:
            weights = w.reshape(groups, -1, terms).to(dtype)
            bias_t = torch.tensor(bias, dtype=dtype).reshape(groups, -1, 1)
            cols_t = torch.from_numpy(cols).reshape(groups, terms, -1)
            acc_t = torch.from_numpy(out.reshape(groups, out.shape[0] // groups, -1))
            self.steps.append(lambda: torch.baddbmm(bias_t, weights, cols_t, out=acc_t))

    def direct_conv(self, x: np.ndarray, z: int, w: torch.Tensor, bias: torch.Tensor, out: np.ndarray,
                    stride, padding, dilation, groups: int) -> None:
        """A large convolution as one ATen/oneDNN call on the centred codes: the same exact sums
        (every partial sum an integer below 2^24 in float32, or 2^53 in float64, in any order),
        faster than im2col + GEMM from DIRECT_CONV_MACS on (see there)."""
        # [1, C, H, W] tensors on the buffers' memory, channels-last where the buffer is
        x_t, acc_t = torch.from_numpy(x)[None], torch.from_numpy(out)[None]
        if not x.flags.c_contiguous and x.shape[0] > 1:
            w = w.contiguous(memory_format=torch.channels_last)
        centre = float(z)
        cast = x_t.dtype != w.dtype

        def step() -> None:
            centred = x_t.to(w.dtype) if cast else x_t
            if centre:   # padding then adds real zeros, as the IR pads the centred input
                centred = centred - centre
            acc_t.copy_(F.conv2d(centred, w, bias, stride, padding, dilation, groups))
        self.parallel.add(len(self.steps))
        self.steps.append(step)

    def requant(self, node, out_name: str, pool=None) -> None:
        g = self.g
        src = node.inputs[0]
        exact = self.c._float_requant(node, src)
        lo, hi = node.attrs["clamp_min"], node.attrs["clamp_max"]
        if exact is None or max(abs(lo), abs(hi)) >= FLOAT32_EXACT:
            raise _Unsupported
        acc, out = self.buffer(src), self.buffer(out_name)
        channels = acc.shape[0]
        if src in self.hwc and out_name in self.hwc:
            window = None if pool is None else (tuple(_pair(pool.attrs["kernel"])), tuple(_pair(pool.attrs["stride"])))
            rows = CodeRequant(exact, acc.shape, g.tensors[src].zero_point, 0, pool=window, uint8=False)
            self.steps.append(rows.one_image_hwc(acc.transpose(1, 2, 0), out.transpose(1, 2, 0)))
            return

        def per_channel(t):
            return np.ascontiguousarray(np.broadcast_to(t.reshape(-1).numpy().astype(np.float64), (channels,)))

        clamped = exact.v_min is not None
        zeros = np.zeros(channels)
        args = (float(g.tensors[src].zero_point), per_channel(exact.scale), per_channel(exact.offset),
                per_channel(exact.v_min) if clamped else zeros, per_channel(exact.v_max) if clamped else zeros,
                clamped, float(exact.lo), float(exact.hi))
        if pool is None:
            whole = (acc, *args, out)
            self.steps.append(lambda: _requant(*whole))
        else:
            pooled = (acc, *args, *_pair(pool.attrs["kernel"]), *_pair(pool.attrs["stride"]), out)
            self.steps.append(lambda: _pool_requant(*pooled))

    def maxpool(self, node) -> None:
        window = (*_pair(node.attrs["kernel"]), *_pair(node.attrs["stride"]))
        src = self.buffer(node.inputs[0])
        args = (src, *window, self.buffer(node.output, src.dtype))
        self.steps.append(lambda: _maxpool(*args))

    def avgpool(self, node) -> None:
        src = node.inputs[0]
        z = self.g.tensors[src].zero_point
        kh, kw = _pair(node.attrs["kernel"])
        out = self.buffer(node.output, _NUMPY[self.float_dtype(node.output)])
        args = (self.buffer(src), float(z), kh, kw, *_pair(node.attrs["stride"]), out)
        self.steps.append(lambda: _window_sum(*args))

    def add(self, node) -> None:
        g = self.g
        m = g.params[node.params["multiplier"]].to(torch.int64).tolist()
        zs = [g.tensors[i].zero_point for i in node.inputs]
        self.buffer(node.output, _NUMPY[self.float_dtype(node.output)])
        out = self.flat(node.output, -1)
        a, b = (self.flat(i, -1) for i in node.inputs)
        args = (a, b, float(zs[0]), float(zs[1]), float(m[0]), float(m[1]), out)
        self.steps.append(lambda: _add(*args))
