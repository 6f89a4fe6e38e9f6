"""Pattern and connectivity pruning (PatDNN / PCONV): candidates, natural patterns, library,
assignment on hand-made weights, exact connectivity counts, masks that hold through SGD, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.prune.magnitude import apply_masks
from bitsmith.prune.pattern import natural_patterns, pattern_candidates, pattern_library, pattern_masks
from tests.prune.training import assert_pruned_zero, sgd_steps

VGG_CONVS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6"]


def vgg(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vgg_tiny", input_shape=(1, 32, 32), width=0.25)


def kernel(**entries: float) -> list[float]:
    """A flat 3×3 kernel, small noise-free values: e.g. kernel(e1=3, e4=1)."""
    flat = [0.0] * 9
    for key, v in entries.items():
        flat[int(key[1:])] = v
    return flat


def conv_with(kernels: list[list[float]]) -> nn.Module:
    """Sequential(Conv2d(1, len(kernels), 3)) holding `kernels` (each flat, row-major); layer "0"."""
    model = nn.Sequential(nn.Conv2d(1, len(kernels), 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(kernels).reshape(len(kernels), 1, 3, 3))
    return model


def positions(mask: torch.Tensor) -> list[tuple[int, ...]]:
    """Kept flat positions of each kernel of a mask."""
    return [tuple(int(i) for i in torch.nonzero(row).flatten()) for row in mask.reshape(-1, 9)]


# --- candidates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(2, 10))
def test_candidates_count_centre_order(k):
    cands = pattern_candidates(k)
    assert len(cands) == math.comb(8, k - 1) == len(set(cands))
    assert all(len(p) == k and 4 in p and list(p) == sorted(p) and set(p) <= set(range(9)) for p in cands)
    assert cands == sorted(cands)


def test_candidates_k4_first_and_last():
    cands = pattern_candidates()
    assert len(cands) == 56
    assert cands[0] == (0, 1, 2, 4) and cands[1] == (0, 1, 3, 4) and cands[-1] == (4, 6, 7, 8)
    assert pattern_candidates(9) == [tuple(range(9))]


# --- natural pattern, library, assignment on hand-made weights ------------------------------------

def test_natural_pattern_exact():
    cands = pattern_candidates(4)
    sq = torch.tensor([kernel(e1=3, e3=-2, e7=1, e8=0.5),    # largest three neighbours 1, 3, 7
                       kernel(e0=0.1, e2=-5, e5=4, e6=3),    # 2, 5, 6
                       [1.0] * 9,                            # all tie: lowest pattern index
                       [0.0] * 9]) ** 2                      # all zero: no natural pattern
    nat = natural_patterns(sq, 4).tolist()
    assert [cands[i] for i in nat[:3]] == [(1, 3, 4, 7), (2, 4, 5, 6), (0, 1, 2, 4)]
    assert nat[3] == -1
    # The centre always counts but never decides: a big centre changes nothing.
    assert natural_patterns(torch.tensor([kernel(e4=100, e1=3, e3=2, e7=1)]) ** 2, 4).tolist() == [nat[0]]


def test_library_most_frequent_with_ties_by_pattern_index():
    a = kernel(e1=3, e3=2, e7=1)          # natural (1, 3, 4, 7)
    b = kernel(e1=3, e5=2, e7=1)          # natural (1, 4, 5, 7)
    c = kernel(e0=3, e2=2, e6=1)          # natural (0, 2, 4, 6)
    model = conv_with([b, a, b, c, a, b, [0.0] * 9])   # counts: b 3, a 2, c 1; zero kernel not counted
    assert pattern_library(model, library_size=1) == [(1, 4, 5, 7)]
    assert pattern_library(model, library_size=3) == [(1, 4, 5, 7), (1, 3, 4, 7), (0, 2, 4, 6)]
    # The rest have count 0: filled in pattern order.
    assert pattern_library(model, library_size=5)[3:] == [(0, 1, 2, 4), (0, 1, 3, 4)]
    tie = conv_with([b, a, c, a, b])      # a and b both 2: (1, 3, 4, 7) comes first in pattern order
    assert pattern_library(tie, library_size=2) == [(1, 3, 4, 7), (1, 4, 5, 7)]


def test_assignment_largest_projection_and_ties():
    library = [(1, 4, 5, 7), (0, 1, 2, 4)]
    kernels = [kernel(e0=2, e2=2, e5=1),            # (0,1,2,4): 8 vs (1,4,5,7): 1 -> library 1
               kernel(e1=1, e3=3, e5=2, e7=1),      # natural (1,3,4,5) not in library; 6 vs 1 -> library 0
               kernel(e5=1, e0=1),                  # 1 vs 1: tie -> lower library index 0
               [0.0] * 9]                           # all zero: tie -> library 0 (and stays zero)
    model = conv_with(kernels)
    masks, report = pattern_masks(model, library=library)
    assert positions(masks["0"]) == [(0, 1, 2, 4), (1, 4, 5, 7), (1, 4, 5, 7), (1, 4, 5, 7)]
    assert report["library"] == library
    assert report["layers"]["0"]["histogram"] == [3, 1]
    assert report["layers"]["0"] == {"kernels": 4, "removed": 0, "histogram": [3, 1], "density": 16 / 36}
    # The library in the report is normalised (sorted indices), the given order is kept, and ties
    # now go to (0, 1, 2, 4), which is library index 0.
    masks2, report2 = pattern_masks(model, library=[(2, 1, 0, 4), (7, 5, 4, 1)])
    assert report2["library"] == [(0, 1, 2, 4), (1, 4, 5, 7)]
    assert positions(masks2["0"]) == [(0, 1, 2, 4), (1, 4, 5, 7), (0, 1, 2, 4), (0, 1, 2, 4)]
    assert report2["layers"]["0"]["histogram"] == [3, 1]


# --- on a real network ----------------------------------------------------------------------------

@pytest.mark.parametrize("k,library_size", [(4, 8), (2, 6), (5, 12), (9, 1)])
def test_every_kept_kernel_is_a_library_pattern(k, library_size):
    model = vgg()
    masks, report = pattern_masks(model, k=k, library_size=library_size)
    assert list(masks) == VGG_CONVS                   # fc untouched
    library = set(report["library"])
    assert len(library) == library_size and report["library"] == pattern_library(model, k=k,
                                                                                  library_size=library_size)
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == dict(model.named_modules())[name].weight.shape
        assert all(p in library for p in positions(mask))
        assert sum(report["layers"][name]["histogram"]) == report["layers"][name]["kernels"]
        assert report["layers"][name]["density"] == pytest.approx(k / 9)
    assert report["density"] == pytest.approx(k / 9) and report["removed"] == 0


@pytest.mark.parametrize("c", [0.0, 0.3, 0.5, 0.9])
def test_connectivity_removes_floor_c_n_smallest_kernels_per_layer(c):
    model = vgg(1)
    mods = dict(model.named_modules())
    masks, report = pattern_masks(model, connectivity=c)
    library = set(report["library"])
    total = 0
    for name, mask in masks.items():
        norms = mods[name].weight.detach().reshape(-1, 9).norm(dim=1)
        n = norms.numel()
        pos = positions(mask)
        dead = torch.tensor([len(p) == 0 for p in pos])
        assert int(dead.sum()) == math.floor(c * n) == report["layers"][name]["removed"]
        assert all(p in library for p, d in zip(pos, dead) if not d)
        if dead.any():
            assert norms[dead].max() <= norms[~dead].min()
        assert sum(report["layers"][name]["histogram"]) == n - int(dead.sum())
        assert report["layers"][name]["density"] == pytest.approx((n - int(dead.sum())) * 4 / (9 * n))
        total += int(dead.sum())
    assert report["removed"] == total


def test_connectivity_ties_remove_earlier_kernel():
    k1 = kernel(e1=1)
    model = conv_with([kernel(e0=5), k1, k1, kernel(e2=3), k1])
    masks, report = pattern_masks(model, connectivity=0.4, library_size=1)   # ⌊0.4·5⌋ = 2
    assert [len(p) == 0 for p in positions(masks["0"])] == [False, True, True, False, False]


def test_depthwise_and_layer_selection():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 4, 5), nn.Conv2d(4, 4, 1))
    masks, _ = pattern_masks(model)
    assert list(masks) == ["0", "1"]                                         # 5×5 and 1×1 untouched
    assert masks["1"].shape == (4, 1, 3, 3) and all(len(p) == 4 for p in positions(masks["1"]))
    masks, report = pattern_masks(model, layers=["1"])
    assert list(masks) == ["1"] and list(report["layers"]) == ["1"]


def test_masks_hold_through_sgd_on_vgg_tiny():
    model = vgg(2)
    masks, _ = pattern_masks(model, connectivity=0.25)
    apply_masks(model, masks)
    sgd_steps(model, 2)
    assert_pruned_zero(model, masks)


def test_deterministic():
    model = vgg(3)
    a_masks, a_report = pattern_masks(model, connectivity=0.3, library_size=6)
    b_masks, b_report = pattern_masks(copy.deepcopy(model), connectivity=0.3, library_size=6)
    assert a_report == b_report
    assert all(torch.equal(a_masks[n], b_masks[n]) for n in a_masks)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"k": 1}, "pattern size must be 2..9; a 3×3 kernel has 9 entries"),
    ({"k": 10}, "pattern size must be 2..9"),
    ({"k": True}, "pattern size must be 2..9"),
    ({"library_size": 0}, r"library_size must be an integer in 1\.\.56"),
    ({"library_size": 57}, r"1\.\.56"),
    ({"k": 9}, r"1\.\.1"),                                  # k = 9: one pattern, default 8 is too many
    ({"k": 2, "library_size": 9}, r"1\.\.8"),
    ({"connectivity": 1.0}, r"connectivity .* must be in \[0, 1\)"),
    ({"connectivity": -0.1}, r"must be in \[0, 1\)"),
    ({"layers": ["fc"]}, "'fc': not a 3×3 convolution.*allowed: conv1, conv2"),
    ({"layers": ["nope"]}, "not a prunable layer"),
    ({"library": [(0, 1, 2, 3)]}, "not a size-4 pattern"),
    ({"library": [(0, 1, 4)]}, "not a size-4 pattern"),
    ({"library": [(0, 1, 2, 4), (2, 1, 0, 4)]}, "listed twice"),
    ({"library": []}, "at least one pattern"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        pattern_masks(vgg(), **kwargs)


def test_bad_inputs_elsewhere():
    with pytest.raises(ConfigError, match="pattern size must be 2..9"):
        pattern_candidates(0)
    with pytest.raises(ConfigError, match="library_size"):
        pattern_library(vgg(), library_size=100)
    no_3x3 = nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2, 2))
    for call in (pattern_masks, pattern_library):
        with pytest.raises(ConfigError, match="no 3×3 convolution to pattern-prune"):
            call(no_3x3)
