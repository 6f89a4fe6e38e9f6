"""CLIP-Q: joint pruning and codebook quantization of weights (Tung & Mori, CVPR 2018).

Per layer, with clip fraction `p` and bits `b` (the paper's procedure; docs/qat.md):

1. zero the fraction `p` of positive weights closest to 0, and the fraction `p` of negative
   weights closest to 0 (⌊p·n⌋ of each sign; every weight not above the ⌊p·n⌋-th smallest
   positive, resp. not below the ⌊p·n⌋-th largest negative, is pruned, so ties prune together);
2. split the remaining positive range [min, max] into 2^(b−1) − 1 equal-width bins and the
   remaining negative range into 2^(b−1) bins (a value on an inner edge belongs to the upper bin);
3. each weight becomes the mean of its bin. An empty bin (possible when the weights cluster)
   takes the bin's centre, so the codebook is always defined; a sign with no weight left gives
   bins over the range [0, 0], i.e. levels at 0.

The 2^b levels are coded in ascending order: codes 0 … 2^(b−1) − 1 are the negative bins (0 = most
negative), code 2^(b−1) is zero, the codes above it the positive bins. For b = 2 this is the
source accelerator's coding: 00 most negative, 01 other negative, 10 zero, 11 positive.

Integers. The codebook is stored as integers at one per-layer scale, and the fake-quant weights
are exactly `codebook_int[index] · scale` (so fake-quant and the integer engine see the same
numbers): with `q35=True` the source's 8-bit fixed point Q3.5 (scale 2^-5, value round(c·32)
clamped to [−128, 127]); otherwise scale = max|c| / 127 (float32) and value round(c / scale).
The rounding moves the bin means by at most half a step; the zero level stays exactly 0.

Training: `ClipQWeightQuantizer(w)` recomputes all of this on every call from the full-precision
shadow weights `w` (the layer's parameter) and passes the gradient straight through to them.

Everything is vectorised (kthvalue, bucketize, bincount): no Python loop over weights or bins.
`clipq_codebook_loop` is the per-bin loop, kept as the test oracle and the benchmark baseline.

`search_clipq` picks (p, b) per layer under a model-size budget (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from bitsmith.errors import ConfigError

#: Allowed index widths: at least one negative, zero and one positive level; indices fit uint8.
ALLOWED_BITS = tuple(range(2, 9))
#: Signed width of the stored codebook integers (what the integer graph's weight_bits says).
CODEBOOK_BITS = 8
Q35_SCALE = 2.0 ** -5


def check_clipq_params(p: float, bits: int, where: str = "CLIP-Q") -> None:
    """ConfigError unless 0 ≤ p < 1 and bits ∈ ALLOWED_BITS."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ALLOWED_BITS:
        raise ConfigError(f"{where}: bits={bits!r}; allowed: integers {ALLOWED_BITS[0]} to {ALLOWED_BITS[-1]} "
                          "(2^(b-1) negative levels, zero, 2^(b-1) - 1 positive levels; indices fit 8 bits)")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"{where}: clip fraction p={p!r}; allowed: a number with 0 <= p < 1 "
                          "(the fraction of each sign's weights nearest 0 that is set to zero)")


def level_counts(bits: int) -> tuple[int, int]:
    """(negative bins, positive bins) for `bits`: (2^(b−1), 2^(b−1) − 1)."""
    half = 1 << (bits - 1)
    return half, half - 1


# -- the codebook (float) -------------------------------------------------------------------

def _boundaries(w: torch.Tensor, p: float, bits: int) -> torch.Tensor:
    """The 2^b − 1 ascending float32 boundaries whose count ≤ w is w's code.

    [inner edges of the negative bins, the negative clip threshold t_n, the value just above the
    positive clip threshold t_p, inner edges of the positive bins]: kept negatives are w < t_n,
    pruned weights t_n ≤ w ≤ t_p, kept positives w > t_p (t = 0 when nothing of that sign is
    clipped). Bin edges are computed in float64 and rounded to float32 (the weights' dtype), so
    membership is decided by exact float32 compares. A sign with no kept weight gets its bins
    over [t, t] at its threshold.
    """
    n_neg_bins, n_pos_bins = level_counts(bits)
    a = w.numpy()
    n = a.size
    n_neg, n_pos = int(np.count_nonzero(a < 0)), int(np.count_nonzero(a > 0))
    keep_neg, keep_pos = n_neg - int(p * n_neg), n_pos - int(p * n_pos)
    work = a.copy()
    # Two in-place introselects give the thresholds as order statistics: the kept negatives are the
    # keep_neg smallest values, t_n the next one; the kept positives the keep_pos largest, t_p the
    # one before them.
    t_neg = 0.0
    if 0 < keep_neg < n:
        work.partition(keep_neg)
        if keep_neg < n_neg:
            t_neg = float(work[keep_neg])
    neg_lo, neg_hi = _kept_range(work[:keep_neg], t_neg, below=True)
    j = n - keep_pos - 1  # index of the largest weight not kept as positive
    t_pos = 0.0
    if 0 <= j and keep_pos:
        work.partition(j)
        if keep_pos < n_pos:
            t_pos = float(work[j])
    above = float(np.nextafter(np.float32(t_pos), np.float32(np.inf)))
    pos_lo, pos_hi = _kept_range(work[n - keep_pos:], above, below=False)
    if not keep_neg:
        neg_lo = neg_hi = t_neg
    if not keep_pos:
        pos_lo = pos_hi = above
    # clamp: rounding an inner edge to float32 must not cross the clip thresholds
    inner_neg = _edges(neg_lo, neg_hi, n_neg_bins)[1:-1].to(torch.float32).clamp(max=t_neg)
    inner_pos = _edges(pos_lo, pos_hi, n_pos_bins)[1:-1].to(torch.float32).clamp(min=above)
    return torch.cat([inner_neg, torch.tensor([t_neg, above], dtype=torch.float32), inner_pos])


def _kept_range(kept: np.ndarray, t: float, below: bool) -> tuple[float, float]:
    """(min, max) of the kept weights of one sign; ties with the threshold t are not kept."""
    if kept.size == 0:
        return t, t
    lo, hi = float(kept.min()), float(kept.max())
    if (below and hi >= t) or (not below and lo < t):  # ties at the threshold (rare): drop them
        kept = kept[kept < t] if below else kept[kept >= t]
        if kept.size == 0:
            return t, t
        lo, hi = float(kept.min()), float(kept.max())
    return lo, hi


def _edges(lo: float, hi: float, n: int) -> torch.Tensor:
    """The n + 1 edges of n equal-width bins over [lo, hi] (float64)."""
    return lo + (hi - lo) * torch.arange(n + 1, dtype=torch.float64) / n


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(-1).to(torch.float32)


def _bin_centres(bounds: torch.Tensor, w: torch.Tensor, bits: int) -> torch.Tensor:
    """Fallback level of an empty bin: its centre (outer bins end at the weights' min / max)."""
    n_neg_bins, _ = level_counts(bits)
    b = bounds.to(torch.float64)
    lo = torch.minimum(w.min(), bounds[0]).to(torch.float64).reshape(1) if w.numel() else b[:1]
    hi = torch.maximum(w.max(), bounds[-1]).to(torch.float64).reshape(1) if w.numel() else b[-1:]
    edges = torch.cat([lo, b, hi])
    centres = (edges[:-1] + edges[1:]) / 2
    centres[n_neg_bins] = 0.0
    return centres


def clipq_codes(w: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Code of every weight: the number of boundaries ≤ w (int64)."""
    if len(bounds) > 15:
        return torch.bucketize(w, bounds, right=True)
    code = (w >= bounds[0]).to(torch.int64)  # a few compare passes beat a binary search per element
    for b in bounds[1:]:
        code += w >= b
    return code


def clipq_codebook(w: torch.Tensor, p: float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-Q of one weight tensor: (indices int64, same shape as w; codebook float64 [2^bits]).

    `codebook[indices]` is the clipped, bin-mean quantized tensor (before integer rounding).
    """
    check_clipq_params(p, bits)
    flat = _flat(w)
    bounds = _boundaries(flat, p, bits)
    idx = clipq_codes(flat, bounds)
    levels = 1 << bits
    sums = torch.zeros(levels, dtype=torch.float64).scatter_add_(0, idx, flat.to(torch.float64))
    counts = torch.bincount(idx, minlength=levels)
    codebook = torch.where(counts > 0, sums / counts.clamp(min=1), _bin_centres(bounds, flat, bits))
    codebook[level_counts(bits)[0]] = 0.0  # the pruned weights are exactly zero, not their mean
    return idx.reshape(w.shape), codebook


def clipq_codebook_loop(w: torch.Tensor, p: float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as `clipq_codebook`, one bin at a time: the oracle for tests and the benchmark."""
    check_clipq_params(p, bits)
    flat = _flat(w)
    bounds = _boundaries(flat, p, bits).tolist()
    n_neg_bins, _ = level_counts(bits)
    centres = _bin_centres(torch.tensor(bounds, dtype=torch.float32), flat, bits)
    edges = [-math.inf] + bounds + [math.inf]
    idx = torch.empty(flat.shape, dtype=torch.int64)
    codebook = torch.zeros(1 << bits, dtype=torch.float64)
    for code in range(1 << bits):
        mask = (flat >= edges[code]) & (flat < edges[code + 1])
        idx[mask] = code
        if code != n_neg_bins:
            codebook[code] = flat[mask].to(torch.float64).mean() if mask.any() else centres[code]
    return idx.reshape(w.shape), codebook


# -- integers -------------------------------------------------------------------------------

def integer_codebook(codebook: torch.Tensor, q35: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float codebook → (int16 values fitting CODEBOOK_BITS signed bits, float32 scale [1])."""
    lo, hi = -(1 << (CODEBOOK_BITS - 1)), (1 << (CODEBOOK_BITS - 1)) - 1
    if q35:
        scale = torch.tensor([Q35_SCALE], dtype=torch.float32)
        ints = torch.round(codebook * 32).clamp(lo, hi)
    else:
        top = float(codebook.abs().max()) if codebook.numel() else 0.0
        scale = torch.tensor([top / hi if top > 0 else 1.0], dtype=torch.float32)
        ints = torch.round(codebook / float(scale)).clamp(-hi, hi)
    return ints.to(torch.int16), scale


class _StraightThrough(torch.autograd.Function):
    """Returns wq exactly (w + (wq − w).detach() would round) with the gradient passed to w."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        return wq

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ClipQWeightQuantizer(nn.Module):
    """A QuantLayer.weight_quantizer: CLIP-Q with straight-through gradient to the shadow weights.

    `codebook_weights(w)` → (indices uint8 shaped like w, codebook int16 [2^bits], scale float32 [1]),
    with `codebook[indices] · scale` equal to `forward(w)` element for element.
    """

    code_bits = CODEBOOK_BITS

    def __init__(self, p: float = 0.4, bits: int = 2, q35: bool = False, name: str = "CLIP-Q") -> None:
        super().__init__()
        check_clipq_params(p, bits, name)
        self.p, self.bits, self.q35 = float(p), int(bits), bool(q35)

    @property
    def index_bits(self) -> int:
        return self.bits

    def codebook_weights(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx, codebook = clipq_codebook(w, self.p, self.bits)
        ints, scale = integer_codebook(codebook, self.q35)
        return idx.to(torch.uint8), ints, scale

    def integer_weights(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx, ints, scale = self.codebook_weights(w)
        return ints.to(torch.int64)[idx.long()], scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        idx, ints, scale = self.codebook_weights(w)
        wq = (ints.to(torch.float32) * scale)[idx.long()].to(w.dtype)
        return _StraightThrough.apply(w, wq)

    def extra_repr(self) -> str:
        return f"p={self.p}, bits={self.bits}, q35={self.q35}"


def apply_clipq(qmodel: nn.Module, p: float = 0.4, bits: int = 2, *, q35: bool = False,
                layers: Mapping[str, tuple[float, int]] | None = None, skip: Iterable[str] = ()) -> list[str]:
    """Give every QuantLayer of a quantized model a ClipQWeightQuantizer; returns the layers set.

    Layers are named by their float model's module name (`QuantLayer.float_name`, e.g. "conv1");
    `layers` overrides (p, bits) per layer (e.g. from `search_clipq`), `skip` leaves layers on
    their PTQ weights (e.g. the first and last layer at 8 bits).
    """
    from bitsmith.quant.modules import QuantLayer

    quant_layers = {m.float_name: m for m in qmodel.modules() if isinstance(m, QuantLayer)}
    unknown = sorted(set(layers or {}).union(skip) - set(quant_layers))
    if unknown:
        raise ConfigError(f"CLIP-Q: unknown layer(s) {unknown}; the model's layers are {sorted(quant_layers)}")
    done = []
    for name, m in quant_layers.items():
        if name in set(skip):
            continue
        lp, lb = (layers or {}).get(name, (p, bits))
        m.weight_quantizer = ClipQWeightQuantizer(lp, lb, q35, name=f"CLIP-Q layer {name!r}")
        done.append(name)
    return done


# -- (p, b) search under a size budget ---------------------------------------------------------

DEFAULT_P_GRID = (0.0, 0.2, 0.4, 0.6, 0.8)
DEFAULT_BITS_GRID = (2, 3, 4, 5, 6, 8)


def clipq_size_bits(numel: int, p: float, bits: int) -> int:
    """Storage model of one CLIP-Q layer in bits: the non-zero weights' indices + the codebook.

    Zeros are assumed free (sparse storage, as the paper's compression figures assume), so
    size = round((1 − p)·n)·b + 2^b·8. A dense index image (like W2.hex) costs n·b instead.
    """
    return round((1.0 - p) * numel) * bits + (1 << bits) * CODEBOOK_BITS


def clipq_error(w: torch.Tensor, p: float, bits: int, q35: bool = False) -> float:
    """Squared error Σ(w − w_q)² of the integer CLIP-Q weights (the search's proxy)."""
    idx, codebook = clipq_codebook(w, p, bits)
    ints, scale = integer_codebook(codebook, q35)
    wq = ints.to(torch.float64)[idx] * float(scale)
    return float(((w.detach().to(torch.float64) - wq) ** 2).sum())


def search_clipq(weights: Mapping[str, torch.Tensor], budget_bits: int, *, p_grid: Sequence[float] = DEFAULT_P_GRID,
                 bits_grid: Sequence[int] = DEFAULT_BITS_GRID, q35: bool = False) -> dict[str, tuple[float, int]]:
    """Per-layer (p, b) from the grid, minimising the total squared weight error within a size budget.

    Greedy (a cheap stand-in for the paper's Bayesian optimisation): every layer starts at its
    lowest-error grid point; then, while the total `clipq_size_bits` exceeds `budget_bits`, the
    single move (one layer to a smaller grid point) with the least error added per bit saved is
    taken. The proxy ignores how the network reacts to each layer's error; it is a starting point
    for QAT, not a guarantee of accuracy.
    """
    for p in p_grid:
        for b in bits_grid:
            check_clipq_params(p, b, "CLIP-Q search grid")
    if not weights:
        raise ConfigError("CLIP-Q search: no layers given")
    grid = [(float(p), int(b)) for p in p_grid for b in bits_grid]
    size = {n: {c: clipq_size_bits(w.numel(), *c) for c in grid} for n, w in weights.items()}
    error = {n: {c: clipq_error(w, *c, q35=q35) for c in grid} for n, w in weights.items()}
    smallest = sum(min(s.values()) for s in size.values())
    if smallest > budget_bits:
        raise ConfigError(f"CLIP-Q search: budget {budget_bits} bits is below the smallest reachable size "
                          f"{smallest} bits on this grid; raise the budget or add larger p / smaller b")
    choice = {n: min(grid, key=lambda c: (error[n][c], size[n][c])) for n in weights}
    total = sum(size[n][choice[n]] for n in weights)
    while total > budget_bits:
        best = None
        for n in weights:
            cur = choice[n]
            for c in grid:
                saved = size[n][cur] - size[n][c]
                if saved > 0:
                    cost = (error[n][c] - error[n][cur]) / saved
                    if best is None or cost < best[0]:
                        best = (cost, n, c)
        _, n, c = best  # exists: total > budget ≥ smallest means some layer can still shrink
        total -= size[n][choice[n]] - size[n][c]
        choice[n] = c
    return choice
