"""Observers: watch the float values passing a point during calibration and choose a clipping range.

Every activation observer records batches with `forward(x)` and answers `range(bits, symmetric)`
with the clipping range (lo, hi) that the quantizer's grid should cover:

* ``minmax``     — the smallest and largest value seen.
* ``sigma``      — mean ± k·σ (k = 3) over all values seen, intersected with [min, max].
* ``percentile`` — per side: hi is the p-th percentile (p = 99.99), lo the (100 − p)-th, so a
  fraction 1 − p/100 of the values is clipped at each end (intersected with [min, max]).
* ``mse``        — the range whose quantization grid minimises the mean squared error between
  the values and their quantized versions (512 candidate thresholds over the histogram).
* ``kl``         — TensorRT-style entropy calibration: the threshold minimising KL(P‖Q) between
  the clipped histogram P and its quantized version Q.

`symmetric=True` means the grid is symmetric signed around 0 when the range has a negative part
and unsigned [0, hi] otherwise (after a ReLU); `symmetric=False` means an unsigned grid over
[lo, hi] with a zero point. The searching observers (mse, kl) search the family of grids that
mode produces, for the given bit width.

The histogram observers (percentile, mse, kl) keep a 2048-bin histogram of the non-zero values
over a range that always includes 0, and a count of exact zeros. When a batch falls outside the
current range, the range grows to cover it and the old counts are re-binned by linear
interpolation of their cumulative distribution (each old bin's count is spread uniformly over
the new bins it overlaps): the total count is preserved, only the mass inside an old bin is
approximated.

Weight observers (`weight_clip`) choose a symmetric threshold of |W| per tensor or per output
channel with the same ideas (kl is for activations only).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

HISTOGRAM_BINS = 2048
SIGMA_K = 3.0
PERCENTILE = 99.99
#: Candidate thresholds the weight MSE search tries (fractions k/N of max|W|, k = 1..N).
WEIGHT_MSE_CANDIDATES = 100
#: Candidate thresholds of one activation MSE search (per end for asymmetric ranges).
MSE_CANDIDATES = 512
#: Narrowest KL window, in bins (pytorch-quantization's start_bin): without it, spiky (discrete)
#: data let a window that ends on a spike win with KL ≈ 0 however much it clips.
KL_START_BIN = 128
#: Rounds of the asymmetric MSE search (alternately best hi for the current lo, best lo for that hi).
MSE_ROUNDS = 3


class Observer(nn.Module):
    """Base observer: running minimum and maximum; subclasses add what their range needs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf"), dtype=torch.float64))
        self.register_buffer("max_val", torch.tensor(float("-inf"), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if x.numel():
            self.min_val = torch.minimum(self.min_val, x.min().to(torch.float64))
            self.max_val = torch.maximum(self.max_val, x.max().to(torch.float64))
            self.record(x)
        return x

    def record(self, x: torch.Tensor) -> None:
        """Accumulate what the range needs (beyond min and max)."""

    @property
    def seen(self) -> bool:
        return bool(torch.isfinite(self.min_val))

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        raise NotImplementedError


class MinMaxObserver(Observer):
    """Running minimum and maximum over all calibration batches."""

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        return float(self.min_val), float(self.max_val)


class SigmaObserver(Observer):
    """mean ± k·σ of every value seen (exact running moments in float64), within [min, max]."""

    def __init__(self, k: float = SIGMA_K) -> None:
        super().__init__()
        self.k = k
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("total", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("total_sq", torch.tensor(0.0, dtype=torch.float64))

    def record(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        self.count += x.numel()
        self.total += x.sum()
        self.total_sq += (x * x).sum()

    def stats(self) -> tuple[float, float]:
        """(mean, population standard deviation) of every value seen."""
        n = float(self.count)
        mean = float(self.total) / n
        var = max(float(self.total_sq) / n - mean * mean, 0.0)
        return mean, var ** 0.5

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        mean, std = self.stats()
        lo, hi = float(self.min_val), float(self.max_val)
        return max(lo, mean - self.k * std), min(hi, mean + self.k * std)


class HistogramObserver(Observer):
    """A histogram of the non-zero values over [lo, hi] ∋ 0, plus the count of exact zeros.

    The range grows (and the counts are re-binned) when a batch leaves it. Exact zeros (most of
    a ReLU output) are kept apart: every grid represents 0 exactly, so they carry no quantization
    error (mse and kl leave them out, as pytorch-quantization's `skip_zeros` does), while
    percentiles count them as a point mass at 0.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__()
        self.bins = bins
        self.register_buffer("hist", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("zeros", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("hist_lo", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("hist_hi", torch.tensor(0.0, dtype=torch.float64))

    def edges(self) -> np.ndarray:
        return np.linspace(float(self.hist_lo), float(self.hist_hi), self.bins + 1)

    def record(self, x: torch.Tensor) -> None:
        x = x.reshape(-1).to(torch.float64)
        nonzero = x[x != 0]
        self.zeros += x.numel() - nonzero.numel()
        if not nonzero.numel():
            return
        lo = min(float(self.hist_lo), float(nonzero.min()), 0.0)
        hi = max(float(self.hist_hi), float(nonzero.max()), 0.0)
        if (lo, hi) != (float(self.hist_lo), float(self.hist_hi)):
            self._rebin(lo, hi)
        index = ((nonzero - lo) * (self.bins / (hi - lo))).floor_().clamp_(0, self.bins - 1).to(torch.int64)
        self.hist += torch.bincount(index, minlength=self.bins).to(torch.float64)

    def _rebin(self, lo: float, hi: float) -> None:
        old = self.hist.numpy()
        new = np.zeros(self.bins)
        if old.sum() > 0:  # spread each old bin's count uniformly over the new bins it overlaps
            cdf = np.concatenate([[0.0], np.cumsum(old)])
            new = np.diff(np.interp(np.linspace(lo, hi, self.bins + 1), self.edges(), cdf))
        self.hist = torch.from_numpy(new).to(torch.float64)
        self.hist_lo = torch.tensor(lo, dtype=torch.float64)
        self.hist_hi = torch.tensor(hi, dtype=torch.float64)

    def _centers(self) -> torch.Tensor:
        e = torch.from_numpy(self.edges())
        return (e[:-1] + e[1:]) / 2

    def _clip_to_data(self, lo: float, hi: float) -> tuple[float, float]:
        return max(lo, float(self.min_val)), min(hi, float(self.max_val))


class PercentileObserver(HistogramObserver):
    """Per side: lo = the (100 − p)-th percentile, hi = the p-th percentile (p = 99.99), exact
    zeros included."""

    def __init__(self, percentile: float = PERCENTILE, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        edges = self.edges()
        cdf = np.concatenate([[0.0], np.cumsum(self.hist.numpy())])
        # Insert the zeros as a jump of the CDF at 0 (0 is an edge or inside the range).
        below_zero = float(np.interp(0.0, edges, cdf))
        k = int(np.searchsorted(edges, 0.0, side="right"))
        xs = np.concatenate([edges[:k], [0.0, 0.0], edges[k:]])
        cdf = np.concatenate([cdf[:k], [below_zero, below_zero + float(self.zeros)], cdf[k:] + float(self.zeros)])
        total = cdf[-1]
        q = self.percentile / 100
        # Inverse of the piecewise-linear CDF; flat stretches (empty bins) resolve to their end.
        lo = float(np.interp((1 - q) * total, cdf, xs))
        hi = float(np.interp(q * total, cdf, xs))
        return self._clip_to_data(lo, hi)


def candidate_grids(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, signed: bool):
    """(scale, zero_point, qmin, qmax) of the grid each candidate range [lo, hi] maps to.

    Mirrors bitsmith.quant.fake_quant.activation_qparams (vectorised, float64, no pot rounding).
    """
    if symmetric and signed:
        qmax = (1 << (bits - 1)) - 1
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        return scale, torch.zeros_like(scale), -qmax - 1, qmax
    qmax = (1 << bits) - 1
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / qmax
    zp = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zp, 0, qmax


class MSEObserver(HistogramObserver):
    """The candidate range with the least quantization MSE over the histogram's bin centres.

    Candidates: [−t, t] (symmetric signed) or [0, t] (unsigned) for 512 thresholds t evenly
    spaced up to max|x|. Asymmetric ranges with a negative part: 512 candidates per end, searched
    by coordinate descent from the best [−t, t] (best hi for the current lo, then best lo for
    that hi; three rounds).
    Each bin's count is taken to sit at its centre (as NVIDIA's pytorch-quantization does).
    """

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        lo_all, hi_all = float(self.min_val), float(self.max_val)
        signed = lo_all < 0
        if not signed or symmetric:
            amax = max(abs(lo_all), abs(hi_all)) if signed else hi_all
            if amax == 0:
                return lo_all, hi_all
            t = _thresholds(amax, MSE_CANDIDATES)
            lo_c, hi_c = (-t if signed else torch.zeros_like(t)), t
        else:  # asymmetric: coordinate descent on hi, then lo, from the best range [−t, t]
            ts_lo = -_thresholds(-lo_all, MSE_CANDIDATES)
            ts_hi = _thresholds(hi_all, MSE_CANDIDATES) if hi_all > 0 else torch.zeros(1, dtype=torch.float64)
            t = _thresholds(max(-lo_all, hi_all), MSE_CANDIDATES)
            t0 = float(t[int(torch.argmin(self._errors(-t, t, bits, symmetric, signed)))])
            lo, hi = max(-t0, lo_all), min(t0, hi_all)
            for _ in range(MSE_ROUNDS):
                err = self._errors(torch.full_like(ts_hi, lo), ts_hi, bits, symmetric, signed)
                hi = float(ts_hi[int(torch.argmin(err))])
                err = self._errors(ts_lo, torch.full_like(ts_lo, hi), bits, symmetric, signed)
                lo = float(ts_lo[int(torch.argmin(err))])
            return self._clip_to_data(lo, hi)
        errors = self._errors(lo_c, hi_c, bits, symmetric, signed)
        best = int(torch.argmin(errors))
        return self._clip_to_data(float(lo_c[best]), float(hi_c[best]))

    def _errors(self, lo_c, hi_c, bits, symmetric, signed) -> torch.Tensor:
        centers = self._centers()
        used = self.hist > 0  # empty bins add nothing: leave them out of the product
        centers, counts = centers[used], self.hist[used]
        scale, zp, qmin, qmax = candidate_grids(lo_c, hi_c, bits, symmetric, signed)
        scale, zp = scale[:, None].clamp(min=1e-300), zp[:, None]
        out = []
        for i in range(0, len(scale), MSE_CANDIDATES // 4):  # bounded memory
            s, z = scale[i:i + MSE_CANDIDATES // 4], zp[i:i + MSE_CANDIDATES // 4]
            q = (torch.round(centers / s) + z).clamp(qmin, qmax)
            out.append((((q - z) * s - centers) ** 2 * counts).sum(dim=1))
        return torch.cat(out)


def _thresholds(amax: float, count: int) -> torch.Tensor:
    """`count` evenly spaced thresholds k/count·amax, k = 1..count."""
    return torch.arange(1, count + 1, dtype=torch.float64) * (amax / count)


class KLObserver(HistogramObserver):
    """Entropy calibration (TensorRT): the clip threshold minimising KL(P‖Q).

    On a one-sided histogram h over [0, amax] (n = 2048 bins) and for every candidate threshold
    at bin edge i (from max(L, 128) up to n, L the number of levels): P is h[:i] with the mass
    beyond i added to its last bin; Q merges h[:i] into L groups (bin j joins group ⌊j·L/i⌋) and spreads each
    group's count evenly over its non-empty bins. A window whose last bin is empty while mass
    lies beyond it gets KL = ∞ (Q has no mass where P has), as in TensorRT.

    One-sided histograms: unsigned data use h of x with L = 2^b; symmetric signed data use h
    of |x| with L = 2^(b−1); asymmetric signed data calibrate each side on its own (h of x > 0
    and of −x for x < 0, each with L = 2^(b−1)) and combine the two thresholds.
    From 12 bits up L ≥ n: every bin is its own level and KL picks the full range (= min-max).
    Exact zeros are left out (see HistogramObserver): a ReLU's spike at 0 would otherwise
    dominate P and push the threshold down to the first few bins.
    """

    def range(self, bits: int = 8, symmetric: bool = True) -> tuple[float, float]:
        lo_all, hi_all = float(self.min_val), float(self.max_val)
        if hi_all == lo_all:
            return lo_all, hi_all
        if lo_all >= 0:
            return 0.0, self._side_threshold(hi_all, 1 << bits, lambda t: t)
        half = 1 << (bits - 1)
        if symmetric:
            t = self._side_threshold(max(-lo_all, hi_all), half, lambda t: t, lambda t: -t)
            return self._clip_to_data(-t, t)
        t_hi = self._side_threshold(hi_all, half, lambda t: t) if hi_all > 0 else 0.0
        t_lo = self._side_threshold(-lo_all, half, lambda t: -t)
        return self._clip_to_data(-t_lo, t_hi)

    def _side_threshold(self, amax: float, levels: int, *maps) -> float:
        """The KL threshold of the one-sided histogram of the values at ±t (the `maps` of t ≥ 0)."""
        edges = np.linspace(0.0, amax, self.bins + 1)
        cdf = np.concatenate([[0.0], np.cumsum(self.hist.numpy())])
        at = lambda v: np.interp(v, self.edges(), cdf)  # noqa: E731  mass below v
        # Mass with |value| in [0, t] on the chosen side(s), as a cumulative count at each edge.
        side_cdf = sum(np.abs(at(f(edges)) - at(0.0)) for f in maps)
        hist = torch.from_numpy(np.diff(side_cdf)).clamp(min=0)
        return float(edges[_kl_best_stop(hist, levels)])


def _kl_best_stop(hist: torch.Tensor, levels: int) -> int:
    """The window end i (bin edge index) of hist[:i] with the least KL(P‖Q); see KLObserver.

    Computed per group rather than per bin: with g_l and c_l the count and the number of
    non-empty bins of group l, Σ P log Q = Σ_l (P-mass of group l) · log(g_l / (c_l · Σ_{j<i} h_j)),
    and Σ P log P comes from a running sum of h log h. Cost O(candidates · L).
    """
    n = hist.numel()
    h = hist.to(torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    C = torch.cat([zero, torch.cumsum(h, 0)])  # C[i] = mass of bins < i
    NZ = torch.cat([zero, torch.cumsum((h > 0).double(), 0)])
    hlogh = torch.where(h > 0, h * torch.log(h.clamp(min=1e-300)), torch.zeros_like(h))
    S = torch.cat([zero, torch.cumsum(hlogh, 0)])
    total = float(C[-1])
    if total <= 0:
        return n
    stops = torch.arange(min(max(levels, KL_START_BIN), n), n + 1)
    out = total - C[stops]  # clipped mass, folded into bin i−1
    last = h[stops - 1] + out
    # Σ_j p_j log p_j over the window; P's total is `total` (nothing is dropped).
    plogp = S[stops - 1] + torch.where(last > 0, last * torch.log(last.clamp(min=1e-300)), torch.zeros_like(last))
    sum_plogp = plogp / total - np.log(total)
    # Group boundaries b_l = ⌈l·i/L⌉, l = 0..L, for every candidate i (rows).
    ls = torch.arange(levels + 1)
    bounds = torch.div(ls[None, :] * stops[:, None] + levels - 1, levels, rounding_mode="floor")
    g = C[bounds[:, 1:]] - C[bounds[:, :-1]]
    c = NZ[bounds[:, 1:]] - NZ[bounds[:, :-1]]
    mass = g.clone()
    mass[:, -1] += out
    q_total = C[stops][:, None]
    log_q = torch.log((g / (c.clamp(min=1) * q_total)).clamp(min=1e-300))
    sum_plogq = torch.where(mass > 0, mass * log_q, torch.zeros_like(mass)).sum(1) / total
    kl = sum_plogp - sum_plogq
    # P has mass where Q has none: the last bin is empty but mass was clipped into it.
    kl = torch.where((h[stops - 1] == 0) & (out > 0), torch.full_like(kl, float("inf")), kl)
    if not torch.isfinite(kl).any():
        return n
    return int(stops[int(torch.argmin(kl))])


OBSERVER_TYPES = {"minmax": MinMaxObserver, "sigma": SigmaObserver, "percentile": PercentileObserver,
                  "mse": MSEObserver, "kl": KLObserver}


def make_observer(name: str) -> Observer:
    """A fresh activation observer (names: bitsmith.quant.config.OBSERVERS)."""
    return OBSERVER_TYPES[name]()  # QuantConfig has already validated the name


# -- weights --------------------------------------------------------------------------------


def weight_clip(w: torch.Tensor, bits: int, observer: str = "minmax", per_channel: bool = False) -> torch.Tensor:
    """Symmetric clipping threshold of |W|: one value, or one per output channel (dim 0).

    minmax: max|W|. sigma: the larger end of mean ± 3σ in magnitude, at most max|W|.
    percentile: the 99.99th percentile of |W|. mse: the threshold t = k/100·max|W| whose
    narrow symmetric grid (codes ±(2^(b−1) − 1), step t/(2^(b−1) − 1)) gives the least squared
    error, searched exhaustively over k.
    """
    rows = w.detach().to(torch.float64).reshape(w.shape[0], -1) if per_channel else \
        w.detach().to(torch.float64).reshape(1, -1)
    mag = rows.abs()
    amax = mag.amax(dim=1)
    if observer == "minmax":
        clip = amax
    elif observer == "sigma":
        mean, std = rows.mean(dim=1), rows.std(dim=1, unbiased=False)
        clip = torch.minimum(amax, torch.maximum((mean - SIGMA_K * std).abs(), (mean + SIGMA_K * std).abs()))
    elif observer == "percentile":
        clip = _row_quantile(mag, PERCENTILE / 100)
    elif observer == "mse":
        clip = _weight_mse_clip(rows, amax, bits)
    else:
        raise ValueError(observer)  # QuantConfig has already validated the name
    clip = clip.to(torch.float32)
    return clip if per_channel else clip.reshape(())


def _row_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile along dim 1 (torch.quantile without its size limit)."""
    s = x.sort(dim=1).values
    pos = q * (s.shape[1] - 1)
    i = int(np.floor(pos))
    j = min(i + 1, s.shape[1] - 1)
    return s[:, i] + (pos - i) * (s[:, j] - s[:, i])


def _weight_mse_clip(rows: torch.Tensor, amax: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = (1 << (bits - 1)) - 1
    best_err = torch.full_like(amax, float("inf"))
    best = amax.clone()
    for k in range(1, WEIGHT_MSE_CANDIDATES + 1):
        t = amax * (k / WEIGHT_MSE_CANDIDATES)
        s = (t / qmax).clamp(min=1e-300)[:, None]
        err = ((torch.round(rows / s).clamp(-qmax, qmax) * s - rows) ** 2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, t, best)
    return best
