"""The fast engine: runs an IntegerGraph to its output codes, equal element by element to the
reference interpreter (`bitsmith.integer.reference`), with exact shortcuts.

    codes = run(graph, images)                      # int64 output codes
    every = run(graph, images, return_all=True)     # every tensor, from the reference interpreter

The fast path computes only the output, with three exact shortcuts:
  1. values travel between ops in float32 (or float64) wherever every value the op can produce
     is an integer of at most 2^24 (2^53) in magnitude, so there is no int64 round trip per op;
     the output is converted to int64 at the end;
  2. a Requant is evaluated in float64 by `float_requant`, which proves per layer that
     every intermediate is an exactly representable integer (or falls back to int64);
  3. a Requant whose only consumer is a MaxPool2d runs after the pool, on 1/(kh·kw) of the
     elements (max commutes with a monotone map; proof at `_Compiler._pool_first`).
  MaxPool2d is a separable maximum of strided slices (exact, and much faster than
  `F.max_pool2d` on CPU), a Conv2d whose kernel covers its whole input is a matrix product, and
  the batch is processed in chunks (at most `FAST_CHUNK` images, fewer where a chunk's widest
  intermediate would pass `FAST_CHUNK_BYTES`) so intermediates stay in cache, side by side on
  single-threaded workers when torch has more than one thread.
A Requant to codes that span at most 256 values runs as one numba pass writing uint8 codes
(`bitsmith.integer.requant_kernels`), fused with the max-pool of shortcut 3. From
`INT8_MIN_BATCH` images on, where the CPU has exact int8 units, a second program keeps 8-bit codes
in uint8 between layers and runs Conv2d / Linear on oneDNN's int8 kernels
(`bitsmith.integer.int8_gemm`), in chunks of `INT8_CHUNK` images side by side on single-threaded
workers (docs/arithmetic.md §7a). A single image takes a third program, one compiled call per
step on buffers made once (`bitsmith.integer.single_image`), where every step is covered.

Static value ranges are tracked for every tensor (from the weight codes and clamp bounds), so the
accumulator overflow check runs only where an overflow is possible at all. Per-graph constants
(weights in compute dtype, multipliers, ranges) are compiled once into a plan, cached beside the
graph (not on it) and rebuilt when the nodes, tensor specs or parameters change. If the user
allows reduced-precision float32 GEMMs (TF32/BF16 settings), those layers run in float64.
"""

from __future__ import annotations

import copy
import math
import os
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bitsmith.errors import AccumulatorOverflowError, GraphError
from bitsmith.integer.arithmetic import MAX_SHIFT, int_range, quantize_input, requantize
from bitsmith.integer.bounds import check_int64
from bitsmith.integer.exactness import FLOAT32_EXACT, FLOAT64_EXACT, compute_dtype, float32_gemm_is_ieee, gemm_dtype
from bitsmith.integer import int8_gemm, u8s8
from bitsmith.integer.graph import IntegerGraph, Node
from bitsmith.integer.ops import Emitters, as_pads
from bitsmith.integer.ops import as_pair as _pair
from bitsmith.integer.reference import (as_input, check_width, conv2d_int64, explicit_padding, require_finite,
                                        run_reference, window_sum_int64)
from bitsmith.integer.requant_kernels import CodeRequant
from bitsmith.integer.single_image import SingleImageProgram, compile_single_image

FAST = Emitters("fast engine")

#: Images per chunk on the fast path: large enough to amortise the per-op overhead, small
#: enough that a chunk's intermediates stay in the CPU caches: at most FAST_CHUNK images, and
#: fewer (halving, down to FAST_MIN_CHUNK) where the chunk's widest intermediate would pass
#: FAST_CHUNK_BYTES.
FAST_CHUNK = 512
FAST_MIN_CHUNK = 16
FAST_CHUNK_BYTES = 4 << 20

#: Images per chunk on the int8 path (`bitsmith.integer.int8_gemm`), which keeps 8-bit codes
#: between layers; from INT8_MIN_BATCH images on, where its per-call cost is amortised. A chunk
#: has at most INT8_CHUNK images, and fewer (a power of two, at least INT8_MIN_BATCH) where its
#: largest intermediate would pass INT8_CHUNK_BYTES: bigger blocks no longer stay in the workers'
#: malloc arenas, and the page faults of fresh mappings then cost more than the per-call overhead
#: saved (measured on VGG-tiny ×0.25, 64 KB an image: 9–15 page faults an image at 256 images a chunk,
#: none at 128, and 128 ran 1.2–1.4× faster than 64 on it and on LeNet-5).
INT8_CHUNK = 128
INT8_CHUNK_BYTES = 8 << 20
INT8_MIN_BATCH = 16

#: On bitsmith's AVX2 kernels (`bitsmith.integer.u8s8`, a few microseconds of set-up a call) the
#: int8 program also runs batches below INT8_MIN_BATCH, single images included, for graphs of at
#: least this many multiply-adds an image; smaller graphs keep the single-image program, whose
#: per-step cost is lower (measured, one image: VGG-tiny x0.25, 9.6M MACs, 470 us against 815 us;
#: LeNet-5, 0.4M MACs, 313 us against 273 us).
AVX2_SMALL_BATCH_MACS = 2_000_000

#: Convolutions of at most this many multiply-adds per call take ATen's plain im2col + GEMM.
SMALL_CONV_MACS = 2_000_000

Range = tuple[int, int]  # inclusive bounds of the integers a tensor can hold


def run(graph: IntegerGraph, x, *, return_all: bool = False, check_overflow: bool = True):
    """Run `graph` on float images: the output codes (int64), or with `return_all` every tensor
    (from the reference interpreter).

    Both paths first prove that no intermediate can leave int64 (`bitsmith.integer.bounds`) and
    refuse the graph by layer (GraphError) otherwise. An empty batch [0, …] gives [0, …] codes."""
    if return_all:
        return run_reference(graph, x, check_overflow=check_overflow)
    x = as_input(graph, x, check_finite=False)
    plan = _plan(graph)
    if plan.int64_refusal[check_overflow] is not None:
        raise GraphError(plan.int64_refusal[check_overflow])
    if x.shape[0] == 0:
        return torch.empty((0, *graph.output_spec.shape), dtype=torch.int64)
    single = plan.single_image
    if (x.shape[0] == 1 and single is not None and not (check_overflow and single.needs_check)
            and not plan.int8_small_batches):
        y = single.run(x)  # checks the input is finite
        if y is not None:
            return y
    with torch.no_grad():
        try:
            return _run_fast(plan, x, check_overflow)
        except AccumulatorOverflowError:
            require_finite(x)  # a NaN in a later chunk is the first thing wrong, as in the reference
            raise


def predict(graph: IntegerGraph, x) -> torch.Tensor:
    """Dequantized outputs, for ranking classes: with per-channel output scales the raw codes
    of different classes are on different grids, so their argmax would be wrong."""
    return graph.dequantize(run(graph, x))


# -- exact float64 requantization ------------------------------------------------------------

@dataclass(frozen=True)
class FloatRequant:
    """A Requant evaluated exactly in float64 over a known input range; built by `float_requant`."""

    v_min: torch.Tensor | None  # clamp of the centred input to its saturation range (None: not needed)
    v_max: torch.Tensor | None
    scale: torch.Tensor  # m · 2^-s, exactly
    offset: torch.Tensor  # z_out + 1/2 (s > 0) or z_out (s = 0)
    lo: int
    hi: int

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """Output codes (float64) for the centred input `v` (float64 integers inside the range)."""
        if self.v_min is not None:
            v = torch.clamp(v, self.v_min, self.v_max)
        return torch.addcmul(self.offset, v, self.scale).floor_().clamp_(self.lo, self.hi)


def float_requant(multiplier: Sequence[int], shift: Sequence[int], zero_point: int, clamp_min: int,
                  clamp_max: int, v_range: Range, rank: int = 2) -> FloatRequant | None:
    """Requantization in float64, or None when it cannot be proved exact for this layer.

    Computes clamp(z + floor((v·m + R) / 2^s), lo, hi), R = 2^(s-1) (0 when s = 0), for integers
    v in `v_range`, one (m, s) per tensor or per channel (dimension 1 of a rank-`rank` input), as
    clamp(floor(v'·(m·2^-s) + (z + R/2^s)), lo, hi), where v' = v, or v clamped to [A, B] (below)
    when the whole of `v_range` is too wide to be exact.

    Exactness. For v' in an interval we require |v'|, |v'·m| and |v'·m + R + z·2^s| ≤ 2^53 (all
    linear in v', so checking both ends suffices). Then v'·m is an integer of at most 2^53, so it is
    a float64, and so is v'·m·2^-s (a power-of-two scaling; no underflow above 2^-62): the product
    v'·(m·2^-s) is exact. The sum with z + R/2^s is (v'·m + R + z·2^s)·2^-s, again an integer of
    at most 2^53 scaled by a power of two, so it is exact too (whether addcmul fuses the multiply
    and add or rounds twice). floor is exact, and floor((v'·m + R + z·2^s)/2^s) =
    z + floor((v'·m + R)/2^s) because z is an integer. (R alone exceeds 2^53 when s > 54: such
    layers are refused.)

    Saturation clamp. out(v) = z + floor((v·m + R)/2^s) is non-decreasing in v (m ≥ 0). Let
    a = max{v : out(v) ≤ lo} = floor(((lo − z + 1)·2^s − R − 1) / m) and
    b = min{v : out(v) ≥ hi} = ceil(((hi − z)·2^s − R) / m). Every v ≤ a gives lo after the final
    clamp, and so does a; every v ≥ b gives hi, and so does b. So replacing v by clamp(v, A, B)
    with A, B = a, b limited to v_range (A := B if that leaves A > B, which only happens when
    lo = hi, a constant output) changes no output. m = 0 gives a constant output; A = B = 0 there.
    """
    m_list, s_list = [int(m) for m in multiplier], [int(s) for s in shift]
    if len(m_list) != len(s_list) or not m_list:
        raise GraphError(f"multiplier ({len(m_list)} values) and shift ({len(s_list)} values) must match")
    z, lo, hi = int(zero_point), int(clamp_min), int(clamp_max)
    vlo, vhi = v_range
    if lo > hi or vlo > vhi or abs(z) >= 1 << 52 or max(abs(lo), abs(hi)) > FLOAT64_EXACT:
        return None
    if any(m < 0 or m >= FLOAT64_EXACT or not 0 <= s <= MAX_SHIFT for m, s in zip(m_list, s_list)):
        return None

    def exact_on(a: int, b: int, m: int, s: int) -> bool:
        rounding = 1 << (s - 1) if s else 0
        return all(max(abs(v), abs(v * m), abs(v * m + rounding + (z << s))) <= FLOAT64_EXACT for v in (a, b))

    # The saturation clamp costs a pass over the data: use it only where exactness needs it.
    clamped = not all(exact_on(vlo, vhi, m, s) for m, s in zip(m_list, s_list))
    a_list, b_list = [], []
    for m, s in zip(m_list, s_list) if clamped else ():
        rounding = 1 << (s - 1) if s else 0
        if m == 0:
            a = b = 0
        else:
            a = (((lo - z + 1) << s) - rounding - 1) // m
            b = -((rounding - ((hi - z) << s)) // m)
        a, b = min(max(a, vlo), vhi), min(max(b, vlo), vhi)
        a = min(a, b)
        if not exact_on(a, b, m, s):
            return None
        a_list.append(a)
        b_list.append(b)

    def channel_tensor(values: list) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float64)
        return t.reshape((1, -1) + (1,) * (rank - 2)) if len(values) > 1 else t.reshape(())

    scale = channel_tensor([math.ldexp(m, -s) for m, s in zip(m_list, s_list)])
    offset = channel_tensor([z + (0.5 if s else 0.0) for s in s_list])
    if not clamped:
        return FloatRequant(None, None, scale, offset, lo, hi)
    return FloatRequant(channel_tensor(a_list), channel_tensor(b_list), scale, offset, lo, hi)


# -- exact building blocks of the fast path ---------------------------------------------------

def max_pool_strided(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """MaxPool2d without padding as a maximum of strided slices: rows first, then columns.

    The window maximum is separable (max over i, j = max over j of max over i), and max is exact
    in every dtype, so this equals F.max_pool2d element for element.
    """
    (kh, kw), (sh, sw) = _pair(kernel), _pair(stride)
    oh = (x.shape[-2] - kh) // sh + 1
    ow = (x.shape[-1] - kw) // sw + 1
    rows = x[..., 0: sh * (oh - 1) + 1: sh, :]
    for i in range(1, kh):
        rows = torch.maximum(rows, x[..., i: i + sh * (oh - 1) + 1: sh, :])
    out = rows[..., 0: sw * (ow - 1) + 1: sw]
    for j in range(1, kw):
        out = torch.maximum(out, rows[..., j: j + sw * (ow - 1) + 1: sw])
    return out


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """`x` with channels-last strides, so that oneDNN picks its NHWC kernels. A one-channel NCHW
    tensor counts as channels-last to PyTorch but not to oneDNN's format choice (which then took
    8-10x longer on VGG-tiny's first convolution, some batch sizes): it gets a channel stride of 1,
    a view of the same memory."""
    if x.dim() != 4:
        return x
    if x.shape[1] == 1 and x.is_contiguous():
        n, _, h, w = x.shape
        return x.as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def _widest(dtypes) -> torch.dtype:
    order = [torch.uint8, torch.float32, torch.float64, torch.int64]
    return max(dtypes, key=order.index)


def _carrier_offset(lo: int, hi: int) -> int:
    """What a uint8 carrier adds to codes in [lo, hi] (at most 256 values) so they land in [0, 255]."""
    return 0 if 0 <= lo and hi <= 255 else -lo


def _magnitude(r: Range) -> int:
    return max(abs(r[0]), abs(r[1]))


# -- the compiled plan ----------------------------------------------------------------------

@dataclass
class _Step:
    fn: Callable[..., torch.Tensor]
    inputs: list[str]
    output: str
    dtype: torch.dtype  # how the output's integers are carried
    range: Range  # every value the output can hold
    check: Callable[[torch.Tensor], None] | None = None  # accumulator overflow check, if one is possible
    release: tuple[str, ...] = ()  # values no later step reads
    reads_offsets: bool = False  # takes uint8 carriers with their offsets as they are


@dataclass
class _Program:
    steps: list[_Step]
    output_offset: int  # what the output's carrier adds to the codes
    chunk: int  # most images per chunk (the float program: also at most FAST_CHUNK)


@dataclass
class _Plan:
    state: tuple  # a deep copy of _state(graph) at compile time
    program: _Program  # codes carried in floats (8-bit codes in uint8 after a Requant): any batch size
    int8_program: _Program | None  # 8-bit codes throughout and int8 GEMMs (None: not available here)
    int8_small_batches: bool  # the int8 program also takes batches below INT8_MIN_BATCH (AVX2_SMALL_BATCH_MACS)
    single_image: SingleImageProgram | None  # batch 1 on buffers made once (None: not covered)
    input: str
    output: str
    int64_refusal: dict[bool, str | None]  # check_int64's message (None: proved) with/without the overflow check


#: Compiled plans, beside their graphs: an entry goes when its graph is garbage-collected.
_PLANS: "weakref.WeakKeyDictionary[IntegerGraph, _Plan]" = weakref.WeakKeyDictionary()


def _state(g: IntegerGraph) -> tuple:
    """Everything the plan depends on, as live references: the inputs and outputs, each
    parameter's identity and `_version` (which changes when it is modified in place), every node's
    and tensor spec's fields, and the float32 and int8 settings. A plan keeps a deep copy; the two
    compare in C (dicts and lists of plain values), which matters for single images: the
    dataclasses' own __eq__ took 25-50 µs a call on VGG-tiny."""
    return (g.inputs, g.outputs, [(k, id(t), t._version) for k, t in g.params.items()],
            [n.__dict__ for n in g.nodes], {k: t.__dict__ for k, t in g.tensors.items()},
            float32_gemm_is_ieee(), int8_gemm.backend())


def _plan(g: IntegerGraph) -> _Plan:
    state = _state(g)
    plan = _PLANS.get(g)
    if plan is not None and plan.state == state:
        return plan
    refusal = {checked: _int64_refusal(g, checked) for checked in (True, False)}
    program, int8_program, single_image = _Program([], 0, FAST_CHUNK), None, None
    small_batches = False
    ieee_float32, int8 = state[-2:]
    if refusal[False] is None or refusal[True] is None:
        compiler = _Compiler(g, ieee_float32=ieee_float32)
        program = compiler.compile()
        if int8:
            int8_program = _Compiler(g, ieee_float32=ieee_float32, int8=True).compile()
        small_batches = int8 == "avx2" and _macs_per_image(g) >= AVX2_SMALL_BATCH_MACS
        if not small_batches:  # else the int8 program takes this graph's single images
            single_image = compile_single_image(compiler)
    plan = _Plan(copy.deepcopy(state), program, int8_program, small_batches, single_image, g.inputs[0], g.outputs[0],
                 refusal)
    _PLANS[g] = plan
    return plan


def _macs_per_image(g: IntegerGraph) -> int:
    """Multiply-adds of one image's Conv2d and Linear layers."""
    return sum(g.macs(n) for n in g.nodes if n.op in ("Conv2d", "Linear"))


def _int64_refusal(g: IntegerGraph, check_overflow: bool) -> str | None:
    try:
        check_int64(g, check_overflow)
    except GraphError as e:
        return str(e)
    return None


def _run_fast(plan: _Plan, x: torch.Tensor, check_overflow: bool) -> torch.Tensor:
    int8 = plan.int8_program is not None and (x.shape[0] >= INT8_MIN_BATCH or plan.int8_small_batches)
    program = plan.int8_program if int8 else plan.program
    size = program.chunk if int8 else min(program.chunk, FAST_CHUNK)
    chunks = x.split(size) if x.shape[0] > size else [x]

    def run_chunk(chunk: torch.Tensor) -> torch.Tensor:
        require_finite(chunk)  # here, on the chunk's worker: no OpenMP team left spinning in the caller
        values = {plan.input: chunk}
        for step in program.steps:
            y = step.fn(*[values[i] for i in step.inputs])
            if check_overflow and step.check is not None:
                step.check(y)
            values[step.output] = y
            for name in step.release:
                del values[name]
        y = values[plan.output].to(torch.int64)
        return y - program.output_offset if program.output_offset else y

    threads = torch.get_num_threads()
    if len(chunks) > 1 and threads > 1:
        outputs = list(_chunk_workers(threads).map(run_chunk, chunks))
    else:
        outputs = [run_chunk(chunk) for chunk in chunks]
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


_WORKERS: list = [None]  # (the ThreadPoolExecutor of _chunk_workers, the process that made it, its size)


def _chunk_workers(threads: int) -> ThreadPoolExecutor:
    """Workers that run whole chunks of a batch program (the float or the int8 one), each on one
    thread.

    The programs' operations are small (a convolution of 64 images, a requantization pass):
    spreading each over the threads (OpenMP, numba) costs a fork and a join per operation, and the
    two runtimes' idle threads spin against each other. Running chunks side by side, each worker
    single-threaded, keeps every core on its own chunk (measured: 1.6-1.75x the throughput, see
    docs/benchmarks.md). torch.set_num_threads(1) in a worker sets that thread's OpenMP team size;
    the process-wide default it also sets is put back by the caller's thread."""
    pool, pid, size = _WORKERS[0] or (None, None, None)
    # A forked child (a DataLoader worker, multiprocessing) inherits the pool but not its threads.
    if pool is None or size != threads or pid != os.getpid():
        if pool is not None and pid == os.getpid():
            pool.shutdown(wait=False)
        pool = ThreadPoolExecutor(threads, thread_name_prefix="bitsmith-engine", initializer=torch.set_num_threads,
                                  initargs=(1,))
        _WORKERS[0] = (pool, os.getpid(), threads)
        list(pool.map(time.sleep, [0.01] * threads))  # start them now, then restore the default
        torch.set_num_threads(threads)
    return pool


class _Compiler:
    """Turns the graph into fast-path steps, tracking each tensor's dtype and value range."""

    def __init__(self, g: IntegerGraph, ieee_float32: bool = True, int8: bool = False):
        self.g = g
        self.weights = {n.name: g.weight_codes(n) for n in g.nodes if n.op in ("Conv2d", "Linear")}
        self.ieee_float32 = ieee_float32
        self.int8 = int8  # 8-bit codes between layers and int8 GEMMs (bitsmith.integer.int8_gemm)
        self.dtype: dict[str, torch.dtype] = {}
        self.range: dict[str, Range] = {}
        # A uint8 carrier holds code + offset (so that signed codes fit); 0 for every other carrier.
        self.offset: dict[str, int] = {}
        self.steps: list[_Step] = []
        self.consumers: dict[str, list[Node]] = {}
        for node in g.nodes:
            for name in node.inputs:
                self.consumers.setdefault(name, []).append(node)

    def compile(self) -> _Program:
        g = self.g
        deferred: dict[str, Node] = {}  # Requant outputs whose Requant runs after the MaxPool reading them
        for node in g.nodes:
            if node.op == "Requant" and self._pool_first(node):
                deferred[node.output] = node
            elif node.op == "MaxPool2d" and node.inputs[0] in deferred:
                requant = deferred.pop(node.inputs[0])
                fused = self._code_requant(requant, requant.inputs[0], node.output, pool=node)
                if fused is not None:
                    self._add(fused)
                    continue
                pooled = f"{node.output}/before_{requant.name}"
                self._add(self._maxpool(node, requant.inputs[0], pooled))
                self._add(self._requant(requant, pooled, node.output))
            else:
                self._compile_node(node)
        if self.int8:
            self._fuse_requants()
        self._mark_releases()
        chunk = (self._chunk(INT8_CHUNK, INT8_MIN_BATCH, INT8_CHUNK_BYTES) if self.int8
                 else self._chunk(FAST_CHUNK, FAST_MIN_CHUNK, FAST_CHUNK_BYTES))
        return _Program(self.steps, self.offset.get(g.outputs[0], 0), chunk)

    def _fuse_requants(self) -> None:
        """On the AVX2 kernels: a Conv2d / Linear step whose accumulator is read only by the
        CodeRequant step right after it becomes one step that writes the codes from the kernel's
        epilogue (`u8s8.ConvRequant`; the float32 accumulator is never stored). Not where the
        accumulator needs its overflow check or is a graph output."""
        readers = Counter(name for step in self.steps for name in step.inputs)
        steps: list[_Step] = []
        for step in self.steps:
            last = steps[-1] if steps else None
            if (last is not None and isinstance(step.fn, CodeRequant) and step.inputs == [last.output]
                    and isinstance(last.fn, (u8s8.U8S8Conv, u8s8.U8S8Linear)) and last.check is None
                    and readers[last.output] == 1 and last.output not in self.g.outputs):
                steps[-1] = _Step(u8s8.ConvRequant(last.fn, step.fn), last.inputs, step.output, step.dtype, step.range,
                                  reads_offsets=True)
            else:
                steps.append(step)
        self.steps = steps

    def _chunk(self, most: int, least: int, limit_bytes: int) -> int:
        """Images per chunk: `most`, halved (not below `least`) while the widest intermediate of a
        chunk would pass `limit_bytes`."""
        # a step's output is a graph tensor, or "<pool output>/before_<requant>" of the pool's shape
        widest = max((math.prod(self.g.tensors[s.output.split("/")[0]].shape) * s.dtype.itemsize for s in self.steps),
                     default=1)
        chunk = most
        while chunk > least and chunk * widest > limit_bytes:
            chunk //= 2
        return chunk

    def _pool_first(self, node: Node) -> bool:
        """May this Requant run after the MaxPool2d that is its only consumer?

        Proof that it may: per channel, requant(q) = clamp(z + ((q − z_in)·m + R) >> s, lo, hi) is
        a composition of non-decreasing maps when m ≥ 0 (subtracting z_in, multiplying by m ≥ 0,
        adding R, the floor shift, adding z, clamping). For a non-decreasing f,
        max(f(a), f(b)) = f(max(a, b)), so max over a window of f(q) = f(max over the window of q).
        MaxPool2d keeps channels apart, so a per-channel (m, s) is applied to its own channel in
        both orders. The Requant's own output is then never materialised, which is why this is
        only done on the fast path (return_all needs every literal tensor).
        """
        users = self.consumers.get(node.output, [])
        if len(users) != 1 or users[0].op != "MaxPool2d" or node.output in self.g.outputs:
            return False
        return bool((self.g.params[node.params["multiplier"]] >= 0).all())

    def _add(self, step: _Step, offset: int | None = None) -> None:
        """Append `step`; `offset` is its output carrier's (default: what its emitter recorded, else 0)."""
        self.steps.append(step)
        self.dtype[step.output] = step.dtype
        self.range[step.output] = step.range
        self.offset[step.output] = offset if offset is not None else self.offset.get(step.output, 0)

    @FAST.register("Flatten", "Reorg")
    def _reshape(self, node: Node) -> _Step:
        src, op = node.inputs[0], node.op
        fn = (lambda x: x.flatten(1)) if op == "Flatten" else (lambda x, r=node.attrs["stride"]: F.pixel_unshuffle(x, r))
        return _Step(fn, [src], node.output, self.dtype[src], self.range[src])

    @FAST.register("Concat")
    def _concat(self, node: Node) -> _Step:
        dtype = _widest(torch.float32 if self.offset.get(i) else self.dtype[i] for i in node.inputs)
        lo = min(self.range[i][0] for i in node.inputs)
        hi = max(self.range[i][1] for i in node.inputs)
        return _Step(lambda *xs: torch.cat([t.to(dtype) for t in xs], dim=1), list(node.inputs), node.output, dtype, (lo, hi))

    @FAST.register("Add")
    def _add_node(self, node: Node) -> _Step:
        """Σ (x_i − z_i)·m_i, in the narrowest dtype that holds every partial result exactly."""
        m = self.g.params[node.params["multiplier"]].to(torch.int64).tolist()
        zs = [self.g.tensors[i].zero_point for i in node.inputs]
        spans = [((self.range[i][0] - z) * mi, (self.range[i][1] - z) * mi) for i, z, mi in zip(node.inputs, zs, m)]
        out_range = (spans[0][0] + spans[1][0], spans[0][1] + spans[1][1])
        magnitude = max(_magnitude(out_range), *(_magnitude(r) for r in spans),
                        *(_magnitude(self.range[i]) + abs(z) for i, z in zip(node.inputs, zs)))
        dtype = compute_dtype(magnitude)

        def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a.to(dtype) - zs[0]) * m[0] + (b.to(dtype) - zs[1]) * m[1]

        return _Step(fn, list(node.inputs), node.output, dtype, out_range, self._overflow_check(node, out_range))

    def _mark_releases(self) -> None:
        last_use: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for name in step.inputs:
                last_use[name] = i
        for i, step in enumerate(self.steps):
            step.release = tuple(n for n in dict.fromkeys(step.inputs)
                                 if last_use[n] == i and n not in self.g.outputs)

    #: Ops that move or compare codes without changing them: a carrier's offset passes through.
    _OFFSET_KEEPING = ("Flatten", "Reorg", "MaxPool2d")

    def _compile_node(self, node: Node) -> None:
        offsets = [self.offset.get(i, 0) for i in node.inputs]
        step = FAST.lookup(node)(self, node)
        if not any(offsets) or step.reads_offsets:
            self._add(step)
        elif node.op in self._OFFSET_KEEPING:
            self._add(step, offsets[0])
        else:  # every other op reads the codes themselves
            fn = step.fn

            def read_codes(*xs):
                return fn(*[x.to(torch.float32) - o if o else x for x, o in zip(xs, offsets)])

            step.fn = read_codes
            self._add(step, 0)

    # -- ops --------------------------------------------------------------------------------

    @FAST.register("QuantizeInput")
    def _quantize_input(self, node: Node) -> _Step:
        s = self.g.tensors[node.output]
        scale, z, qmin, qmax = float(s.scale), s.zero_point, s.qmin, s.qmax
        if max(abs(qmin), abs(qmax), abs(qmin - z), abs(qmax - z)) >= FLOAT32_EXACT:
            fn = lambda x: quantize_input(x, scale, z, qmin, qmax)  # noqa: E731
            return _Step(fn, [node.inputs[0]], node.output, torch.int64, (qmin, qmax))
        scale_t = torch.tensor(scale, dtype=torch.float32)

        def fn(x: torch.Tensor) -> torch.Tensor:
            # The same float32 operations as arithmetic.quantize_input; the integers stay in float32.
            q = torch.round(x.to(torch.float32) / scale_t).clamp_(qmin - z, qmax - z)
            return q.add_(z) if z else q

        if self.int8 and qmax - qmin <= 255:
            offset = _carrier_offset(qmin, qmax)

            def fn8(x: torch.Tensor) -> torch.Tensor:
                u = fn(x).add_(offset).to(torch.uint8)
                return u.contiguous(memory_format=torch.channels_last) if u.dim() == 4 else u

            self.offset[node.output] = offset
            return _Step(fn8, [node.inputs[0]], node.output, torch.uint8, (qmin, qmax))
        return _Step(fn, [node.inputs[0]], node.output, torch.float32, (qmin, qmax))

    @FAST.register("Conv2d", "Linear")
    def _conv_or_linear(self, node: Node) -> _Step:
        g, src = self.g, node.inputs[0]
        w = self.weights[node.name].to(torch.int64)
        z = g.tensors[src].zero_point
        vlo, vhi = self.range[src]
        x_max = max(vhi - z, z - vlo, 0)
        # Ranges in Python integers: exact at any magnitude (an unchecked chain of layers can exceed int64).
        per_out = [a * x_max for a in w.abs().reshape(w.shape[0], -1).sum(dim=1).tolist()]  # worst partial sums
        bias = g.params[node.params["bias"]].to(torch.int64) if "bias" in node.params else None
        b_list = bias.tolist() if bias is not None else [0] * len(per_out)
        acc_range = ((min(b - p for b, p in zip(b_list, per_out)), max(b + p for b, p in zip(b_list, per_out)))
                     if per_out else (0, 0))
        # Work in a dtype where the inputs, their centring and every partial sum are exact.
        bound = max(max(per_out, default=0), _magnitude((vlo, vhi)), abs(z), x_max)
        dtype = gemm_dtype(bound, self.ieee_float32)
        if bias is not None:
            # With the bias inside the sum, every partial sum is bounded by max(|B| + Σ|w|·max|x|).
            fused = gemm_dtype(max(abs(b) + p for b, p in zip(b_list, per_out)), self.ieee_float32)
            out_dtype = _widest([dtype, fused])
        else:
            out_dtype = dtype
        int8_step = self._int8_conv_or_linear(node, w, bias, per_out, acc_range)
        if int8_step is not None:
            return int8_step
        fuse_bias = "bias" in node.params and out_dtype == dtype and dtype != torch.int64
        w_c = w.to(dtype)
        b_c = bias.to(dtype) if fuse_bias else None
        late_bias = bias.to(out_dtype) if "bias" in node.params and not fuse_bias else None

        if node.op == "Linear":
            w_t = w_c.t().contiguous()
            core = (lambda x: torch.addmm(b_c, x, w_t)) if b_c is not None else (lambda x: x @ w_t)
        elif dtype == torch.int64:
            a = node.attrs

            def core(x: torch.Tensor) -> torch.Tensor:
                x, padding = explicit_padding(x, a["padding"])
                return conv2d_int64(x, w_c, {**a, "padding": padding})
        elif self._conv_is_matmul(node, w):
            # The kernel covers the whole input: the output is one dot product per channel.
            w_t = w_c.reshape(w.shape[0], -1).t().contiguous()

            def core(x: torch.Tensor) -> torch.Tensor:
                flat = x.reshape(x.shape[0], -1)
                y = torch.addmm(b_c, flat, w_t) if b_c is not None else flat @ w_t
                return y.reshape(x.shape[0], -1, 1, 1)
        else:
            a = node.attrs
            plain = a["groups"] == 1 and _pair(a["dilation"]) == [1, 1]
            kernel_size = list(w.shape[2:])
            macs_per_image = g.macs(node)

            def core(x: torch.Tensor) -> torch.Tensor:
                x, padding = explicit_padding(x, a["padding"])  # after centring: pads are real zeros
                if plain and x.shape[0] * macs_per_image <= SMALL_CONV_MACS:
                    # ATen's own im2col + GEMM: the same exact integer sums, without oneDNN's
                    # per-call set-up, which dominates small convolutions (single images)
                    return torch.ops.aten._slow_conv2d_forward(x, w_c, kernel_size, b_c, _pair(a["stride"]),
                                                               _pair(padding))
                return F.conv2d(channels_last(x), w_c, b_c, a["stride"], padding, a["dilation"], a["groups"])
        bias_shape = (1, -1, 1, 1) if node.op == "Conv2d" else (1, -1)

        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x.to(dtype)
            acc = core(x - z if z else x)
            if late_bias is not None:
                acc = acc.to(out_dtype) + late_bias.reshape(bias_shape)
            return acc

        return _Step(fn, [src], node.output, out_dtype, acc_range, self._overflow_check(node, acc_range))

    def _int8_conv_or_linear(self, node: Node, w: torch.Tensor, bias: torch.Tensor | None, per_out: list[int],
                             acc_range: Range) -> _Step | None:
        """The layer on oneDNN's int8 kernels (`bitsmith.integer.int8_gemm`), or None where they
        do not apply or are not provably exact: the input is not a uint8 carrier, a weight code
        leaves int8, some value the layer can produce (bias included) reaches 2^24 (the float32
        result would round), the int32 sum of raw carrier × weight products could overflow, or
        the kernels do not take the layer (`int8_gemm.conv`)."""
        src = node.inputs[0]
        if not self.int8 or self.dtype[src] != torch.uint8 or w.numel() == 0:
            return None
        zero_point = self.g.tensors[src].zero_point + self.offset[src]  # as the carrier holds it
        b_list = bias.tolist() if bias is not None else [0] * len(per_out)
        raw = w.abs().reshape(w.shape[0], -1).sum(dim=1) * 255
        if (int(w.min()) < -128 or int(w.max()) > 127 or not 0 <= zero_point <= 255
                or max(abs(b) + p for b, p in zip(b_list, per_out)) >= FLOAT32_EXACT
                or int(raw.max()) > int8_gemm.INT32_MAX):
            return None
        w8 = w.to(torch.int8)
        vlo, vhi = self.range[src]
        carrier = (vlo + self.offset[src], vhi + self.offset[src])  # the values the uint8 carrier can hold
        if node.op == "Linear":
            fn = int8_gemm.linear(w8, zero_point, bias, carrier)
        else:
            a = node.attrs
            fn = int8_gemm.conv(w8, zero_point, stride=_pair(a["stride"]), pads=as_pads(a["padding"]),
                                dilation=_pair(a["dilation"]), groups=a["groups"], bias=bias, a_range=carrier,
                                covers_input=self._conv_is_matmul(node, w))
        if fn is None:
            return None
        return _Step(fn, [src], node.output, torch.float32, acc_range, self._overflow_check(node, acc_range),
                     reads_offsets=True)

    def _conv_is_matmul(self, node: Node, w: torch.Tensor) -> bool:
        a = node.attrs
        in_shape = self.g.tensors[node.inputs[0]].shape
        return (a["groups"] == 1 and as_pads(a["padding"]) == (0, 0, 0, 0) and _pair(a["dilation"]) == [1, 1]
                and tuple(w.shape[2:]) == tuple(in_shape[1:]))

    def _overflow_check(self, node: Node, value_range: Range):
        spec = self.g.tensors[node.output]
        lo, hi = int_range(spec.bits, spec.signed)
        if lo <= value_range[0] and value_range[1] <= hi:
            return None  # statically impossible
        return lambda y: check_width(y, spec, node)

    @FAST.register("Requant")
    def _requant_node(self, node: Node) -> _Step:
        return self._code_requant(node, node.inputs[0], node.output) or self._requant(node, node.inputs[0], node.output)

    def _float_requant(self, node: Node, src: str) -> FloatRequant | None:
        """`node` as a FloatRequant over the values `src` can hold, if that is provably exact."""
        g = self.g
        spec_out = g.tensors[node.output]
        z_in = g.tensors[node.inputs[0]].zero_point
        vlo, vhi = self.range[src]
        centred = (vlo - z_in, vhi - z_in)
        if max(_magnitude((vlo, vhi)), abs(z_in), _magnitude(centred)) >= FLOAT64_EXACT:
            return None
        m = g.params[node.params["multiplier"]].to(torch.int64).tolist()
        s = g.params[node.params["shift"]].to(torch.int64).tolist()
        return float_requant(m, s, spec_out.zero_point, node.attrs["clamp_min"], node.attrs["clamp_max"], centred,
                             rank=len(spec_out.shape) + 1)

    def _code_requant(self, node: Node, src: str, out: str, pool: Node | None = None) -> _Step | None:
        """The Requant `node` of `src` (max-pooled by `pool` first) in one numba pass to 8-bit codes
        in a uint8 carrier (`bitsmith.integer.requant_kernels`), or None where that does not apply:
        codes spanning more than 256 values, no exact float64 form, other ranks."""
        g = self.g
        lo, hi = node.attrs["clamp_min"], node.attrs["clamp_max"]
        shape = tuple(g.tensors[node.inputs[0]].shape)
        code_offset = _carrier_offset(lo, hi)
        if hi - lo > 255 or len(shape) not in (1, 3):
            return None
        exact = self._float_requant(node, src)
        if exact is None:
            return None
        window = None if pool is None else (tuple(_pair(pool.attrs["kernel"])), tuple(_pair(pool.attrs["stride"])))
        z_in = g.tensors[node.inputs[0]].zero_point + self.offset.get(src, 0)
        fn = CodeRequant(exact, shape, z_in, code_offset, pool=window)
        self.offset[out] = code_offset
        return _Step(fn, [src], out, torch.uint8, (lo, hi), reads_offsets=True)

    def _requant(self, node: Node, src: str, out: str) -> _Step:
        g = self.g
        spec_out = g.tensors[node.output]
        z_in = g.tensors[node.inputs[0]].zero_point
        lo, hi = node.attrs["clamp_min"], node.attrs["clamp_max"]
        m = g.params[node.params["multiplier"]].to(torch.int64)
        s = g.params[node.params["shift"]].to(torch.int64)
        exact = self._float_requant(node, src)
        if exact is None:  # not provably exact in float64: the int64 formula of the spec
            zp = spec_out.zero_point

            def fn(x: torch.Tensor) -> torch.Tensor:
                acc = x.to(torch.int64)
                return requantize(acc - z_in if z_in else acc, m, s, zp, lo, hi)

            return _Step(fn, [src], out, torch.int64, (lo, hi))
        out_dtype = torch.float32 if _magnitude((lo, hi)) < FLOAT32_EXACT else torch.float64

        def fn(x: torch.Tensor) -> torch.Tensor:
            v = x.to(torch.float64)  # exact: |x| < 2^53; `exact` never modifies its argument
            return exact(v - z_in if z_in else v).to(out_dtype)

        return _Step(fn, [src], out, out_dtype, (lo, hi))

    @FAST.register("MaxPool2d")
    def _maxpool_node(self, node: Node) -> _Step:
        return self._maxpool(node, node.inputs[0], node.output)

    def _maxpool(self, node: Node, src: str, out: str) -> _Step:
        kernel, stride = node.attrs["kernel"], node.attrs["stride"]
        fn = lambda x: max_pool_strided(x, kernel, stride)  # noqa: E731
        return _Step(fn, [src], out, self.dtype[src], self.range[src])

    @FAST.register("AvgPool2d")
    def _avgpool(self, node: Node) -> _Step:
        src = node.inputs[0]
        z = self.g.tensors[src].zero_point
        kh, kw = _pair(node.attrs["kernel"])
        vlo, vhi = self.range[src]
        out_range = (kh * kw * (vlo - z), kh * kw * (vhi - z))
        dtype = compute_dtype(max(_magnitude(out_range), _magnitude((vlo, vhi)), abs(z)))
        stride = node.attrs["stride"]
        if dtype == torch.int64:
            fn = lambda x: window_sum_int64(x.to(torch.int64) - z, (kh, kw), stride)  # noqa: E731
        else:
            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.to(dtype)
                # Integer sums below 2^24 (2^53) are exact in any order; the divisor 1 is exact.
                return F.avg_pool2d(x - z if z else x, (kh, kw), stride, divisor_override=1)
        return _Step(fn, [src], node.output, dtype, out_range, self._overflow_check(node, out_range))
