"""Structured channel pruning (bitsmith.prune.structured): layers physically shrink, the removed
channels are the lowest-scored, coupled widths (residual Adds, Flatten → Linear) stay consistent,
the output layer is never touched, and bad input fails clearly."""

import math

import pytest
import torch
from torch import nn

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model, model_summary
from bitsmith.prune import apply_masks, finetune, magnitude_masks
from bitsmith.prune.structured import channel_prune


def _model(name, **kwargs):
    torch.manual_seed(0)
    return build_model(name, **kwargs).eval()


def _rows(pruned, original):
    """For each row of `pruned` (a weight with fewer output rows) its index in `original` (the
    random floats are distinct, so each kept filter is found exactly once)."""
    found = []
    for row in pruned:
        hits = [i for i in range(len(original)) if original[i].shape == row.shape and torch.equal(original[i], row)]
        assert len(hits) == 1
        found.append(hits[0])
    return found


def test_lenet5_half_the_channels_go_the_lowest_l1_filters_and_the_rest_is_copied():
    model = _model("lenet5")
    pruned, report = channel_prune(model, 0.5)
    widths = {c.name: (c.in_after, c.out_after) for c in report.layers}
    assert widths == {"conv1": (1, 3), "conv2": (3, 8), "conv3": (8, 60), "fc1": (60, 42), "fc2": (42, 10)}
    assert pruned.conv1.weight.shape == (3, 1, 5, 5) and pruned.fc2.out_features == 10  # output layer kept
    assert model.conv1.out_channels == 6  # the caller's model is untouched
    l1 = model.conv1.weight.detach().abs().flatten(1).sum(1)
    assert report.removed["conv1"] == sorted(torch.sort(l1).indices[:3].tolist())
    kept1 = [i for i in range(6) if i not in report.removed["conv1"]]
    kept2 = [i for i in range(16) if i not in report.removed["conv2"]]
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[kept1])
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[kept2][:, kept1])
    rows = model_summary(pruned)
    assert report.macs_after == sum(r.macs for r in rows) < report.macs_before == 416_520
    assert report.params_after == sum(r.params for r in rows) < report.params_before == 61_470
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_ratio_zero_changes_nothing():
    model = _model("lenet5")
    pruned, report = channel_prune(model, 0.0)
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(pruned(x), model(x)) and report.removed == {} and report.macs_after == report.macs_before
    assert "shrunk" not in pruned.spec


def test_vgg_tiny_bn_criterion_removes_the_smallest_gammas_through_the_flatten():
    model = _model("vgg_tiny", input_shape=(1, 32, 32), width=0.25)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) + 0.1)
    pruned, report = channel_prune(model, 0.5, criterion="bn")
    gamma = model.conv1_bn.weight.detach().abs()
    assert report.removed["conv1"] == sorted(torch.sort(gamma).indices[:8].tolist())
    assert [pruned.get_submodule(f"conv{i}").out_channels for i in range(1, 7)] == [8, 8, 16, 16, 32, 32]
    assert pruned.fc.in_features == 32 * 4 * 4 and pruned.fc.out_features == 10
    # the Linear after the Flatten lost exactly the columns of the removed conv6 channels
    kept6 = [c for c in range(64) if c not in report.removed["conv6"]]
    columns = torch.arange(64 * 16).reshape(64, 16)[kept6].flatten()
    assert torch.equal(pruned.fc.weight, model.fc.weight[:, columns])
    assert pruned.spec["shrunk"]["conv6_bn"] == {"num_features": 32}
    assert pruned(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_resnet20_coupled_channels_across_the_adds_are_removed_together():
    model = _model("resnet20", input_shape=(3, 16, 16))
    pruned, report = channel_prune(model, 0.5)
    stem = _rows(pruned.conv1.weight, model.conv1.weight)
    assert len(stem) == 8
    # every block of stage 1 adds its conv2 output to the stem's channels: the same channels are kept
    for old, new in zip(model.layer1, pruned.layer1):
        inner = _rows(new.conv1.weight, old.conv1.weight[:, stem])
        assert _rows(new.conv2.weight, old.conv2.weight[:, inner]) == stem
        assert torch.equal(new.bn2.weight, old.bn2.weight[stem])
    assert pruned.layer2[0].shortcut.conv.out_channels == pruned.layer2[2].conv2.out_channels == 16
    assert pruned.fc.in_features == 32 and pruned.fc.out_features == 10
    assert report.macs_after < report.macs_before / 3
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_the_layer_feeding_the_output_through_a_pool_is_never_pruned():
    model = _model("nin", input_shape=(3, 16, 16))
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    pruned, report = channel_prune(model, 0.25)
    assert [m for m in pruned.modules() if isinstance(m, nn.Conv2d)][-1].out_channels == last.out_channels == 10
    assert report.macs_after < report.macs_before
    assert pruned(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_ignored_layers_and_round_to():
    model = _model("lenet5")
    pruned, report = channel_prune(model, 0.3, ignored_layers=["conv2"], round_to=4)
    widths = {c.name: c.out_after for c in report.layers}
    # kept = n − ⌊0.3·n⌋ rounded down to a multiple of 4 (at least 4): 6 → 5 → 4, 120 → 84, 84 → 59 → 56
    assert widths == {"conv1": 4, "conv2": 16, "conv3": 84, "fc1": 56, "fc2": 10}
    assert pruned.conv3.in_channels == 16


def test_a_shrunk_model_fine_tunes_with_the_shared_loop():
    pruned, _ = channel_prune(_model("lenet5"), 0.5)
    tuned, history = finetune(pruned, load_dataset("synthetic", "train", limit=128), epochs=1, batch_size=64)
    assert tuned.conv1.weight.shape == (3, 1, 5, 5) and not torch.equal(tuned.conv1.weight, pruned.conv1.weight)
    assert history[-1]["epoch"] == 1 and math.isfinite(history[-1]["train_loss"])


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, True, "0.5", float("nan")])
def test_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ConfigError, match="ratio must be in"):
        channel_prune(_model("lenet5"), ratio)


def test_bad_input_is_refused_clearly():
    lenet = _model("lenet5")
    with pytest.raises(ConfigError, match="unknown criterion 'l2'; allowed: l1, bn"):
        channel_prune(lenet, 0.5, criterion="l2")
    with pytest.raises(ConfigError, match="LeNet5 has no BatchNorm; use criterion 'l1'"):
        channel_prune(lenet, 0.5, criterion="bn")
    with pytest.raises(ConfigError, match="Sequential has no prunable layer"):
        channel_prune(nn.Sequential(nn.ReLU()), 0.5, input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="Sequential has no prunable layer: every Conv2d/Linear feeds the model"):
        channel_prune(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), 0.5, input_shape=(1, 4, 4))
    with pytest.raises(ConfigError, match="'conv9' not a Conv2d/Linear of LeNet5"):
        channel_prune(lenet, 0.5, ignored_layers=["conv9"])
    with pytest.raises(ConfigError, match="Sequential has no input_shape attribute; pass input_shape"):
        channel_prune(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 3)), 0.5)
    with pytest.raises(ConfigError, match="round_to must be a positive integer"):
        channel_prune(lenet, 0.5, round_to=0)
    masked = apply_masks(_model("lenet5"), magnitude_masks(lenet, 0.5))
    with pytest.raises(ConfigError, match="carries a pruning mask; bake it first"):
        channel_prune(masked, 0.5)
