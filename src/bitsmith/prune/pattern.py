"""Pattern pruning and connectivity pruning of 3×3 kernels (PatDNN / PCONV), as keep-masks for
`bitsmith.prune.magnitude.apply_masks`.

Definitions.

* Kernels: a layer is pattern-prunable when it is a prunable layer (`prunable_layers`: Conv2d, or
  a QuantLayer named by its float layer) whose weight is 4-D with a 3×3 spatial size, whatever its
  stride, dilation or groups (depthwise and grouped 3×3 convs are included: each output channel
  times input channel of the group is one 3×3 kernel). Entries of a kernel are numbered row-major,
  0 … 8, so the centre is 4.
* Patterns: a pattern of size k keeps the centre and k − 1 of its 8 neighbours, so there are
  C(8, k − 1) candidates (56 for k = 4). `pattern_candidates(k)` lists them as sorted index tuples
  in lexicographic order; "pattern index" below means the position in that list. k = 9 is the one
  pattern keeping everything (no pattern pruning).
* Natural pattern of a kernel: the candidate with the largest L2 projection, i.e. the largest sum
  of the squares of the kept entries; ties go to the lower pattern index. An all-zero kernel (for
  instance one already pruned) has no natural pattern and is not counted.
* `pattern_library`: the `library_size` candidates that are most often natural, counted over all
  kernels of the chosen layers together; equal counts are ordered by pattern index. The library is
  listed most frequent first; "library index" is the position in it.
* Assignment: each kernel keeps the library pattern with the largest L2 projection (ties: lower
  library index). Kept kernels therefore have exactly k mask-True entries forming a library
  pattern.
* Connectivity pruning (PCONV), per layer: in each chosen layer with n kernels, the ⌊c·n⌋ kernels
  of smallest L2 norm over all 9 entries are removed whole (mask all False). Ties are broken by
  position: a stable sort of the norms over the kernels in weight order (flattened output ×
  input channel), so among equal norms the earlier kernel is removed first. Per layer, not global,
  so that every layer keeps a fraction 1 − c of its kernels (small first layers are not emptied).
  The library is built from all (non-zero) kernels, before connectivity pruning.

Weights are read as the layer's *effective* weight (already masked, if a mask is registered), as in
`magnitude_masks`. Scores are computed in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.prune.magnitude import _chosen, check_sparsity, prunable_layers

CENTRE = 4
KERNEL_ENTRIES = 9


def check_pattern_size(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= KERNEL_ENTRIES:
        raise ConfigError(f"pattern size must be 2..9; a 3×3 kernel has 9 entries (got k={k!r}; k=9 keeps all)")
    return k


def pattern_candidates(k: int = 4) -> list[tuple[int, ...]]:
    """The C(8, k − 1) patterns of size k (centre 4 plus k − 1 neighbours), as sorted flat-index
    tuples in lexicographic order."""
    k = check_pattern_size(k)
    neighbours = [i for i in range(KERNEL_ENTRIES) if i != CENTRE]
    return sorted(tuple(sorted((*c, CENTRE))) for c in itertools.combinations(neighbours, k - 1))


def _pattern_matrix(patterns: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """(len(patterns), 9) float64 0/1 matrix of the kept entries."""
    mat = torch.zeros(len(patterns), KERNEL_ENTRIES, dtype=torch.float64)
    for i, p in enumerate(patterns):
        mat[i, list(p)] = 1.0
    return mat


def _is_3x3(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 4 and tuple(w.shape[-2:]) == (3, 3)


def _conv3x3_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    """The chosen 3×3 conv layers, in model order (all of them when `layers` is None)."""
    if layers is None:
        chosen = {n: m for n, m in prunable_layers(model).items() if _is_3x3(m)}
        if not chosen:
            raise ConfigError(f"{type(model).__name__} has no 3×3 convolution to pattern-prune")
        return chosen
    chosen = _chosen(model, layers)
    bad = [n for n, m in chosen.items() if not _is_3x3(m)]
    if bad:
        allowed = [n for n, m in prunable_layers(model).items() if _is_3x3(m)]
        raise ConfigError(f"{', '.join(map(repr, bad))}: not a 3×3 convolution; pattern pruning takes 3×3 convs "
                          f"only; allowed: {', '.join(allowed) or '(none: no 3×3 convolution to pattern-prune)'}")
    return chosen


def _squares(m: nn.Module) -> torch.Tensor:
    """(kernels, 9) float64 squared effective weights."""
    w = m.weight.detach().to(torch.float64)
    return w.reshape(-1, KERNEL_ENTRIES) ** 2


def check_library_size(library_size: int, k: int) -> int:
    n = math.comb(8, k - 1)
    if isinstance(library_size, bool) or not isinstance(library_size, int) or not 1 <= library_size <= n:
        raise ConfigError(f"library_size must be an integer in 1..{n} (there are C(8, {k - 1}) = {n} patterns of "
                          f"size {k}), got {library_size!r}")
    return library_size


def natural_patterns(squares: torch.Tensor, k: int = 4) -> torch.Tensor:
    """Pattern index (into `pattern_candidates(k)`) of each kernel's natural pattern, from its
    (kernels, 9) squared weights; −1 for an all-zero kernel."""
    scores = squares.to(torch.float64) @ _pattern_matrix(pattern_candidates(k)).T
    best = torch.argmax(scores, dim=1)  # first maximum: the lower pattern index on ties
    return torch.where(squares.sum(dim=1) > 0, best, torch.full_like(best, -1))


def pattern_library(model: nn.Module, *, k: int = 4, library_size: int = 8,
                    layers: Sequence[str] | None = None) -> list[tuple[int, ...]]:
    """The `library_size` most frequent natural patterns over the chosen 3×3 convs (most frequent
    first, equal counts by pattern index); see the module docstring."""
    k = check_pattern_size(k)
    library_size = check_library_size(library_size, k)
    candidates = pattern_candidates(k)
    counts = torch.zeros(len(candidates), dtype=torch.int64)
    for m in _conv3x3_layers(model, layers).values():
        nat = natural_patterns(_squares(m), k)
        counts += torch.bincount(nat[nat >= 0], minlength=len(candidates))
    order = torch.sort(-counts, stable=True).indices  # descending count, ties by pattern index
    return [candidates[int(i)] for i in order[:library_size]]


def _check_library(library: Sequence[Sequence[int]], k: int) -> list[tuple[int, ...]]:
    candidates = set(pattern_candidates(k))
    out: list[tuple[int, ...]] = []
    for p in library:
        try:
            t = tuple(sorted(int(i) for i in p))
        except (TypeError, ValueError):
            raise ConfigError(f"library pattern {p!r} is not a sequence of flat indices 0..8") from None
        if t not in candidates:
            raise ConfigError(f"library pattern {p!r} is not a size-{k} pattern: it must hold {k} distinct flat "
                              "indices in 0..8 including the centre 4 (see pattern_candidates)")
        if t in out:
            raise ConfigError(f"library pattern {p!r} is listed twice")
        out.append(t)
    if not out:
        raise ConfigError("library must hold at least one pattern")
    return out


def pattern_masks(model: nn.Module, *, k: int = 4, library_size: int = 8, connectivity: float = 0.0,
                  layers: Sequence[str] | None = None,
                  library: Sequence[Sequence[int]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Keep-masks (bool, shaped like each weight) for the chosen 3×3 convs: each kernel keeps its
    best library pattern, and a fraction `connectivity` of each layer's kernels (smallest L2 norm)
    is removed whole. `library` (default: `pattern_library(model, k=k, library_size=library_size,
    layers=layers)`) fixes the patterns; `library_size` is then ignored. Other layers get no mask.

    Report: {"k", "library", "connectivity", "layers": {name: {"kernels", "removed", "histogram"
    (kept kernels per library index), "density"}}, "kernels", "removed", "density"} — density is
    the kept fraction of the chosen layers' weights.
    """
    k = check_pattern_size(k)
    connectivity = check_sparsity(connectivity, "connectivity (the fraction of kernels removed per layer)")
    chosen = _conv3x3_layers(model, layers)
    if library is None:
        library = pattern_library(model, k=k, library_size=library_size, layers=list(chosen))
    else:
        library = _check_library(library, k)
    lib = _pattern_matrix(library)
    masks: dict[str, torch.Tensor] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    kept_total = n_total = kernels_total = removed_total = 0
    for name, m in chosen.items():
        sq = _squares(m)
        n = sq.shape[0]
        choice = torch.argmax(sq @ lib.T, dim=1)  # first maximum: lower library index on ties
        keep = lib[choice].to(torch.bool)
        removed = math.floor(connectivity * n)
        order = torch.sort(sq.sum(dim=1), stable=True).indices
        alive = torch.ones(n, dtype=torch.bool)
        alive[order[:removed]] = False
        keep &= alive[:, None]
        masks[name] = keep.reshape(m.weight.shape)
        kept = int(keep.sum())
        per_layer[name] = {"kernels": n, "removed": removed,
                           "histogram": torch.bincount(choice[alive], minlength=len(library)).tolist(),
                           "density": kept / keep.numel()}
        kept_total, n_total = kept_total + kept, n_total + keep.numel()
        kernels_total, removed_total = kernels_total + n, removed_total + removed
    report = {"k": k, "library": list(library), "connectivity": connectivity, "layers": per_layer,
              "kernels": kernels_total, "removed": removed_total, "density": kept_total / n_total}
    return masks, report
