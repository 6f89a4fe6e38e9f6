"""The crossbar simulator's per-element loops, compiled (numba): the ADC of every column sum and
the shift-and-add of its integer code into the int64 accumulator in one pass over the sums; and
the per-call ADC range (min / max) of a chunk, taken while it is still in cache.

Written as torch operations the ADC is six passes over memory and the shift-and-add a seventh;
after the matmul that sums the columns, those passes were half of the simulator's time. Here each
value is read once. The arithmetic is `simulate.adc`'s, operation for operation in float32 (numba
keeps float32 operands in float32 and, without fastmath, neither reorders nor fuses them), so
every code is the one `adc` gives — tests/cim/test_kernels.py compares them element by element.

The functions release the GIL: the simulator runs them on its chunks in Python threads."""

from __future__ import annotations

import numba
import numpy as np
import torch

_COMPILE = dict(nogil=True, cache=True, fastmath=False, boundscheck=False)


@numba.njit(**_COMPILE)
def _codes(column, low, step, divisor, levels, floor_, epsilon, clamp, ideal, out):
    """A column's sums → their ADC codes (integer counts, as float32) in `out`: `simulate.adc`,
    one simple loop per operation so that each is vectorised."""
    if ideal:
        for p in range(column.size):
            out[p] = np.rint(column[p])
        return
    for p in range(column.size):
        out[p] = (column[p] - low) / divisor
    if floor_:
        for p in range(out.size):
            out[p] = np.floor(out[p] + epsilon)
    else:
        for p in range(out.size):
            out[p] = np.rint(out[p])
    if clamp:
        zero = np.float32(0)
        for p in range(out.size):
            v = out[p]
            v = v if v > zero else zero
            out[p] = v if v < levels else levels
    for p in range(out.size):
        out[p] = np.rint(out[p] * step + low)


@numba.njit(**_COMPILE)
def _convert_add(sums, low, step, divisor, outputs, reference, levels, floor_, epsilon, clamp, ideal,
                 powers, groups, bit, acc, first):
    k_arrays, slices, _, pixels = sums.shape
    per_group = k_arrays // groups
    codes = np.empty(pixels, dtype=np.float32)
    references = np.empty(pixels, dtype=np.float32)
    # one output's Σ over sub-arrays and slices, kept in L1; float64 holds it exactly (the caller
    # checks the bound) and converts faster than int64 from the float32 codes
    total = np.empty(pixels, dtype=np.float64)
    for group in range(groups):
        for c in range(outputs):
            total[:] = 0
            for k in range(group * per_group, (group + 1) * per_group):
                for s in range(slices):
                    _codes(sums[k, s, c], low[0, k, s], step[0, k, s], divisor[0, k, s], levels, floor_, epsilon,
                           clamp, ideal, codes)
                    if reference >= 0:  # dummy="separate": minus the reference column's code
                        _codes(sums[k, s, outputs + c * reference], low[1, k, s], step[1, k, s], divisor[1, k, s],
                               levels, floor_, epsilon, clamp, ideal, references)
                        for p in range(pixels):
                            codes[p] -= references[p]
                    weight = np.float64(powers[s])
                    for p in range(pixels):
                        total[p] += np.float64(codes[p]) * weight
            row = group * outputs + c
            for p in range(pixels):
                acc[row, first + p] += np.int64(total[p]) << bit


#: Lanes of the min / max reduction: that many running minima and maxima are an element-wise loop
#: that LLVM vectorises; a single running min / max (a loop-carried reduction) is not vectorised.
_LANES = 64


@numba.njit(**_COMPILE)
def _min_max(run, out):
    """min and max of a 1-D float32 array (of at least one element) into out[0], out[1]."""
    lanes = min(_LANES, run.size)
    low, high = run[:lanes].copy(), run[:lanes].copy()
    whole = run.size // lanes * lanes
    for p in range(lanes, whole, lanes):
        for j in range(lanes):
            v = run[p + j]
            low[j] = v if v < low[j] else low[j]
            high[j] = v if v > high[j] else high[j]
    a, b = low[0], high[0]
    for j in range(lanes):
        a = low[j] if low[j] < a else a
        b = high[j] if high[j] > b else b
    for p in range(whole, run.size):
        a = run[p] if run[p] < a else a
        b = run[p] if run[p] > b else b
    out[0], out[1] = a, b


@numba.njit(**_COMPILE)
def _row_ranges(flat, start, stop, out):
    for row in range(flat.shape[0]):
        _min_max(flat[row, start:stop], out[row])


def column_ranges(sums: torch.Tensor, parts: list[slice]) -> torch.Tensor:
    """min / max of a chunk of column sums [K, S, C, pixels] (float32, C-contiguous) over pixels and
    each part's columns, per sub-array and slice: [parts, K, S, 2] float32 (a part's columns are one
    contiguous run of each (k, s) row)."""
    k, s, columns, pixels = sums.shape
    flat = sums.reshape(k * s, columns * pixels).numpy()
    out = np.empty((len(parts), k * s, 2), dtype=np.float32)
    for i, part in enumerate(parts):
        _row_ranges(flat, part.start * pixels, part.stop * pixels, out[i])
    return torch.from_numpy(out).reshape(len(parts), k, s, 2)


def adc_settings(ranges: torch.Tensor | None, config, k: int, s: int) -> tuple:
    """The kernel's view of one input bit's ADC: (low, step, divisor) float32 arrays [parts, K, S]
    from `ranges` [parts, K, S, 2] (None: an ideal ADC), the top level, rounding, clamp, ideal.
    Made once per bit and shared by every chunk's `convert_and_add`."""
    ideal = ranges is None
    if ideal:
        ranges = torch.zeros((2, k, s, 2))  # unread: the kernel rounds each sum
    levels = float(2 ** (config.adc_bits or 1) - 1)
    low = ranges[..., 0].to(torch.float32).contiguous()
    step = ((ranges[..., 1] - ranges[..., 0]) / levels).to(torch.float32).contiguous()
    divisor = torch.where(step > 0, step, torch.ones_like(step))
    return (low.numpy(), step.numpy(), divisor.numpy(), np.float32(levels), config.adc_rounding == "floor",
            np.float32(1e-3), config.adc_range != "per-call", ideal)


def convert_and_add(sums: torch.Tensor, settings: tuple, outputs: int, powers: torch.Tensor, groups: int, bit: int,
                    acc: torch.Tensor, first: int) -> None:
    """acc[g·O + c, first + p] += Σ_(k in g, s) code(k, s, c, p)·powers[s]·2^bit for a chunk of
    column sums [K, S, C, pixels] (float32, C-contiguous): code = the ADC (`adc_settings`) of the
    column, minus that of its reference column when C > O (dummy="separate": one reference per
    slice for the offset mapping, one per output for the differential one)."""
    y = sums.numpy()
    columns = y.shape[2]
    low, step, divisor, levels, floor_, epsilon, clamp, ideal = settings
    # the reference column of output c: outputs + c·reference (0: one per slice, 1: one per output)
    reference = -1 if columns == outputs else 0 if columns == outputs + 1 else 1
    _convert_add(y, low, step, divisor, outputs, reference, levels, floor_, epsilon, clamp, ideal, powers.numpy(),
                 groups, bit, acc.numpy(), first)
