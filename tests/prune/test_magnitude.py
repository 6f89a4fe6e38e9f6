"""Magnitude pruning: exact counts, determinism, errors, masks that hold through SGD, AGP values,
and pruned weights that lower to integer code 0 after QAT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.prune import (
    agp_sparsity,
    apply_masks,
    current_masks,
    magnitude_masks,
    prune_finetune,
    quantize_pruned,
    remove_masks,
    sparsity_of,
)
from bitsmith.quant import QATConfig, QuantConfig, lower, quantize
from bitsmith.quant.prepare import quantizable_layers, trace
from tests.prune.training import assert_pruned_zero, sgd_steps

LAYERS = ["conv1", "conv2", "conv3", "fc1", "fc2"]


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet5", num_classes=10, input_shape=(1, 32, 32))


@pytest.fixture(scope="module")
def train_ds():
    return load_dataset("synthetic", "train", limit=384)


def pruned_count(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


# --- masks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.999])
def test_global_prunes_exactly_floor_of_s_n_smallest(sparsity):
    model = lenet()
    masks = magnitude_masks(model, sparsity)
    assert list(masks) == quantizable_layers(model) == LAYERS
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert pruned_count(masks) == math.floor(sparsity * n)
    # Every pruned |w| is <= every kept |w| (over all layers together).
    mods = dict(model.named_modules())
    pruned = torch.cat([mods[k].weight.detach().abs()[~m] for k, m in masks.items()])
    kept = torch.cat([mods[k].weight.detach().abs()[m] for k, m in masks.items()])
    if len(pruned) and len(kept):
        assert pruned.max() <= kept.min()


def test_layer_scope_prunes_floor_in_each_layer_and_differs_from_global():
    model = lenet()
    mods = dict(model.named_modules())
    local = magnitude_masks(model, 0.6, scope="layer")
    for name, mask in local.items():
        n = mods[name].weight.numel()
        assert int((~mask).sum()) == math.floor(0.6 * n)
        w = mods[name].weight.detach().abs()
        assert w[~mask].max() <= w[mask].min()
    glob = magnitude_masks(model, 0.6)
    assert any(not torch.equal(local[k], glob[k]) for k in LAYERS)


def test_layers_subset_only_those_layers():
    model = lenet()
    masks = magnitude_masks(model, 0.5, layers=["fc1", "conv2"])
    assert list(masks) == ["conv2", "fc1"]  # model order
    n = model.conv2.weight.numel() + model.fc1.weight.numel()
    assert pruned_count(masks) == math.floor(0.5 * n)


def test_ties_broken_by_index_deterministically():
    lin = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 1.0, -1.0, 3.0, 1.0, 0.5, 1.0, -0.5]]))
    model = nn.Sequential(lin)
    masks = magnitude_masks(model, 0.4)  # prune 4: the two ±0.5, then the first two of the |1|s
    assert masks["0"].tolist() == [[False, False, True, True, True, True, True, False, True, False]]
    for _ in range(3):
        assert torch.equal(magnitude_masks(copy.deepcopy(model), 0.4)["0"], masks["0"])


def test_masks_deterministic_across_calls():
    a = magnitude_masks(lenet(1), 0.5)
    b = magnitude_masks(lenet(1), 0.5)
    assert all(torch.equal(a[k], b[k]) for k in LAYERS)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True])
def test_sparsity_bounds(bad):
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
        magnitude_masks(lenet(), bad)


def test_bad_names_scope_and_no_prunable_layer():
    with pytest.raises(ConfigError, match="'fc9'.*allowed: conv1, conv2, conv3, fc1, fc2"):
        magnitude_masks(lenet(), 0.5, layers=["fc1", "fc9"])
    with pytest.raises(ConfigError, match="unknown scope"):
        magnitude_masks(lenet(), 0.5, scope="channel")
    with pytest.raises(ConfigError, match="no prunable layer"):
        magnitude_masks(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)), 0.5)
    with pytest.raises(ConfigError, match="'nope'"):
        apply_masks(lenet(), {"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        apply_masks(lenet(), {"fc2": torch.ones(3, dtype=torch.bool)})


# --- applying, keeping, removing --------------------------------------------------------------------

def test_apply_zeroes_and_sgd_momentum_weight_decay_cannot_revive():
    model = lenet()
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    assert sparsity_of(model)["total"] == pytest.approx(0.5, abs=1e-3)
    sgd_steps(model, 5)  # weight decay and momentum move the stored value; the effective weight stays 0
    assert_pruned_zero(model, masks)
    mods = dict(model.named_modules())
    # Weights moved where kept (training did happen).
    assert not torch.equal(mods["fc1"].weight.detach()[masks["fc1"]], lenet().fc1.weight.detach()[masks["fc1"]])


def test_remove_masks_bakes_and_deepcopy_keeps_masks():
    model = apply_masks(lenet(), magnitude_masks(lenet(), 0.4))
    clone = copy.deepcopy(model)
    assert set(current_masks(clone)) == set(LAYERS)
    assert sparsity_of(clone) == sparsity_of(model)
    remove_masks(model)
    assert current_masks(model) == {}
    assert type(model.conv1) is nn.Conv2d
    assert set(model.state_dict()) == set(lenet().state_dict())
    assert sparsity_of(model)["total"] == pytest.approx(0.4, abs=1e-3)


def test_masked_model_traces_and_quantizes_with_ptq():
    model = apply_masks(lenet(), magnitude_masks(lenet(), 0.5, scope="layer"))
    gm = trace(model)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(gm(x), model(x))
    qmodel = quantize_pruned(model, [x], QuantConfig(weight_bits=8, act_bits=8))
    graph = lower(qmodel)
    _assert_codes_zero(graph, current_masks(model))
    # Plain quantize() of a masked model sees the masked weights too (codes 0 before any training).
    _assert_codes_zero(lower(quantize(model, [x], QuantConfig())), current_masks(model))


# --- schedules ----------------------------------------------------------------------------------------

def test_agp_hand_values():
    assert agp_sparsity(0, 100, 0.8) == 0.0
    assert agp_sparsity(100, 100, 0.8) == pytest.approx(0.8)
    assert agp_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 0.7
    assert agp_sparsity(50, 100, 0.8) == pytest.approx(0.7)
    # s_i = 0.2, t0 = 10, t1 = 30: at t = 20, 0.8 + (0.2 − 0.8)·0.125 = 0.725; before t0 s_i, after t1 s_f.
    assert agp_sparsity(20, 100, 0.8, initial=0.2, begin=10, end=30) == pytest.approx(0.725)
    assert agp_sparsity(5, 100, 0.8, initial=0.2, begin=10, end=30) == 0.2
    assert agp_sparsity(60, 100, 0.8, initial=0.2, begin=10, end=30) == pytest.approx(0.8)
    values = [agp_sparsity(t, 10, 0.9) for t in range(11)]
    assert values == sorted(values)
    with pytest.raises(ConfigError, match="sparsity must be in"):
        agp_sparsity(0, 10, 1.0)
    with pytest.raises(ConfigError, match="begin < end"):
        agp_sparsity(0, 10, 0.5, begin=10)


def test_oneshot_finetune_keeps_zeros_and_is_deterministic(train_ds):
    model = lenet()
    before = copy.deepcopy(model.state_dict())
    pruned, history = prune_finetune(model, train_ds, sparsity=0.5, epochs=1, batch_size=64, lr=0.02, seed=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input is untouched
    masks = current_masks(pruned)
    n = sum(m.numel() for m in masks.values())
    assert pruned_count(masks) == n // 2
    assert sparsity_of(pruned)["total"] == pytest.approx(pruned_count(masks) / n)
    assert history[0] == {"step": 0, "sparsity": pytest.approx(0.5, abs=1e-3)}
    assert history[-1]["epoch"] == 1 and math.isfinite(history[-1]["train_loss"])
    again, _ = prune_finetune(model, train_ds, sparsity=0.5, epochs=1, batch_size=64, lr=0.02, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("schedule", ["iterative", "agp"])
def test_gradual_schedules_ramp_to_final(train_ds, schedule):
    pruned, history = prune_finetune(lenet(), train_ds, sparsity=0.6, schedule=schedule, epochs=1,
                                     batch_size=48, prune_events=3, seed=0)
    events = [r for r in history if "step" in r]
    assert [r["step"] for r in events] == [0, 2, 4]  # 8 steps, Δ = ⌊8/4⌋
    levels = [r["sparsity"] for r in events]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.6, abs=1e-3)
    assert levels[0] == pytest.approx(0.2 if schedule == "iterative" else 0.6 * (1 - (2 / 3) ** 3), abs=1e-3)
    assert sparsity_of(pruned)["total"] == pytest.approx(0.6, abs=1e-3)


def test_finetune_bad_schedule():
    with pytest.raises(ConfigError, match="unknown schedule"):
        prune_finetune(lenet(), load_dataset("synthetic", "train", limit=64), sparsity=0.5, schedule="cubic")


# --- QAT --------------------------------------------------------------------------------------------

def _assert_codes_zero(graph, masks: dict[str, torch.Tensor]) -> int:
    """Every pruned position has integer weight code 0; the graph's weighted nodes are in layer order."""
    weighted = [n for n in graph.nodes if "weight" in n.params or "weight_index" in n.params]
    assert len(weighted) == len(masks)
    zeros = 0
    for node, (name, mask) in zip(weighted, masks.items()):
        codes = graph.weight_codes(node)
        assert codes.shape == mask.shape, name
        assert torch.all(codes[~mask] == 0), name
        zeros += int((~mask).sum())
    return zeros


@pytest.mark.parametrize("method", ["lsq", "hwgq"])
def test_qat_keeps_pruned_codes_zero(train_ds, method):
    pruned, _ = prune_finetune(lenet(), train_ds, sparsity=0.5, epochs=1, batch_size=64, lr=0.02, seed=0)
    masks = current_masks(pruned)
    config = QATConfig(method, wbits=8, abits=4, epochs=2, batch_size=64, lr=0.05, seed=0)
    qmodel = quantize_pruned(pruned, train_ds, config)
    graph = lower(qmodel)
    assert _assert_codes_zero(graph, masks) == pruned_count(masks)
    if method != "lsq":
        return
    # Without the masks, QAT moves the pruned weights off zero: the test above can fail.
    plain = lower(quantize(remove_masks(copy.deepcopy(pruned)), train_ds, config))
    with pytest.raises(AssertionError):
        _assert_codes_zero(plain, masks)


def test_dorefa_refuses_masks(train_ds):
    model = apply_masks(lenet(), magnitude_masks(lenet(), 0.5))
    config = QATConfig("dorefa", wbits=4, abits=4, epochs=1, batch_size=64)
    with pytest.raises(ConfigError, match="DoReFa's grid has no zero"):
        quantize_pruned(model, train_ds, config)


def test_baking_the_masks_of_a_copy_leaves_the_original_masked():
    model = build_model("lenet5")
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    baked = remove_masks(copy.deepcopy(model))
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), baked(x))                      # the original still has its weight property
    assert current_masks(model).keys() == masks.keys() and not current_masks(baked)
