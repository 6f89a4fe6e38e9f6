"""L1 / L2 weight penalties (bitsmith.prune.regularise): values by hand (weights only, never
biases), masked weights excluded, and wired into pruning's fine-tuning loop."""

import pytest
import torch
from torch import nn

from bitsmith.data import load_dataset
from bitsmith.errors import ConfigError
from bitsmith.models import build_model
from bitsmith.prune import apply_masks, finetune, magnitude_masks, prune_finetune, weight_penalty


def _lenet(bias=True):
    torch.manual_seed(0)
    return build_model("lenet5", bias=bias)


def test_the_penalty_by_hand_counts_weights_not_biases():
    model = _lenet(bias=True)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    l1 = sum(float(w.abs().sum()) for w in weights)
    l2 = sum(float(w.pow(2).sum()) for w in weights)
    assert weight_penalty(model, l1=0.5).item() == pytest.approx(0.5 * l1, rel=1e-5)
    assert weight_penalty(model, l2=0.25).item() == pytest.approx(0.25 * l2, rel=1e-5)
    assert weight_penalty(model, l1=0.5, l2=0.25).item() == pytest.approx(0.5 * l1 + 0.25 * l2, rel=1e-5)
    assert weight_penalty(model).item() == 0.0


def test_masked_weights_are_not_penalised_and_get_no_gradient():
    model = _lenet(bias=False)
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    expected = sum(float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    penalty = weight_penalty(model, l1=1.0, l2=1.0)
    assert penalty.item() == pytest.approx(expected + sum(float(m.weight.detach().pow(2).sum()) for m in model.modules()
                                                          if isinstance(m, (nn.Conv2d, nn.Linear))), rel=1e-5)
    penalty.backward()
    grad = model.conv2.parametrizations.weight.original.grad
    assert torch.all(grad[~masks["conv2"]] == 0) and torch.all(grad[masks["conv2"]] != 0)


def test_l1_in_the_fine_tuning_loop_shrinks_the_weights():
    train = load_dataset("synthetic", "train", limit=256)
    model = _lenet(bias=False)
    plain, _ = finetune(model, train, epochs=1, batch_size=32, lr=0.02, weight_decay=0.0)
    sparse, _ = finetune(model, train, epochs=1, batch_size=32, lr=0.02, weight_decay=0.0, l1=0.02)
    assert weight_penalty(sparse, l1=1.0) < 0.95 * weight_penalty(plain, l1=1.0)  # ~lr·l1·steps per weight
    pruned, _ = prune_finetune(model, train, sparsity=0.5, epochs=1, batch_size=32, lr=0.02, l2=1e-3)
    unreg, _ = prune_finetune(model, train, sparsity=0.5, epochs=1, batch_size=32, lr=0.02)
    assert weight_penalty(pruned, l2=1.0) < weight_penalty(unreg, l2=1.0)


@pytest.mark.parametrize("kwargs", [{"l1": -0.1}, {"l2": float("nan")}, {"l1": True}, {"l2": "0.1"},
                                    {"l1": float("inf")}])
def test_bad_strengths_are_refused(kwargs):
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        weight_penalty(_lenet(), **kwargs)
    with pytest.raises(ConfigError, match="must be a finite number >= 0"):
        finetune(_lenet(), load_dataset("synthetic", "train", limit=64), **kwargs)


def test_a_model_without_weights_is_refused():
    with pytest.raises(ConfigError, match="Sequential has no Conv2d or Linear weight"):
        weight_penalty(nn.Sequential(nn.ReLU()), l1=0.1)
