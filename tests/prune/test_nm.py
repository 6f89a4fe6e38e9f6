"""N:M (2:4) sparsity masks: exactly N kept in every full group, the largest ones, and kept through QAT."""

from __future__ import annotations

import pytest
import torch

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.prune import apply_masks, current_masks, quantize_pruned
from bitsmith.prune.nm import is_nm, nm_mask, nm_masks
from bitsmith.quant import QATConfig, lower


def test_hand_example_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 5.0, -5.0, 1.0, 0.7, -0.8, 0.05]])
    keep = nm_mask(w, 2, 4)
    #                 group 1: -0.9, 0.3     group 2: ties 5.0, 5.0, -5.0 → first two   tail (3): -0.8, 0.7
    assert keep.tolist() == [[False, True, True, False, True, True, False, False, True, True, False]]


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_every_full_group_keeps_exactly_n_largest(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    w = torch.randn(6, 5, 3, 3, generator=g)     # K = 45: full groups plus a tail when m does not divide 45
    keep = nm_mask(w, n, m)
    rows, kept = w.reshape(6, -1).abs(), keep.reshape(6, -1)
    full = 45 - 45 % m
    groups, kept_groups = rows[:, :full].reshape(6, -1, m), kept[:, :full].reshape(6, -1, m)
    assert torch.all(kept_groups.sum(dim=2) == n)
    smallest_kept = torch.where(kept_groups, groups, torch.inf).amin(dim=2)
    largest_dropped = torch.where(kept_groups, -torch.inf, groups).amax(dim=2)
    assert torch.all(smallest_kept >= largest_dropped)
    assert torch.all(kept[:, full:].sum(dim=1) == min(n, 45 % m))
    assert is_nm(w * keep, n, m) and (n == m or not is_nm(w, n, m))


def test_two_four_survives_qat_and_lowering():
    torch.manual_seed(0)
    model = build_model("lenet5")
    masks = nm_masks(model, 2, 4)
    apply_masks(model, masks)
    ds = load_dataset("synthetic", "train", limit=256)
    qmodel = quantize_pruned(model, ds, QATConfig("lsq", wbits=4, abits=4, epochs=1, batch_size=64, seed=0))
    graph = lower(qmodel)
    weighted = [n for n in graph.nodes if n.op in ("Conv2d", "Linear")]
    for node, (name, mask) in zip(weighted, current_masks(model).items()):
        codes = graph.weight_codes(node)
        assert torch.all(codes[~mask] == 0) and is_nm(codes, 2, 4), name


@pytest.mark.parametrize("n, m, needle", [
    (3, 2, "N=3 with M=4|N=3 with M=2"), (0, 4, "N from 1 to M"), (2, 1, "M=1 is not allowed"),
    (2, 32, "M=32 is not allowed"), (True, 4, "must be an integer"),
])
def test_bad_n_and_m_are_refused(n, m, needle):
    with pytest.raises(ConfigError, match=needle):
        nm_mask(torch.ones(2, 8), n, m)


def test_bad_layers_are_refused():
    model = build_model("lenet5")
    with pytest.raises(ConfigError, match="allowed: conv1"):
        nm_masks(model, layers=["conv9"])
    with pytest.raises(ConfigError, match="no prunable layer"):
        nm_masks(torch.nn.Sequential(torch.nn.ReLU()))
