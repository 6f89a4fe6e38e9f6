"""SSL (bitsmith.prune.ssl): group-lasso values by hand, training that empties groups, and removal
that shrinks the model — exactly output-preserving for groups whose norm is exactly zero."""

import math

import pytest
import torch
from torch import nn

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.prune import apply_masks, current_masks, group_lasso, group_norms, ssl_remove, ssl_train
from tests.prune.training import assert_pruned_zero, sgd_steps


def _lenet():
    torch.manual_seed(0)
    return build_model("lenet5").eval()


def test_group_norms_and_the_lasso_by_hand():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    filters = [math.sqrt(sum(v * v for v in range(n * 12, n * 12 + 12))) for n in range(2)]
    assert torch.allclose(group_norms(w, "filter"), torch.tensor(filters))
    channels = [math.sqrt(sum(float(w[n, c, i, j]) ** 2 for n in range(2) for i in range(2) for j in range(2)))
                for c in range(3)]
    assert torch.allclose(group_norms(w, "channel"), torch.tensor(channels))
    shapes = [math.hypot(float(w[0, c, i, j]), float(w[1, c, i, j])) for c in range(3) for i in range(2) for j in range(2)]
    assert torch.allclose(group_norms(w, "shape"), torch.tensor(shapes))

    model = nn.Sequential(nn.Conv2d(3, 2, 2, bias=False), nn.Flatten(), nn.Linear(2, 4))
    with torch.no_grad():
        model[0].weight.copy_(w)
    lin = model[2].weight.detach()
    expected = sum(filters) + sum(channels) + lin.norm(dim=1).sum() + lin.norm(dim=0).sum()
    assert torch.isclose(group_lasso(model, ("filter", "channel")), expected)
    # √|g|: a conv filter has 12 weights, a conv channel 8, a Linear row 2, a column 4; shape: 2 (conv only)
    scaled = (math.sqrt(12) * sum(filters) + math.sqrt(8) * sum(channels) + math.sqrt(2) * sum(shapes)
              + math.sqrt(2) * lin.norm(dim=1).sum() + math.sqrt(4) * lin.norm(dim=0).sum())
    assert torch.isclose(group_lasso(model, ("filter", "channel", "shape"), scale_by_size=True), scaled)
    assert torch.isclose(group_lasso(model, "shape", layers=["0"]), torch.tensor(sum(shapes)))


def test_the_lasso_gradient_of_an_empty_group_is_zero_not_nan():
    model = _lenet()
    with torch.no_grad():
        model.conv2.weight[3] = 0
    group_lasso(model, ("filter", "channel", "shape")).backward()
    grad = model.conv2.weight.grad
    assert torch.isfinite(grad).all()
    assert torch.all(grad[3] == 0)  # d‖v‖/dv_i = v_i/‖v‖ is 0 at a zero entry, in every group through it
    assert torch.all(grad[:3] != 0)


def test_removing_exactly_zero_groups_leaves_the_outputs_unchanged():
    model = _lenet()  # no bias: a zero filter outputs exactly 0
    with torch.no_grad():
        model.conv1.weight[1] = 0               # filter group
        model.conv2.weight[[0, 5, 7]] = 0        # filter groups
        model.conv3.weight[:, 3] = 0             # channel group: conv2's channel 3 is read by nobody
        model.fc1.weight[:, 10:20] = 0           # channel groups of the Linear: conv3's channels 10..19
        model.conv2.weight[:, :, 0, 0] = 0       # shape groups: position (0, 0) of every input channel
    x = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    pruned, report = ssl_remove(model, 0.0)
    assert report.structured.removed == {"conv1": [1], "conv2": [0, 3, 5, 7], "conv3": list(range(10, 20))}
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels, pruned.conv3.out_channels) == (5, 12, 110)
    assert report.shape_groups_zeroed == {"conv2": 5}  # 5 input channels left, position (0, 0) of each
    assert report.structured.macs_after < report.structured.macs_before
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), rtol=0, atol=1e-5)
    masks = current_masks(pruned)
    assert set(masks) == {"conv2"} and not masks["conv2"][:, :, 0, 0].any() and masks["conv2"][:, :, 1:].all()
    sgd_steps(pruned, 3)  # the zeroed shape groups stay zero through training
    assert torch.all(pruned.conv2.weight[:, :, 0, 0] == 0)


def test_a_channel_nobody_reads_goes_exactly_even_behind_batchnorm():
    torch.manual_seed(0)
    model = build_model("vgg_tiny", input_shape=(1, 32, 32), width=0.25).eval()
    with torch.no_grad():
        model.conv3.weight[:, [1, 4]] = 0                # conv2's channels 1 and 4 are read by nobody
        model.fc.weight.view(10, 64, 4, 4)[:, 7] = 0     # conv6's channel 7: its 16 columns after the Flatten
    x = torch.randn(4, 1, 32, 32)
    pruned, report = ssl_remove(model, 0.0, groups=("channel",))
    assert report.structured.removed == {"conv2": [1, 4], "conv6": [7]}
    assert pruned.conv2_bn.num_features == 14 and pruned.fc.in_features == 63 * 16
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), rtol=0, atol=1e-5)


def test_every_channel_dead_keeps_the_strongest_one():
    model = _lenet()
    with torch.no_grad():
        model.conv1.weight.mul_(1e-4)
        model.conv1.weight[4] *= 2
    pruned, report = ssl_remove(model, 1.0, groups=("filter",))
    assert pruned.conv1.out_channels == 1 and torch.equal(pruned.conv1.weight[0], model.conv1.weight[4])


def test_ssl_training_empties_groups_and_removal_shrinks_the_model():
    model = _lenet()
    train = load_dataset("synthetic", "train", limit=512)
    trained, history = ssl_train(model, train, strength=0.02, groups=("filter", "channel"), epochs=4,
                                 batch_size=32, lr=0.05, seed=0)
    assert history[-1]["epoch"] == 4 and history[-1]["train_acc"] > 50  # still learning (chance: 10%)
    assert group_lasso(trained) < group_lasso(model) / 2
    pruned, report = ssl_remove(trained, 1e-3)  # SGD leaves emptied groups near 0, not at 0
    removed = sum(len(v) for v in report.structured.removed.values())
    assert removed >= 10, report.structured.removed
    assert report.structured.macs_after < report.structured.macs_before
    assert report.structured.params_after < report.structured.params_before
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # groups of norm ≤ 1e-3 contributed next to nothing
        assert torch.allclose(pruned(x), trained(x), rtol=0, atol=1e-3)


def test_bad_input_is_refused():
    model = _lenet()
    with pytest.raises(ConfigError, match="unknown SSL group"):
        group_lasso(model, ("filters",))
    with pytest.raises(ConfigError, match="unknown SSL group"):
        ssl_remove(model, 0.1, groups=("kernel",))
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ConfigError, match="threshold must be a finite number >= 0"):
            ssl_remove(model, bad)
        with pytest.raises(ConfigError, match="strength must be a finite number >= 0"):
            ssl_train(model, load_dataset("synthetic", "train", limit=64), strength=bad)
    with pytest.raises(ConfigError, match="layers: 'conv9'"):
        group_lasso(model, layers=["conv9"])
    with pytest.raises(ConfigError, match="has no prunable layer"):
        group_lasso(nn.Sequential(nn.ReLU()))
    with pytest.raises(ConfigError, match="has no prunable layer"):
        ssl_remove(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 0.1, input_shape=(1, 2, 2))


def test_a_masked_model_is_refused_and_left_intact():
    model = _lenet()
    keep = torch.ones_like(model.conv2.weight, dtype=torch.bool)
    keep[2] = False
    apply_masks(model, {"conv2": keep})
    with pytest.raises(ConfigError, match="'conv2' carries a pruning mask; bake it first"):
        ssl_remove(model, 0.0)
    assert_pruned_zero(model, {"conv2": keep})
